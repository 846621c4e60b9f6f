"""What every format writer shares: `_Writer` (the interface: add one image, close with counts, abort on failure;
`for_export` builds one for an export's options) and `_JsonArray` (a JSON array written one item at a time). The
formats are one module each, named in regionscribe.backend.export.formats."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from regionscribe.backend.export.exported_regions import _Image


class _JsonArray:
    """A JSON array written one item at a time."""

    def __init__(self, path: Path, head: str = "[", tail: str = "]"):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = open(path, "w", encoding="utf-8")
        self.file.write(head + "\n")
        self.tail = tail
        self.count = 0

    def add(self, item: Any) -> None:
        if self.count:
            self.file.write(",\n")
        self.file.write(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
        self.count += 1

    def close(self) -> None:
        if not self.file.closed:
            self.file.write(("\n" if self.count else "") + self.tail + "\n")
            self.file.close()


class _Writer:
    name = ""

    def __init__(self, root: Path, splits: list[str]):
        self.root = root
        self.splits = splits
        self.counts = {s: {"images": 0, "regions": 0} for s in splits}

    @classmethod
    def for_export(cls, root: Path, splits: list[str], copy: bool) -> _Writer:
        """The writer of this format for an export under `root`; `copy`: the export copies the image files
        (--images copy)."""
        return cls(root, splits)

    def add(self, image: _Image) -> None:
        raise NotImplementedError

    def close(self) -> dict:
        return self.counts

    def abort(self) -> None:
        pass
