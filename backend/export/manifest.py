"""manifest.json of an export folder: written after the data files (the head, then the size and sha256 of every
file) and checked against the folder by `verify_manifest`."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

MANIFEST_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> Iterator[Path]:
    """Every file under root but manifest.json, in a stable order (relative paths)."""
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(root)
            if rel.as_posix() != "manifest.json":
                yield rel


def _write_manifest(root: Path, head: dict) -> None:
    """manifest.json: `head`, then "files": {relative path: {"bytes", "sha256"}} written one file at a time."""
    text = json.dumps(head, indent=2, ensure_ascii=False)
    assert text.endswith("\n}")
    with open(root / "manifest.json", "w", encoding="utf-8") as f:
        f.write(text[:-2] + ',\n  "files": {')
        for i, rel in enumerate(_files(root)):
            path = root / rel
            entry = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
            f.write(("," if i else "") + f"\n    {json.dumps(rel.as_posix())}: {json.dumps(entry)}")
        f.write("\n  }\n}\n")


def verify_manifest(folder: str | Path) -> list[str]:
    """Problems with an export folder against its manifest (a missing, changed or unlisted file); [] if none."""
    root = Path(folder)
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"manifest.json unreadable: {exc}"]
    listed = manifest.get("files") or {}
    problems = []
    for rel, entry in listed.items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != entry.get("bytes") or _sha256(path) != entry.get("sha256"):
            problems.append(f"{rel}: checksum mismatch")
    for rel in _files(root):
        if rel.as_posix() not in listed:
            problems.append(f"{rel.as_posix()}: not in the manifest")
    return problems
