"""The exports every engine runs: a model's ONNX file, int8 ONNX file, OpenVINO IR and int8 IR, each
made and verified on first use, in one working folder; for a re-parameterisable network (RepViT,
MobileOne, FastViT), all of them and the PyTorch engines' model with its training branches fused."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch.nn as nn

from visionzoo.errors import SettingError

__all__ = ["Artifacts", "artifacts_for"]


class Artifacts:
    """A model and its exports (ONNX, int8 ONNX, IR, int8 IR), each made and verified on first use.

    From a model: `Artifacts(model, img_size=..., calibration=[paths])`. From an exported file
    (`Artifacts.from_file("m.onnx")` or an .xml IR): the engines that need what is missing (a
    PyTorch model for eager and compile, an ONNX file for onnxruntime) are unavailable.
    Calibration images (for both int8 engines) default to a few synthetic photos, which are
    good for measuring speed and nothing else.

    A re-parameterisable network is deployed fused (`visionzoo.factory.reparameterized`): `model`
    is the fused copy that eager and compile run, `unfused` the model as given, which every export
    is verified against. `reparameterize=False` keeps the branches everywhere.
    """

    def __init__(self, model: nn.Module | None = None, *, img_size: int | None = None,
                 calibration: Sequence[str | Path] | None = None, folder: str | Path | None = None,
                 int8_scheme: str = "auto", reparameterize: bool = True):
        from visionzoo.factory import reparameterized

        self.unfused = model.eval() if model is not None else None
        self.reparameterize = reparameterize
        self.model = reparameterized(self.unfused) if model is not None and reparameterize else self.unfused
        self.img_size = img_size
        self.calibration = [Path(p) for p in calibration] if calibration else None
        self.int8_scheme = int8_scheme
        self.source: Path | None = None  # the exported file these artifacts were made from (`from_file`)
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vz-engines-")
            folder = self._tmp.name
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Path] = {}

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> Artifacts:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"exported model {path} does not exist")
        kind = {".onnx": "onnx", ".xml": "ir", ".tflite": "litert", ".pte": "executorch"}.get(path.suffix)
        if kind is None:
            raise SettingError(f"{path} is not an ONNX file (.onnx), OpenVINO IR (.xml), LiteRT (.tflite) "
                               "or ExecuTorch (.pte) file")
        artifacts = cls(None, **options)
        artifacts._files[kind] = artifacts.source = path
        if kind in ("litert", "executorch"):  # filed by precision too, as `edge` makes them
            del artifacts._files[kind]
            precision = artifacts._edge_metadata(path).get("visionzoo.precision", "fp32")
            artifacts._files[f"{kind}-{'int8' if precision == 'int8' else 'fp32'}"] = path
        return artifacts

    @property
    def name(self) -> str:
        if self.model is not None:
            from visionzoo.factory import model_name

            return model_name(self.model)
        return self.preprocessing_and_name()[1]

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.preprocessing_and_name()[0]

    def preprocessing_and_name(self) -> tuple[dict[str, Any], str]:
        if self.model is not None:
            from visionzoo.deploy.export.onnx import model_preprocessing

            return model_preprocessing(self.model, self.img_size), self.name
        metadata = self.metadata()
        return json.loads(metadata["visionzoo.preprocessing"]), metadata.get("visionzoo.model", "model")

    @property
    def class_names(self) -> list[str] | None:
        if self.model is not None:
            from visionzoo.deploy.export.onnx import model_class_names

            return model_class_names(self.model)
        return json.loads(self.metadata().get("visionzoo.class_names", "null"))

    def metadata(self) -> dict[str, str]:
        """The `visionzoo.*` metadata of the exported file these artifacts were made from."""
        if "onnx" in self._files:
            from visionzoo.deploy.runtimes import onnx_metadata

            return onnx_metadata(self._files["onnx"])
        if self.source is not None and self.source.suffix in (".tflite", ".pte"):
            return self._edge_metadata(self.source)
        from visionzoo.deploy.runtimes.openvino import read_exported

        return read_exported(self._files["ir"])[1]

    @staticmethod
    def _edge_metadata(path: Path) -> dict[str, str]:
        from visionzoo.deploy.runtimes import open_exported

        return open_exported(path).metadata

    def edge_available(self, format: str, precision: str) -> bool:
        """Whether there is a `format` ('litert', 'executorch') file of `precision`, or a model to make one."""
        return self.model is not None or f"{format}-{precision}" in self._files

    def edge(self, format: str, precision: str = "fp32") -> Path:
        """The model as a LiteRT (.tflite) or ExecuTorch (.pte) file in fp32 (verified against the model as
        given) or int8 (calibrated on the calibration images)."""
        key = f"{format}-{precision}"
        if key not in self._files:
            if self.model is None:
                raise SettingError(f"no {precision} {format} file for {self.source}: export the model with "
                                   f"--format {format}{' --int8' if precision == 'int8' else ''}")
            from visionzoo.deploy.export.edge import EDGE_SUFFIXES, check_edge, write_edge
            from visionzoo.deploy.export.quantize import calibration_batches

            calibration = None
            if precision == "int8":
                calibration = calibration_batches(self.calibration_images(), self.preprocessing)
            out = self.folder / f"model.{precision}{EDGE_SUFFIXES[format]}"
            result = write_edge(self.model, out, format, precision, img_size=self.img_size, calibration=calibration,
                                float_file=self._files.get(f"{format}-fp32"))
            if precision != "int8":
                check_edge(result, self.unfused, precision, self.img_size)
            self._files[key] = result.path
        return self._files[key]

    def onnx_available(self) -> bool:
        """Whether there is an ONNX file, or a PyTorch model to export one from."""
        return self.model is not None or "onnx" in self._files

    def calibration_images(self) -> list[Path]:
        if self.calibration:
            return self.calibration
        from visionzoo.deploy.export.images import synthetic_photos

        folder = self.folder / "synthetic-calibration"
        folder.mkdir(exist_ok=True)
        paths = []
        for index, image in enumerate(synthetic_photos(8)):
            paths.append(folder / f"{index}.png")
            image.save(paths[-1])
        self.calibration = paths
        return paths

    def onnx(self) -> Path:
        if "onnx" not in self._files:
            if self.model is None:
                raise SettingError(f"no ONNX file for {self._files.get('ir')}: export the model with --format onnx")
            from visionzoo.deploy.export import export_model

            report = export_model(self.unfused, self.folder / "model.onnx", img_size=self.img_size,
                                  reparameterize=self.reparameterize)
            self._files["onnx"] = report.path
        return self._files["onnx"]

    def onnx_int8(self) -> Path:
        if "onnx-int8" not in self._files:
            from visionzoo.deploy.export.quantize import quantize_int8

            self._files["onnx-int8"] = quantize_int8(self.onnx(), self.folder / "model.int8.onnx",
                                                     self.calibration_images(), scheme=self.int8_scheme)
        return self._files["onnx-int8"]

    def ir(self) -> Path:
        if "ir" not in self._files:
            from visionzoo.deploy.export.onnx import ExportResult
            from visionzoo.deploy.export.openvino import ir_from_onnx, verify_openvino

            self._files["ir"] = ir_from_onnx(self.onnx(), self.folder / "model.xml")
            if self.model is not None:  # the IR computes the model's function, as the ONNX file was checked to
                verify_openvino(ExportResult(self._files["ir"], "openvino"), self.unfused, img_size=self.img_size)
        return self._files["ir"]

    def ir_int8(self) -> Path:
        if "ir-int8" not in self._files:
            from visionzoo.deploy.export.openvino import quantize_openvino_int8

            self._files["ir-int8"] = quantize_openvino_int8(self.ir(), self.folder / "model.int8.xml",
                                                            self.calibration_images())
        return self._files["ir-int8"]


def artifacts_for(model_or_export, img_size: int | None = None, *, reparameterize: bool = True) -> Artifacts:
    """`Artifacts` for a registered name (random weights), a model, an `Artifacts` or an exported file."""
    if isinstance(model_or_export, Artifacts):
        return model_or_export
    if isinstance(model_or_export, nn.Module):
        return Artifacts(model_or_export, img_size=img_size, reparameterize=reparameterize)
    path = Path(model_or_export)
    if path.suffix in (".onnx", ".xml", ".tflite", ".pte"):
        return Artifacts.from_file(path)
    from visionzoo.factory import create_model
    from visionzoo.registry import get_card

    overrides = {}
    if img_size is not None and img_size != get_card(str(model_or_export)).input_size[1]:
        from visionzoo.factory import size_overrides

        overrides = size_overrides(get_card(str(model_or_export)), img_size)
    return Artifacts(create_model(str(model_or_export), **overrides), img_size=img_size, reparameterize=reparameterize)
