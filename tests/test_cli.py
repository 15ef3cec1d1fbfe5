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
    timm = pytest.importorskip("timm")
    import torch

    _, out, _ = run_cli(capsys, "list", "--json")
    for row in json.loads(out):
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
