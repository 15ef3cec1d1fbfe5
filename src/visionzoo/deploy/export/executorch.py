"""Export to ExecuTorch: a `.pte` program lowered to the XNNPACK backend, for Android and iOS apps.

The eval model is captured with torch.export (a fixed batch of one), lowered with the XNNPACK
partitioner (every supported op runs in XNNPACK's kernels), and serialised. int8 is PyTorch's
PT2E post-training quantisation with ExecuTorch's XNNPACK quantizer (symmetric, weights per
channel), its observers fed the calibration images preprocessed exactly as deployment does.

One thing is added to the XNNPACK quantizer: it fuses a convolution (or linear) with a following
ReLU but not with a hardtanh (ReLU6, MobileNet's and EfficientNet-Lite's activation), and gives
the hardtanh's output the quantisation of its input. So a ReLU6 output, which lies in [0, 6],
was quantised with the range of the raw convolution output before the clamp, so only the share
of the 256 levels that falls in [0, 6] was left for the values that matter. Lite0 fine-tuned on 5
CIFAR-10 classes lost 1.8 points of top-1 so (3.8 in an earlier fine-tune); with the fusion, none
(`benchmarks/edge_formats.py`). `XnnpackClampFusingQuantizer` annotates conv -> hardtanh as
one pattern, as the quantizer does conv -> relu: the convolution's output is not quantised, the
hardtanh's is, with its own observer; XNNPACK's lowering then fuses the clamp into the
convolution (its output_min/max), so the int8 program computes what the annotation says.
The metadata (the ONNX file's keys, as one JSON object) is a constant method of the program,
`visionzoo_metadata`, returning its UTF-8 bytes, read back by `visionzoo.deploy.runtimes.executorch`.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from visionzoo.deploy.export.onnx import ExportResult, model_preprocessing
from visionzoo.deploy.runtimes.executorch import METADATA_METHOD
from visionzoo.errors import SettingError, require_extra

__all__ = ["export_executorch", "xnnpack_quantizer", "annotate_clamped_layers", "PRECISIONS"]

PRECISIONS = ("fp32", "int8")


def annotate_clamped_layers(graph: torch.fx.GraphModule, config) -> int:
    """Annotate every convolution or linear whose one user is a hardtanh (ReLU6) as one fused pattern:
    inputs and weights quantised as the XNNPACK quantizer does, the layer's own output left in float,
    the hardtanh's output quantised (its own observer). Returns how many pairs were annotated."""
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        get_bias_qspec,
        get_input_act_qspec,
        get_output_act_qspec,
        get_weight_qspec,
    )
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    clamps = {torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default}
    layers = {torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default, torch.ops.aten.linear.default}
    count = 0
    for clamp in graph.graph.nodes:
        layer = clamp.args[0] if clamp.op == "call_function" and clamp.target in clamps else None
        if not isinstance(layer, torch.fx.Node) or layer.target not in layers or len(layer.users) != 1:
            continue
        if Q_ANNOTATION_KEY in layer.meta or Q_ANNOTATION_KEY in clamp.meta:
            continue
        inputs = {layer.args[0]: get_input_act_qspec(config), layer.args[1]: get_weight_qspec(config)}
        if len(layer.args) > 2 and isinstance(layer.args[2], torch.fx.Node):
            inputs[layer.args[2]] = get_bias_qspec(config)
        layer.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=inputs, _annotated=True)
        clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=get_output_act_qspec(config),
                                                             _annotated=True)
        count += 1
    return count


def xnnpack_quantizer():
    """ExecuTorch's XNNPACK quantizer (symmetric, weights per channel) that also fuses conv/linear -> ReLU6."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    class XnnpackClampFusingQuantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            annotate_clamped_layers(model, self.global_config)  # first: the stock patterns skip annotated nodes
            return super().annotate(model)

    return XnnpackClampFusingQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def _quantized(model: nn.Module, example: torch.Tensor, calibration: list[np.ndarray]) -> nn.Module:
    """PT2E int8 with the XNNPACK quantizer, observers calibrated on `calibration`, one image at a time."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), xnnpack_quantizer())
    with torch.no_grad():
        for chunk in calibration:
            for image in chunk:
                prepared(torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32)))
    return convert_pt2e(prepared)


def _tanh_gelu(x: torch.Tensor, approximate: str = "none"):
    """GELU's tanh approximation written out (tanh, products and sums): XNNPACK's lowering computes the exact
    GELU for either, 4e-5 of the largest output off the approximation per layer, 3e-4 at MaxViT's logits
    (the export matrix). The exact GELU is left to XNNPACK (NotImplemented: no decomposition)."""
    if approximate != "tanh":
        return NotImplemented
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def export_executorch(model: nn.Module, path: str | Path, metadata: dict[str, str], *, img_size: int | None = None,
                      precision: str = "fp32", calibration: list[np.ndarray] | None = None) -> ExportResult:
    """Write `model` as an XNNPACK-lowered .pte program in `precision` ('fp32', or 'int8' calibrated on
    `calibration`, batches preprocessed as deployed), with `metadata` as its `visionzoo_metadata` method."""
    require_extra("executorch", "executorch", "ExecuTorch export")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if precision not in PRECISIONS:
        raise SettingError(f"ExecuTorch precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and not calibration:
        raise SettingError("int8 ExecuTorch export needs calibration images (--calib DIR)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels, height, width = model_preprocessing(model, img_size)["input_size"]
    example = torch.randn(1, channels, height, width)
    extra = {"visionzoo.precision": precision}
    if precision == "int8":
        extra["visionzoo.quantization"] = "int8-pt2e-xnnpack"
    encoded = json.dumps({**metadata, **extra}).encode()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.export's and the lowering's deprecation chatter
        model = model.eval()
        if precision == "int8":
            model = _quantized(model, example, calibration)
        exported = torch.export.export(model, (example,)).run_decompositions({torch.ops.aten.gelu.default: _tanh_gelu})
        program = to_edge_transform_and_lower(
            exported, partitioner=[XnnpackPartitioner()],
            constant_methods={METADATA_METHOD: torch.frombuffer(bytearray(encoded), dtype=torch.uint8)},
        ).to_executorch()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(program.buffer)
    tmp.replace(path)
    return ExportResult(path=path, format="executorch")
