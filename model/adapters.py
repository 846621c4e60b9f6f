"""Versions as LoRA adapters over a shared base checkpoint (the feedback loop on a model with a pretrained LM).

An adapter version is a folder that holds only what its run changed:

    config.json            the regionscribe config, with "adapter": {"relative": PATH, "absolute": PATH}: the base
                           checkpoint, found by the relative path first (both moved together), else the absolute one
    adapter/               the LM's LoRA adapter as peft saves it (adapter_config.json, adapter_model.safetensors)
    visual.safetensors     only when the run trained them: the region encoder and the image projector in full (the
                           feedback loop leaves them frozen: GPT4RoI's region module alone is 299 M parameters)
    tokenizer files

Loading one (`RegionScribeModel.from_pretrained`, or regionscribe.model.modeling's `load_adapter_version` with
`trainable`) loads the base checkpoint, then `apply` puts the visual weights in and applies the adapter: merged into
the LM for serving, or left unmerged and trainable for the next run, which then trains the same adapter further.
Every version is therefore base + its own adapter, never a chain of adapters. This module does not import the model
(modeling imports it).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from regionscribe.model.checkpoints import write_config

ADAPTER_DIR = "adapter"
VISUAL = "visual.safetensors"
VISUAL_PREFIXES = ("region_encoder.", "projector.", "region_scale")


def is_adapter_version(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("adapter"))


def base_of(path: str | Path) -> Path:
    """The base checkpoint an adapter version applies to: by its path relative to the version (valid when both moved
    together), else by its absolute path (valid when only the version moved)."""
    path = Path(path)
    ref = json.loads((path / "config.json").read_text())["adapter"]
    relative = (path / ref["relative"]).resolve()
    return relative if (relative / "config.json").is_file() else Path(ref["absolute"])


def _peft():
    import peft

    return peft


def attach(model, lora: dict[str, Any]) -> None:
    """Give the model's LM fresh LoRA adapters (peft), in place."""
    peft = _peft()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        model.lm = peft.get_peft_model(model.lm, peft.LoraConfig(**lora))
    model.config.lora = dict(lora)


def save(model, path: str | Path, base: str | Path, metadata: dict[str, Any] | None = None,
         visual: bool = True) -> None:
    """Write `model` (its LM a peft model) as an adapter version over `base` (see the module docstring); `visual`:
    also the region encoder and projector (when the run trained them)."""
    path, base = Path(path), Path(base).resolve()
    path.mkdir(parents=True, exist_ok=True)
    # the embeddings are the base's (grown for the region tokens when the base was made); LoRA does not train them
    model.lm.save_pretrained(str(path / ADAPTER_DIR), save_embedding_layers=False)
    if visual:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
                 if k.startswith(VISUAL_PREFIXES)}
        save_file(state, str(path / VISUAL), metadata={"format": "pt"})
    lm_config = model.lm.get_base_model().config.to_dict()
    write_config(path, model.config, model.vision.config.to_dict(), lm_config, metadata)
    doc = json.loads((path / "config.json").read_text())
    doc["adapter"] = {"relative": os.path.relpath(base, path.resolve()), "absolute": str(base)}
    (path / "config.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    model.tokenizer.save_pretrained(str(path))


def apply(model, path: str | Path, trainable: bool = False):
    """Put an adapter version's visual weights and LoRA adapter on `model`, its base as loaded (fp32 on the CPU): the
    adapter merged into the LM unless `trainable`. The caller casts and places the model
    (regionscribe.model.modeling.RegionScribeModel.from_pretrained loads adapter versions this way)."""
    path = Path(path)
    base = base_of(path)
    if (path / VISUAL).is_file():
        missing, unexpected = model.load_state_dict(load_file(str(path / VISUAL)), strict=False)
        if unexpected or any(k.startswith(VISUAL_PREFIXES) for k in missing):
            raise ValueError(f"{path / VISUAL} does not fit its base {base}: unexpected {unexpected[:5]}")
    peft = _peft()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        lm = peft.PeftModel.from_pretrained(model.lm, str(path / ADAPTER_DIR), is_trainable=trainable)
    doc = json.loads((path / "config.json").read_text())
    model.metadata = doc.get("metadata", {})
    if trainable:
        model.lm = lm
        model.config.lora = lm.peft_config["default"].to_dict()
    else:
        model.lm = lm.merge_and_unload()
        model.config.lora = None
    return model


def folder_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
