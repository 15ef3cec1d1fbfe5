"""Building models: the one place that joins the registry, the weights and the model code.

    model = create_model("resnet50", num_classes=10, pretrained=True)
    spec_of(model).weights            # 'resnet50.a1_in1k'
    channels_last(model)              # the memory layout every command runs a model in (in place)
    reparameterized(model)            # RepViT, MobileOne, FastViT: branches fused for inference (a copy)
    save_model(model, "runs/best"); load_model("runs/best")    # safetensors + config.json

Every model made here carries one frozen `ModelSpec` (architecture, overrides, preprocessing,
classes, weights, head, adapter), set once and read through `spec_of`; `with_spec` derives a
changed spec (a trained model's classes, say). The layers below never see the spec: the
registry gives cards, `visionzoo.weights` gets the shapes and layer names it needs as
arguments, `visionzoo.data.config` and `visionzoo.data.transforms` take data-config dicts.
"""

from visionzoo.factory.build import (
    cache_dir,
    class_names,
    code_fingerprint,
    create_clip,
    create_model,
    data_config,
    measure_complexity,
    model_complexity,
    model_info,
    size_overrides,
    transforms,
    zero_shot_classifier,
)
from visionzoo.factory.layout import channels_last
from visionzoo.factory.reparameterization import Reparameterizable, is_reparameterizable, reparameterized
from visionzoo.factory.saving import load_model, save_model
from visionzoo.factory.spec import ModelSpec, find_spec, model_name, registered_name, spec_of, with_spec

__all__ = ["ModelSpec", "spec_of", "find_spec", "with_spec", "model_name", "registered_name", "create_model",
           "create_clip", "zero_shot_classifier", "model_info", "model_complexity", "measure_complexity", "data_config",
           "transforms", "class_names", "save_model", "load_model", "size_overrides", "cache_dir", "code_fingerprint",
           "Reparameterizable", "is_reparameterizable", "reparameterized", "channels_last"]
