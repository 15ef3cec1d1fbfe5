"""visionzoo: image classification architectures from AlexNet to foundation models.

    import visionzoo
    model = visionzoo.create_model("resnet50", num_classes=10)
    visionzoo.list_models("convnext_*")
"""

from visionzoo.registry import create_model, list_families, list_models, model_info

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "list_families", "model_info", "__version__"]
