"""Weight files in HF's layouts: read one shard at a time, write sharded safetensors with an index.

Reading: a folder holds `model.safetensors`, `pytorch_model.bin`, or shards listed by `model.safetensors.index.json` /
`pytorch_model.bin.index.json`. Each shard is opened memory-mapped (safetensors' own mmap, `torch.load(mmap=True)` for
zip-format `.bin` files), so holding a shard costs address space, and only the pages that are read count as memory.

Writing: `ShardWriter` gathers tensors until a shard reaches `max_shard_bytes`, writes it and forgets it; `finish`
names the shards `model-0000i-of-0000N.safetensors` and writes `model.safetensors.index.json` (total_size, weight_map),
or a single `model.safetensors` when everything fitted in one shard.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from regionscribe.model.checkpoints import SAFE_INDEX, WEIGHTS as SAFE_SINGLE

BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
DEFAULT_SHARD_BYTES = 2 * 1024 ** 3  # HF's default cap is 5 GB; 2 GB keeps a loader's peak low


def release_memory() -> None:
    """Give freed heap memory back to the OS. glibc keeps big freed blocks in its heap (its mmap threshold grows
    after the first big free), so without this each written shard's tensors stay resident as dead weight."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def shard_files(folder: str | Path) -> list[Path]:
    """The weight files of a checkpoint folder, in index order (one file for an unsharded checkpoint)."""
    folder = Path(folder)
    for index in (SAFE_INDEX, BIN_INDEX):
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text())["weight_map"]
            names = list(dict.fromkeys(weight_map.values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise FileNotFoundError(f"{folder / index} lists shards that are not there: {missing}")
            return [folder / n for n in names]
    for single in (SAFE_SINGLE, BIN_SINGLE):
        if (folder / single).is_file():
            return [folder / single]
    raise FileNotFoundError(f"{folder} holds no weights ({SAFE_SINGLE}, {BIN_SINGLE} or a sharded index)")


def is_checkpoint_weights(folder: str | Path) -> bool:
    try:
        shard_files(folder)
    except FileNotFoundError:
        return False
    return True


class Shard:
    """One weight file, opened lazily: `shapes()` reads no tensor data, `get(key)` one tensor."""

    def __init__(self, path: Path):
        self.path = path
        self._bin: dict[str, torch.Tensor] | None = None
        self._safe = None

    def _open(self):
        if self.path.suffix == ".safetensors":
            if self._safe is None:
                self._safe = safe_open(str(self.path), framework="pt")
            return self._safe
        if self._bin is None:
            try:
                self._bin = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as exc:  # a legacy (pre-zip) pickle cannot be memory-mapped
                raise ValueError(f"{self.path} cannot be memory-mapped ({exc}); re-save it with torch.save") from exc
        return self._bin

    def shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype | str]]:
        f = self._open()
        if self._safe is not None:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
        return {k: (tuple(t.shape), t.dtype) for k, t in f.items()}

    def get(self, key: str) -> torch.Tensor:
        f = self._open()
        if self._safe is not None:
            return f.get_tensor(key)
        return f[key]

    def close(self) -> None:
        """Unmap the file (the pages read so far stop counting as this process' memory)."""
        self._bin = None
        self._safe = None
        release_memory()


def iter_state(folder: str | Path) -> Iterator[dict[str, torch.Tensor]]:
    """The checkpoint's tensors, one shard's dict at a time (memory-mapped)."""
    for path in shard_files(folder):
        shard = Shard(path)
        yield {k: shard.get(k) for k in shard.shapes()}
        shard.close()


class ShardWriter:
    """Write tensors into safetensors shards of at most `max_shard_bytes` (a bigger single tensor gets its own)."""

    def __init__(self, folder: str | Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self.total_size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_bytes:
            self.flush()
        self._pending[name] = tensor.detach().contiguous().cpu()
        self._pending_bytes += nbytes
        self.total_size += nbytes

    def flush(self) -> None:
        if not self._pending:
            return
        path = self.folder / f".shard-{len(self._written):05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._written.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0
        release_memory()

    def finish(self) -> list[Path]:
        """Name the shards and write the index. Returns the weight files."""
        self.flush()
        if len(self._written) == 1:
            path = self.folder / SAFE_SINGLE
            os.replace(self._written[0][0], path)
            return [path]
        n = len(self._written)
        weight_map, paths = {}, []
        for i, (tmp, keys) in enumerate(self._written):
            path = self.folder / f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(tmp, path)
            paths.append(path)
            weight_map.update({k: path.name for k in keys})
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return paths


def save_state(folder: str | Path, state: dict[str, torch.Tensor],
               max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """A state dict as HF safetensors: one `model.safetensors` up to `max_shard_bytes`, shards with an index above."""
    writer = ShardWriter(folder, max_shard_bytes)
    for name, tensor in state.items():
        writer.add(name, tensor)
    return writer.finish()
