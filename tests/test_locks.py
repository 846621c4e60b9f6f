"""The lock files (requirements.lock, requirements-dev.lock, scripts/labelstudio.lock; `make lock` compiles them with
pip-compile --generate-hashes): every version exact and hashed, within pyproject's ranges, no machine's index in
them, torch/torchvision the README's pair, transformers at the lowest version pyproject supports; and the venv that
`make test` built is exactly the lock."""
from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(path: Path) -> dict[str, str]:
    """name -> version of a pip-compile lock; fails on a requirement that is not pinned with hashes."""
    text = path.read_text()
    found = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.strip().splitlines()[0] if block.strip() else ""
        if not first or first.startswith("#"):
            continue
        assert not first.startswith("-"), f"{path.name}: option line {first!r} (a machine's index does not belong here)"
        match = PIN.match(first)
        assert match, f"{path.name}: {first!r} is not an exact pin"
        assert "--hash=sha256:" in block, f"{path.name}: {match.group(1)} has no hash"
        found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def requirements(names: list[str]) -> list[Requirement]:
    return [Requirement(r) for r in names]


@pytest.mark.parametrize("lock,extras", [("requirements.lock", []), ("requirements-dev.lock", ["dev"])])
def test_lock_pins_every_dependency_within_pyproject_ranges(lock, extras):
    locked = pins(ROOT / lock)
    wanted = requirements(PYPROJECT["dependencies"] + [d for e in extras for d in PYPROJECT["optional-dependencies"][e]])
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in locked, f"{lock} lacks {req.name}"
        assert req.specifier.contains(locked[name], prereleases=True), f"{lock}: {name}=={locked[name]} not in {req}"
    assert locked["torch"] == "2.14.1" and locked["torchvision"] == "0.29.1"


def test_runtime_lock_is_the_dev_lock_without_the_test_tools():
    runtime, dev = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-dev.lock")
    assert {k: v for k, v in dev.items() if k in runtime} == runtime


def test_transformers_is_locked_at_the_lowest_supported_version():
    spec = next(Requirement(d) for d in PYPROJECT["dependencies"] if d.startswith("transformers"))
    floor = next(s.version for s in spec.specifier if s.operator == ">=")
    for lock in ("requirements.lock", "requirements-dev.lock"):
        assert Version(pins(ROOT / lock)["transformers"]) == Version(floor), f"{lock}: make test covers the lowest one"


def test_label_studio_lock():
    assert pins(ROOT / "scripts" / "labelstudio.lock")["label-studio"] == "1.23.2"
    script = (ROOT / "scripts" / "labelstudio.sh").read_text()
    assert "--require-hashes" in script and "labelstudio.lock" in script


def test_dockerfile_and_makefile_install_from_the_locks():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"pip install --require-hashes -r requirements\.lock", dockerfile)
    assert re.search(r"pip install --no-deps \.", dockerfile)
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements-dev.lock" in makefile


def test_this_venv_is_the_lock():
    """Where `make test` built the venv (its stamp is there), every locked version is the installed one."""
    if not (Path(sys.prefix) / ".installed").exists():
        pytest.skip("not the venv `make test` builds from the lock (make test-latest, or a hand-made one)")
    wrong = {}
    for name, pinned in pins(ROOT / "requirements-dev.lock").items():
        try:
            have = version(name)
        except PackageNotFoundError:
            have = None
        if have != pinned:
            wrong[name] = (pinned, have)
    assert not wrong, f"installed versions differ from requirements-dev.lock (pinned, installed): {wrong}"
