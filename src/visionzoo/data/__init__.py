"""Images in, tensors out: robust decoding, dataset sources, transforms and the pixel cache."""

from visionzoo.data.decode import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, is_image_file

__all__ = ["ImageDecodeError", "decode_image", "is_image_file", "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD"]

# ImageNet's per-channel mean and standard deviation of RGB in [0, 1]: the normalisation most weights expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
