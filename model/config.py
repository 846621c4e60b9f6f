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
RELATION_REGIONS = ("box", "mask")


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
    # what a question about two or more regions (a relation) sees of a region that has a mask: "box" (its box token, as
    # if it had no mask) or "mask" (its mask token, as the region's own questions). Left of, above, bigger and
    # overlapping are relations of the boxes; with masks, the tiny default lost 12 points on size and overlap
    # (benchmarks/mask_regions.py, README "Mask-aware regions"). Serving and training both follow it; it can be
    # changed on a loaded checkpoint.
    relation_regions: str = "box"
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
    # decoding also stops where the answer's text reaches this string, cut off there (GPT4RoI: "###", the next turn's
    # separator: its LLaVA v0 training never ended an answer with </s>); None: the EOS token alone
    stop_string: str | None = None
    max_length: int = 512
    # VPG-C (model/vpgc.py): {"layer": decoder layer, "dim": attention width, "heads": heads}, or None for none;
    # use_vpgc switches a checkpoint's VPG-C off without removing it (measured with and without)
    vpgc: dict[str, Any] | None = None
    use_vpgc: bool = True
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
        if d.get("relation_regions", "box") not in RELATION_REGIONS:
            raise ValueError(f"relation_regions must be one of {RELATION_REGIONS}, not {d['relation_regions']!r}")
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
    The region module's widths follow the tower's and the LM's (`from_parts`): for CLIP ViT-L and a 7B LM they are
    fuse 256, region 1024, position 256, RoIAlign 14.
    """
    return from_parts(vision_path, lm_path, **overrides)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def from_parts(vision_path: str, lm_path: str, **overrides: Any) -> ModelConfig:
    """The config of `regionscribe train --vision PATH --lm PATH`: a pretrained HF vision tower (CLIP or SigLIP,
    frozen) and a pretrained HF causal LM (Llama, Qwen2/3, Mistral, ... anything AutoModelForCausalLM loads).

    GPT4RoI's pyramid (hidden state -2 and every third one below it, up to 4 levels; fewer for a shallower tower) and
    region module, its widths scaled to the parts: fuse channels min(256, tower width), region width min(1024, LM
    width), position MLP a quarter of that, RoIAlign 14 on a patch grid of 14 or more (7 below). Image size, mean and
    std are the tower's (its preprocessor_config.json, else CLIP's or SigLIP's defaults)."""
    vision, lm = Path(vision_path), Path(lm_path)
    for what, folder in (("--vision", vision), ("--lm", lm)):
        if not (folder / "config.json").is_file():
            raise ValueError(f"{what} {folder}: not an HF model folder (no config.json)")
    vcfg = _read_json(vision / "config.json")
    kind = vcfg.get("model_type", "")
    if kind in ("clip", "siglip", "siglip2"):
        vcfg = vcfg.get("vision_config", vcfg)  # a full CLIP/SigLIP folder: the vision side
    elif kind not in ("clip_vision_model", "siglip_vision_model"):
        raise ValueError(f"--vision {vision}: a CLIP or SigLIP tower is needed, not model_type {kind!r}")
    siglip = "siglip" in kind
    lcfg = _read_json(lm / "config.json")
    layers, width = vcfg.get("num_hidden_layers", 12), vcfg.get("hidden_size", 768)
    image_size, patch = vcfg.get("image_size", 224), vcfg.get("patch_size", 16)
    levels = max(1, min(4, (layers - 1) // 3 + 1))
    fuse = min(256, width - width % 8)
    region = min(1024, lcfg.get("hidden_size", 1024))
    pre = _read_json(vision / "preprocessor_config.json")
    mean = tuple(pre.get("image_mean", (0.5, 0.5, 0.5) if siglip else ModelConfig.image_mean))
    std = tuple(pre.get("image_std", (0.5, 0.5, 0.5) if siglip else ModelConfig.image_std))
    cfg = ModelConfig(
        preset="parts", vision_path=str(vision), lm_path=str(lm), vision_type="siglip" if siglip else "clip",
        image_size=image_size, image_mean=mean, image_std=std, select_layer=-2 if layers > 1 else -1,
        num_levels=levels, layer_stride=3, fuse_channels=fuse, num_fuse=3, gn_groups=min(32, fuse // 8),
        roi_output=14 if image_size // patch >= 14 else 7, region_hidden=region, position_hidden=max(4, region // 4),
        max_length=min(2048, lcfg.get("max_position_embeddings", 2048)), dtype="bfloat16",
    )
    return dataclasses.replace(cfg, **overrides)


# CLIP ViT-L/14 at 224 px (openai/clip-vit-large-patch14's vision config) and LLaMA-7B v1: GPT4RoI's parts
CLIP_VIT_L14 = dict(image_size=224, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, rms_norm_eps=1e-6, max_position_embeddings=2048, tie_word_embeddings=False)


def gpt4roi(**overrides: Any) -> ModelConfig:
    """GPT4RoI-7B's exact shape (jshilong/GPT4RoI, spi_llava.py and layers.py): CLIP ViT-L/14 frozen at 224 px,
    256 image tokens from hidden state -2 through one Linear, region levels at hidden states 14/17/20/23 fused
    at 1,024 channels over 5 shuffle rounds (GroupNorm 64), RoIAlign 14, the position MLP 4->256->1024 with its
    LayerNorms, LLaMA-7B with 32,006 tokens. `regionscribe convert gpt4roi` fills it with the released weights;
    built from this preset alone its weights are random (the GPU benchmark's shape)."""
    cfg = ModelConfig(
        preset="gpt4roi", vision_type="clip", vision_config=dict(CLIP_VIT_L14), freeze_vision=True, image_size=224,
        select_layer=-2, num_levels=4, layer_stride=3, fuse_channels=1024, num_fuse=5, gn_groups=64, roi_output=14,
        roi_sampling_ratio=2, region_hidden=1024, position_hidden=256, position_encoding="coordinates",
        use_image_tokens=True, image_token_grid=None, region_format="features", lm_config=dict(LLAMA_7B),
        system_prompt=None, stop_string="###", max_length=2048, dtype="bfloat16",
    )
    return dataclasses.replace(cfg, **overrides)


PRESETS = {"tiny": tiny, "gpt4roi": gpt4roi}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)} (a tower and an LM from local "
                         f"folders: `regionscribe train --vision PATH --lm PATH`)")
    return PRESETS[name](**overrides)
