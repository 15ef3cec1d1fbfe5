"""One direction of imports: import-linter's `layers` contract (pyproject.toml) holds for the package."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src"


def _lint_imports(source: Path) -> subprocess.CompletedProcess:
    """import-linter on the package under `source`, with the repository's configuration."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
               "--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_no_module_imports_a_layer_above_its_own():
    result = _lint_imports(SOURCE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "layers KEPT" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: the registry (base layer) importing the factory is reported."""
    shutil.copytree(SOURCE / "visionzoo", tmp_path / "visionzoo", ignore=shutil.ignore_patterns("__pycache__"))
    registry = tmp_path / "visionzoo" / "registry.py"
    registry.write_text(registry.read_text() + "\n\ndef _upward():\n    from visionzoo.factory import create_model\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0 and "layers BROKEN" in result.stdout, result.stdout + result.stderr
    assert "visionzoo.registry" in result.stdout and "visionzoo.factory" in result.stdout


def test_every_module_has_a_layer():
    """A new module joins a layer in pyproject.toml (a workflow goes with the workflows)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["name"] == "layers"]
    listed = {name.strip().strip("()") for layer in contract["layers"] for name in layer.replace("|", ":").split(":")}
    modules = {m.name for m in pkgutil.iter_modules([str(SOURCE / "visionzoo")])}
    assert sorted(modules - listed) == [], "add these modules to a layer of [tool.importlinter] in pyproject.toml"
