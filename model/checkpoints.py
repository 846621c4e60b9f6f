"""A checkpoint folder's layout and version, read without torch (the web process, the registry, `regionscribe
versions` and doctor read versions; only the workers load weights).

    <folder>/config.json                    the regionscribe config, the exact HF sub-configs and the metadata
    <folder>/model.safetensors              the weights, or model.safetensors.index.json with its shards
    <folder>/tokenizer.json ...             the tokenizer files

The embedded default ships in the package (`DEFAULT_CHECKPOINT`). A checkpoint's version is its recorded
`metadata.version`, else its folder name and a hash of its weights (`checkpoint_version`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from regionscribe.model.config import ModelConfig

DEFAULT_CHECKPOINT = Path(__file__).parent / "default"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


def write_config(path: Path, config: ModelConfig, vision: dict[str, Any] | None, lm: dict[str, Any],
                 metadata: dict[str, Any] | None = None) -> None:
    """A checkpoint's config.json: the regionscribe config and the exact HF sub-configs (vision None: the tower is
    loaded from `config.vision_path`)."""
    doc = {"model_type": "regionscribe", "model": config.to_dict(), "vision": vision, "lm": lm,
           "metadata": metadata or {}}
    (Path(path) / CONFIG).write_text(json.dumps(doc, indent=2, default=str) + "\n")


def checkpoint_version(path: Path) -> str:
    """The checkpoint's version: its recorded `version`, else its folder name and a hash of its weights."""
    meta = json.loads((path / "config.json").read_text()).get("metadata", {})
    if meta.get("version"):
        return str(meta["version"])
    digest = hashlib.sha1()
    # a sharded checkpoint is named by its index (every tensor name and the total size), not by hashing gigabytes
    with open(path / SAFE_INDEX if (path / SAFE_INDEX).is_file() else path / WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.name}-{digest.hexdigest()[:10]}"
