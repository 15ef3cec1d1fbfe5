"""Images in, tensors out: robust decoding, dataset sources, transforms and the pixel cache."""

from visionzoo.data.decode import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, is_image_file

__all__ = ["ImageDecodeError", "decode_image", "is_image_file", "IMAGE_EXTENSIONS"]
