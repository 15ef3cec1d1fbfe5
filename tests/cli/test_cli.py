from __future__ import annotations

import json
import subprocess
import sys

import pytest

from visionzoo.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_json_reports_measured_counts(capsys):
    code, out, _ = run_cli(capsys, "list", "resnet*", "--json")
    assert code == 0
    rows = json.loads(out)
    assert {row["name"] for row in rows} >= {"resnet18", "resnet50"}
    for row in rows:
        assert set(row) == {"name", "family", "year", "params", "gmacs", "input_size"}
    resnet18 = next(r for r in rows if r["name"] == "resnet18")
    assert resnet18["params"] == 11_689_512 and resnet18["input_size"] == [3, 224, 224]


def test_list_json_params_equal_timm(capsys):
    """The CLI's figures are the reference's (every variant's count: tests/models/test_parity.py)."""
    timm = pytest.importorskip("timm")
    import torch

    _, out, _ = run_cli(capsys, "list", "--json", "--family", "convnext")
    rows = json.loads(out)
    assert len(rows) >= 5
    for row in rows:
        from visionzoo.registry import get_card

        card = get_card(row["name"])
        if card.reference_library != "timm":
            continue
        with torch.device("meta"):
            reference = timm.create_model(card.reference_name)
        assert row["params"] == sum(p.numel() for p in reference.parameters()), row["name"]


def test_list_table_and_family_filter(capsys):
    code, out, _ = run_cli(capsys, "list", "--family", "resnet")
    assert code == 0 and "wide_resnet50_2" in out and "GMACs" in out


def test_info_json(capsys):
    code, out, _ = run_cli(capsys, "info", "resnet50", "--json")
    info = json.loads(out)
    assert code == 0 and info["name"] == "resnet50" and info["paper"].startswith("Deep Residual")


def test_unknown_model_is_one_line_without_traceback(capsys):
    code, out, err = run_cli(capsys, "info", "resnet5")
    assert code == 2
    assert "did you mean 'resnet50'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_no_match_is_an_error(capsys):
    code, _, err = run_cli(capsys, "list", "nosuchthing*")
    assert code == 2 and "no model matches" in err


def _all_commands() -> list[list[str]]:
    from visionzoo.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return [[]] + [[name] for name in subparsers.choices]


@pytest.mark.parametrize("command", _all_commands())
def test_help_on_every_command(command):
    result = subprocess.run([sys.executable, "-m", "visionzoo.cli", *command, "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_pretrained_is_parsed_one_way():
    from visionzoo.errors import SettingError
    from visionzoo.resolve import parse_pretrained

    assert parse_pretrained(None) is None
    assert parse_pretrained("none") is False and parse_pretrained("None") is False
    assert parse_pretrained("default") is True
    assert parse_pretrained("resnet18.tv_in1k") == "resnet18.tv_in1k"
    assert parse_pretrained("weights/my.safetensors") == "weights/my.safetensors"
    assert parse_pretrained("hf-hub:org/repo") == "hf-hub:org/repo"
    with pytest.raises(SettingError, match="empty"):
        parse_pretrained(" ")


def test_every_model_command_takes_the_same_pretrained_argument():
    from visionzoo.cli import build_parser
    from visionzoo.resolve import PRETRAINED_HELP

    subparsers = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    takes = {name for name, parser in subparsers.choices.items()
             if any("--pretrained" in a.option_strings and PRETRAINED_HELP in (a.help or "") for a in parser._actions)}
    assert takes == {"predict", "export", "embed", "zero-shot", "train", "eval", "serve", "audit", "explain",
                     "lr-find", "tune"}


def test_resolve_model_names_folders_and_files(tmp_path):
    import torch

    import visionzoo
    from visionzoo.errors import SettingError
    from visionzoo.resolve import resolve_model

    model = resolve_model("resnet18", "none", num_classes=3)
    assert model.num_classes == 3 and not model.training
    folder = tmp_path / "saved"
    visionzoo.save_model(model, folder)
    run = tmp_path / "run"
    visionzoo.save_model(model, run / "best")
    (run / "config.json").write_text("{}")  # a training run folder: its own config, and best/
    x = torch.randn(1, 3, 32, 32)
    for spec in (folder, str(folder), str(run)):
        with torch.no_grad():
            assert torch.equal(resolve_model(spec)(x), model(x)), spec
    with pytest.raises(SettingError, match="carries its own weights"):
        resolve_model(str(folder), "default")
    with pytest.raises(SettingError, match="is a file"):
        resolve_model(str(tmp_path / "w.safetensors"))
    with pytest.raises(SettingError, match="ONNX"):
        resolve_model(str(tmp_path / "m.onnx"))
    with pytest.raises(FileNotFoundError, match="m.onnx"):
        resolve_model(str(tmp_path / "m.onnx"), allow_onnx=True)
    assert resolve_model(model) is model


def test_a_bug_prints_its_traceback_and_how_to_report_it(monkeypatch, capsys):
    import visionzoo

    def broken(*args, **kwargs):
        raise ValueError("an internal invariant failed")  # a plain ValueError is a bug, not a usage error

    monkeypatch.setattr(visionzoo, "model_info", broken)
    code, _, err = run_cli(capsys, "info", "resnet50")
    assert code == 1
    assert "Traceback" in err and "ValueError: an internal invariant failed" in err
    assert "this is a bug in visionzoo; please report it" in err.strip().splitlines()[-1]


def test_usage_errors_are_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "missing.onnx"), str(tmp_path / "a.jpg"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "export", "resnet18", "--pretrained", "resnet18.no_such_tag")
    assert code == 2 and "Traceback" not in err and "resnet18.no_such_tag" in err


@pytest.mark.parametrize("module, argv", [
    ("uvicorn", ["serve", "resnet18"]),
    ("onnxscript", ["export", "resnet18", "--pretrained", "none", "--image-size", "32"]),
])
def test_a_missing_extra_names_its_pip_install(module, argv, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    extra = "serve" if module == "uvicorn" else "export"
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"pip install 'visionzoo[{extra}]'" in err and module in err


def test_a_missing_extra_on_import_of_the_library(monkeypatch):
    from visionzoo.errors import MissingExtraError, require_extra

    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "visionzoo.serve", raising=False)
    with pytest.raises(MissingExtraError, match=r"pip install 'visionzoo\[serve\]'"):
        import visionzoo.serve  # noqa: F401
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'visionzoo\[edge\]'"):
        from visionzoo.deploy.runtimes import OnnxClassifier

        OnnxClassifier("model.onnx")
    assert require_extra("json", "x", "y").dumps([]) == "[]"


def test_parsing_imports_no_heavy_dependency():
    """Building the parser and parsing every command stays free of torch and of every extra."""
    script = (
        "import sys\n"
        "from visionzoo.cli import build_parser\n"
        "parser = build_parser()\n"
        "parser.parse_args(['predict', 'm.onnx', 'a.jpg']); parser.parse_args(['serve', 'resnet18'])\n"
        "parser.parse_args(['export', 'resnet18']); parser.parse_args(['train', '--model', 'resnet18'])\n"
        "heavy = [m for m in ('torch', 'torchvision', 'fastapi', 'uvicorn', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
