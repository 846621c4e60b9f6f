"""Model configuration: one dataclass, named presets, JSON round trip.

A config describes the whole architecture: the vision tower (an HF CLIP/SigLIP vision config, or a local path to a
pretrained one), the GPT4RoI region encoder, the image-token projector and the causal LM (an HF Llama config, or a
local path to any HF causal LM). The same code path builds the tiny CPU preset and real checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


POSITION_ENCODINGS = ("sinusoidal", "coordinates")
MASK_POOLINGS = ("weighted", "filled")


@dataclass
class ModelConfig:
    preset: str = "tiny"
    # vision tower: either a local HF path (pretrained, frozen) or a config dict (built from scratch, trained)
    vision_path: str | None = None
    vision_type: str = "clip"  # "clip" or "siglip" (used only when building from vision_config)
    vision_config: dict[str, Any] = field(default_factory=dict)
    freeze_vision: bool | None = None  # None: frozen iff pretrained (vision_path given)
    image_size: int = 112
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # CLIP's
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    select_layer: int = -1  # hidden state used for image tokens and as the deepest pyramid level
    # GPT4RoI region encoder
    num_levels: int = 3  # pyramid levels taken from the ViT's depth: hs[select::-layer_stride][::-1][-num_levels:]
    layer_stride: int = 2
    fuse_channels: int = 64  # channels after the 1x1 input conv of the fuse module
    num_fuse: int = 2  # cross-level channel-shuffle rounds (GPT4RoI: 5)
    gn_groups: int = 4
    roi_output: int = 7  # RoIAlign output side (GPT4RoI: 14)
    roi_sampling_ratio: int = 2
    region_hidden: int = 256  # width of the flattened-RoI linear (GPT4RoI: 1024)
    position_hidden: int = 64  # hidden width of PVIT-style box position MLP (GPT4RoI: 256)
    # the box as the position term sees it: "coordinates" (the four raw numbers; the presets and the embedded default) or
    # "sinusoidal" (coordinates, centre and size with sin/cos at 6 frequencies; an alternative, see README)
    position_encoding: str = "coordinates"
    # Region tokens enter the LM at the RMS of its word embeddings (a learned scale starting there). Unscaled, the tiny
    # preset's tokens were 170x larger than the words around them, so a `<bbox>` position's hidden state stayed its
    # own embedding through every layer and never took in the `regionK` name before it. False: tokens as the encoder
    # makes them (the presets and the embedded default; the scaled alternative has not beaten them yet, see README).
    match_embedding_scale: bool = False
    # how a region's mask weights its RoI bins (model/region_encoder.py): "weighted" (each bin's feature times the mask's
    # coverage of the bin) or "filled" (the rest filled with the mask's mean feature). A selection over the same
    # parameters: it can be changed on a loaded checkpoint. Regions without a mask: no effect.
    mask_pooling: str = "weighted"
    # image-level tokens (LLaVA)
    use_image_tokens: bool = True
    image_token_grid: int | None = None  # adaptive-average-pool the patch grid to this side first (None = every patch)
    # how regions enter the LM: "features" (GPT4RoI region tokens) or "text" (coordinates written as text; baseline)
    region_format: str = "features"
    # causal LM: either a local HF path or a Llama config dict
    lm_path: str | None = None
    lm_config: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] | None = None  # peft LoraConfig kwargs for stage 2, e.g. {"r": 16, "target_modules": [...]}
    system_prompt: str | None = None  # None: GPT4RoI's (LLaVA v0) system prompt
    max_length: int = 512
    dtype: str = "float32"  # compute dtype for the vision tower and LM ("bfloat16" on GPUs)

    def frozen_vision(self) -> bool:
        return bool(self.vision_path) if self.freeze_vision is None else self.freeze_vision

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        d = dict(d)
        if d.get("position_encoding", "coordinates") not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding must be one of {POSITION_ENCODINGS}, not {d['position_encoding']!r}")
        if d.get("mask_pooling", "weighted") not in MASK_POOLINGS:
            raise ValueError(f"mask_pooling must be one of {MASK_POOLINGS}, not {d['mask_pooling']!r}")
        for k in ("image_mean", "image_std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def tiny(**overrides: Any) -> ModelConfig:
    """The embedded default: trained here on CPU in minutes from the synthetic corpus (about 6 M parameters)."""
    cfg = ModelConfig(
        preset="tiny",
        vision_type="clip",
        vision_config=dict(
            image_size=112, patch_size=8, hidden_size=128, intermediate_size=256,
            num_hidden_layers=6, num_attention_heads=4,
        ),
        image_size=112,
        image_token_grid=4,  # 16 image tokens
        system_prompt="A chat about the regions of a picture.",  # short: the tiny LM's cost is per token
        lm_config=dict(
            hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False,
        ),
    )
    return dataclasses.replace(cfg, **overrides)


def real(vision_path: str, lm_path: str, **overrides: Any) -> ModelConfig:
    """A GPU-size model from local HF checkpoints, with GPT4RoI's pyramid (4 levels, stride 3, select -2).

    vision_path: any HF CLIP/SigLIP vision tower (e.g. a local clip-vit-large-patch14); lm_path: any HF causal LM
    (e.g. a local Vicuna/Llama/Qwen). The tower is frozen; stage 2 trains the LM fully or with LoRA.
    """
    cfg = ModelConfig(
        preset="real", vision_path=vision_path, lm_path=lm_path, image_size=224, select_layer=-2,
        num_levels=4, layer_stride=3, fuse_channels=256, num_fuse=3, gn_groups=32, roi_output=14,
        region_hidden=1024, position_hidden=256, max_length=2048, dtype="bfloat16",
    )
    return dataclasses.replace(cfg, **overrides)


PRESETS = {"tiny": tiny}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)} (real checkpoints: model.config.real)")
    return PRESETS[name](**overrides)
