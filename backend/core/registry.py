"""The model registry: versions on disk, each in its own folder, published atomically.

    <root>/versions/<version>/     checkpoint (config.json, model.safetensors, tokenizer), manifest.json,
                                   metrics.json, loss_curve.png
    <root>/current                 a one-line file naming the current version, replaced atomically (os.replace)

A version is written to a temporary folder beside `versions/` and renamed into place only when complete, and the
`current` pointer is switched only after that, so a crash at any moment leaves either the old or the new version
current, never a half-written one. Candidates are kept with their metrics and status "accepted" or "rejected";
which one is current is only ever what the pointer says.
With no `current` yet, the base checkpoint (the embedded default unless given) is current.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regionscribe.model.checkpoints import DEFAULT_CHECKPOINT, checkpoint_version
from regionscribe.model.files import fsync_dir, write_atomic


@dataclass
class Version:
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def status(self) -> str:
        return self.manifest.get("status", "unknown")


class Registry:
    def __init__(self, root: str | Path, base: str | Path = DEFAULT_CHECKPOINT):
        self.root = Path(root)
        self.base = Path(base)
        (self.root / "versions").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------------ reading
    def current(self) -> Version:
        pointer = self.root / "current"
        if pointer.is_file():
            name = pointer.read_text().strip()
            path = self.root / "versions" / name
            if (path / "config.json").is_file():
                return Version(name, path, self._manifest(path))
        return Version(checkpoint_version(self.base), self.base, {"status": "base", "version": None})

    def versions(self) -> list[Version]:
        out = []
        for path in sorted((self.root / "versions").iterdir()):
            if path.is_dir() and (path / "manifest.json").is_file():
                out.append(Version(path.name, path, self._manifest(path)))
        return sorted(out, key=lambda v: v.manifest.get("created", 0))

    def get(self, version: str) -> Version:
        path = self.root / "versions" / version
        if not (path / "manifest.json").is_file():
            raise KeyError(f"no version {version!r} in {self.root}")
        return Version(version, path, self._manifest(path))

    @staticmethod
    def _manifest(path: Path) -> dict[str, Any]:
        return json.loads((path / "manifest.json").read_text())

    # ------------------------------------------------------------------------------------------------ writing
    def staging_dir(self) -> Path:
        """A fresh folder on the registry's filesystem to train into (so publishing is a rename)."""
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def publish(self, staged: Path, version: str, accepted: bool, manifest: dict[str, Any]) -> Version:
        """Move a finished checkpoint into versions/<version>; make it current only if accepted."""
        target = self.root / "versions" / version
        if target.exists():
            raise FileExistsError(f"version {version!r} already exists in {self.root}")
        doc = {**manifest, "version": version, "status": "accepted" if accepted else "rejected",
               "created": time.time()}
        write_atomic(staged / "manifest.json", json.dumps(doc, indent=2, default=str) + "\n")
        fsync_dir(staged)
        os.replace(staged, target)
        fsync_dir(target.parent)
        if accepted:
            self.set_current(version)
        return Version(version, target, doc)

    def set_current(self, version: str) -> None:
        """Point `current` at an existing version (also how an operator rolls back)."""
        if not (self.root / "versions" / version / "config.json").is_file():
            raise KeyError(f"no complete version {version!r} in {self.root}")
        write_atomic(self.root / "current", version + "\n")

    def discard_staging(self, older_than: float = 0.0) -> list[str]:
        """Remove staging folders left by runs that crashed: those last modified over `older_than` seconds ago (a
        live run's folder is younger than its run's time limit). Returns the names removed."""
        removed = []
        for path in self.root.glob(".staging-*"):
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age >= older_than:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return sorted(removed)
