"""The map of the code holds: the import contracts in pyproject.toml ([tool.importlinter]) are kept, the
distribution's package list is the folders that hold packages, and the distribution claims one top-level name."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"regionscribe.model": "model", "regionscribe.training": "training", "regionscribe.backend": "backend"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_the_package_list_is_the_folders():
    tool = _pyproject()["tool"]["setuptools"]
    assert tool["package-dir"] == FOLDERS
    found = set()
    for name, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert set(tool["packages"]) == found, "pyproject.toml [tool.setuptools] packages must list every package folder"


def test_one_top_level_name():
    """No generic `model` or `backend` in site-packages: everything is under regionscribe."""
    tool = _pyproject()["tool"]["setuptools"]
    assert all(p.split(".")[0] == "regionscribe" for p in tool["packages"])
    script = _pyproject()["project"]["scripts"]["regionscribe"]
    assert script.startswith("regionscribe.")
    code = ("import importlib.util as u; import regionscribe.backend, regionscribe.model; "
            "print(u.find_spec('model') is None, u.find_spec('backend') is None, u.find_spec('training') is None)")
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "True", "True"], done.stdout + done.stderr
