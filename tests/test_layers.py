"""The packages depend one way: import-linter's contracts in pyproject.toml hold, and they name every package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _settings() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]


def test_every_package_is_in_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    settings = _settings()
    layered = {name.strip() for contract in settings["contracts"] if contract["type"] == "layers"
               for layer in contract["layers"] for name in layer.split("|")}
    assert packages == set(settings["root_packages"]) == layered, \
        "a package of the platform is missing from [tool.importlinter] in pyproject.toml"


def test_imports_go_one_way() -> None:
    # the linter of the running environment, in a process of its own (it builds the import graph of the checkout)
    run = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
                          "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"an import goes the wrong way:\n{run.stdout}\n{run.stderr}"
    assert "0 broken" in run.stdout, run.stdout
