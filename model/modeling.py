"""RegionScribeModel: vision tower + image projector + GPT4RoI region encoder + any HF causal LM.

The LM is never subclassed or patched: `inputs_embeds` are built here (token embeddings with the `<im_patch>`
positions replaced by projected image features and the `<bbox>` positions replaced, in order, by region tokens)
and passed to the LM's ordinary forward. Checkpoints are HF-shaped: config.json, model.safetensors and the
tokenizer files in one folder.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regionscribe.model import adapters
from regionscribe.model.checkpoints import CONFIG, SAFE_INDEX, WEIGHTS, write_config
from regionscribe.model.config import ModelConfig
from regionscribe.model.errors import PlaceholderError
from regionscribe.model.prompts import SYSTEM
from regionscribe.model.region_encoder import RegionEncoder, patch_grid, pyramid_layers
from regionscribe.model.tokenizer import SpecialIds, add_region_tokens
from regionscribe.model.vpgc import Prompting, VisualPromptGenerator, instruction_end, prompting
from regionscribe.model.weights import DEFAULT_SHARD_BYTES, is_checkpoint_weights, iter_state, save_state

def _hf_config(d: dict[str, Any]):
    from transformers import AutoConfig

    d = dict(d)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def build_vision(config: ModelConfig, saved: dict[str, Any] | None = None) -> nn.Module:
    from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

    if config.vision_path and saved is None:
        kind = AutoConfig.from_pretrained(config.vision_path).model_type
        cls = SiglipVisionModel if "siglip" in kind else CLIPVisionModel
        return cls.from_pretrained(config.vision_path, dtype=torch.float32)
    if saved is not None:
        hf = _hf_config(saved)
    elif config.vision_type == "siglip":
        from transformers import SiglipVisionConfig
        hf = SiglipVisionConfig(**config.vision_config)
    else:
        from transformers import CLIPVisionConfig
        hf = CLIPVisionConfig(**config.vision_config)
    cls = SiglipVisionModel if "siglip" in hf.model_type else CLIPVisionModel
    return cls(hf)


def build_lm(config: ModelConfig, vocab_size: int, saved: dict[str, Any] | None = None) -> nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    if config.lm_path and saved is None:
        return AutoModelForCausalLM.from_pretrained(config.lm_path, dtype=torch.float32)
    hf = _hf_config(saved) if saved is not None else LlamaConfig(vocab_size=vocab_size, **config.lm_config)
    return AutoModelForCausalLM.from_config(hf)


def compute_dtype(config: ModelConfig, device: str | torch.device | None) -> torch.dtype:
    """The config's dtype (bfloat16 for the GPU-size presets) on CUDA; float32 on the CPU, where bf16 matmuls are slow
    and lose precision."""
    if device is not None and torch.device(device).type == "cuda":
        return getattr(torch, config.dtype)
    return torch.float32


@dataclass
class ImageFeatures:
    levels: list[torch.Tensor]  # fused pyramid maps, finest first, [B, C, s, s]
    image_tokens: torch.Tensor | None  # [B, N, lm_hidden] projected patch features, or None when switched off

    def select(self, index: torch.Tensor) -> "ImageFeatures":
        return ImageFeatures([lv.index_select(0, index) for lv in self.levels],
                             None if self.image_tokens is None else self.image_tokens.index_select(0, index))


class RegionScribeModel(nn.Module):
    def __init__(self, config: ModelConfig, tokenizer, vision: nn.Module | None = None, lm: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        add_region_tokens(tokenizer)
        self.ids = SpecialIds.of(tokenizer)
        self.vision = vision if vision is not None else build_vision(config)
        self.lm = lm if lm is not None else build_lm(config, len(tokenizer))
        self._fit_embeddings()
        vcfg = self.vision.config
        vh, lh = vcfg.hidden_size, self.lm.config.hidden_size
        self.grid = vcfg.image_size // vcfg.patch_size
        self.system = config.system_prompt or SYSTEM
        if vcfg.image_size != config.image_size:
            raise ValueError(f"vision tower expects {vcfg.image_size}px images, config says {config.image_size}")
        self.level_indices = pyramid_layers(vcfg.num_hidden_layers + 1, config.select_layer, config.layer_stride,
                                            config.num_levels)
        self.projector = nn.Linear(vh, lh)
        self.region_encoder = RegionEncoder(
            vh, lh, config.image_size, config.num_levels, config.fuse_channels, config.num_fuse, config.gn_groups,
            config.roi_output, config.roi_sampling_ratio, config.region_hidden, config.position_hidden,
            config.position_encoding)
        if config.match_embedding_scale:
            words = self.lm.get_input_embeddings().weight.detach().float()
            self.region_scale = nn.Parameter(words.pow(2).mean().sqrt().reshape(()))
        if config.frozen_vision():
            self.vision.requires_grad_(False)
        self.vpgc = None
        if config.vpgc:
            self.vpgc = VisualPromptGenerator(lh, **config.vpgc)
            self.vpgc.attach(self.lm)

    def add_vpgc(self, layer: int | None = None, dim: int = 64, heads: int = 4) -> None:
        """Give the model a fresh VPG-C (model/vpgc.py) at `layer` (default: the LM's middle one), starting as a
        no-op; the config records it, so the checkpoint saves and loads it."""
        if self.vpgc is not None:
            raise ValueError("the model has a VPG-C already")
        n = self.lm.config.num_hidden_layers
        self.config.vpgc = {"layer": n // 2 if layer is None else layer, "dim": dim, "heads": heads}
        self.vpgc = VisualPromptGenerator(self.lm.config.hidden_size, **self.config.vpgc).to(self.device)
        self.vpgc.attach(self.lm)

    def prompts(self, context: Prompting | None):
        """A block in which the LM's calls prompt the region tokens `context` names, when the model has a VPG-C
        switched on; otherwise a block that changes nothing."""
        return self.vpgc.prompts(context) if self.prompting_on else contextlib.nullcontext()

    @property
    def prompting_on(self) -> bool:
        return self.vpgc is not None and self.config.use_vpgc

    @property
    def _no_split_modules(self) -> list[str]:
        """The LM's and the tower's own block classes (HF's `_no_split_modules`): what FSDP's transformer auto-wrap
        shards by (scripts/accelerate/fsdp.yaml names no class, so it works whatever the LM)."""
        present = {type(m).__name__ for m in self.modules()}
        names: list[str] = []
        for part in (self.lm, self.vision):
            base = part.get_base_model() if hasattr(part, "get_base_model") else part
            names += [n for n in getattr(base, "_no_split_modules", None) or [] if n in present and n not in names]
        return names

    def _fit_embeddings(self) -> None:
        """Grow the LM's embeddings to the tokenizer; new rows start at the mean of the old ones (GPT4RoI)."""
        emb = self.lm.get_input_embeddings()
        old = emb.weight.shape[0]
        if len(self.tokenizer) <= old:
            return
        self.lm.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        with torch.no_grad():
            for matrix in (self.lm.get_input_embeddings().weight, self.lm.get_output_embeddings().weight):
                matrix[old:] = matrix[:old].mean(0, keepdim=True)

    # ---------------------------------------------------------------------------------------------- visual side
    @property
    def n_image_tokens(self) -> int:
        if not self.config.use_image_tokens:
            return 0
        return (self.config.image_token_grid or self.grid) ** 2

    @property
    def uses_region_features(self) -> bool:
        return self.config.region_format == "features"

    def encode_images(self, pixel_values: torch.Tensor) -> ImageFeatures:
        frozen = self.config.frozen_vision()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            out = self.vision(pixel_values=pixel_values.to(self.vision.dtype), output_hidden_states=True)
        hs = out.hidden_states
        levels = self.region_encoder.pyramid([hs[i] for i in self.level_indices]) if self.uses_region_features else []
        tokens = None
        if self.config.use_image_tokens:
            grid = patch_grid(hs[self.config.select_layer])
            if self.config.image_token_grid:
                grid = F.adaptive_avg_pool2d(grid, self.config.image_token_grid)
            tokens = self.projector(grid.flatten(2).transpose(1, 2))
        return ImageFeatures(levels, tokens)

    def region_tokens(self, features: ImageFeatures, boxes: list[torch.Tensor],
                      masks: list[list[torch.Tensor | None]] | None = None) -> list[torch.Tensor]:
        """Per image, normalised [N_i, 4] boxes (and optionally per box None or a mask grid) -> [N_i, lm_hidden]
        region tokens."""
        if not self.uses_region_features:  # coordinates-as-text baseline: boxes are in the text, no region tokens
            return [b.new_zeros(0, self.lm.config.hidden_size) for b in boxes]
        tokens = self.region_encoder(features.levels, boxes, masks, self.config.mask_pooling)
        if self.config.match_embedding_scale:  # RMS-normalised, then at the word embeddings' scale
            tokens = [t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * self.region_scale.to(t.dtype)
                      for t in tokens]
        return tokens

    # --------------------------------------------------------------------------------------------- text side
    def embed(self, input_ids: torch.Tensor, image_tokens: torch.Tensor | None,
              region_tokens: list[torch.Tensor]) -> torch.Tensor:
        """Token embeddings with `<im_patch>` and `<bbox>` positions replaced (out of place, autograd-safe).

        image_tokens: [B, N, H] for the rows of input_ids (rows without patches are skipped); region_tokens: one
        [n_b, H] tensor per row, used in order of appearance of `<bbox>` in that row.
        """
        emb = self.lm.get_input_embeddings()(input_ids)
        patch = input_ids == self.ids.im_patch
        if patch.any():
            counts = patch.sum(1)
            rows = counts.nonzero().flatten()
            if image_tokens is None or (counts[rows] != image_tokens.shape[1]).any():
                raise PlaceholderError(f"image placeholders per row {counts.tolist()} do not match "
                                       f"{None if image_tokens is None else image_tokens.shape[1]} image tokens")
            emb = emb.masked_scatter(patch[..., None], image_tokens.index_select(0, rows).to(emb.dtype))
        bbox = input_ids == self.ids.bbox
        counts = bbox.sum(1).tolist()
        given = [len(r) for r in region_tokens]
        if counts != given:
            raise PlaceholderError(f"<bbox> placeholders per row {counts} but region tokens per row {given}")
        if sum(counts):
            src = torch.cat([r for r in region_tokens if len(r)]).to(emb.dtype)
            emb = emb.masked_scatter(bbox[..., None], src)
        return emb

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor, boxes: list[torch.Tensor],
                masks: list[list[torch.Tensor | None]] | None = None,
                num_items_in_batch: torch.Tensor | None = None, demo_pixel_values: torch.Tensor | None = None,
                demo_boxes: list[torch.Tensor] | None = None, demo_counts: list[int] | None = None) -> torch.Tensor:
        """Training loss: cross-entropy on assistant tokens (labels are -100 elsewhere), their mean; with
        `num_items_in_batch` their sum divided by it (training/trainer.py passes 1 and normalises across processes).

        Demonstrations (model/demonstrations.py): `demo_pixel_values` [D, 3, s, s] with one [1, 4] box each in
        `demo_boxes`, `demo_counts[b]` of them for row b in order; their images go through the tower in the same
        pass, and their tokens fill the row's first `<bbox>` placeholders."""
        if demo_pixel_values is None:
            feats = self.encode_images(pixel_values)
            regions = self.region_tokens(feats, boxes, masks)
        else:  # one pass of the tower over the rows' images and the demonstrations' images
            n = pixel_values.shape[0]
            both = self.encode_images(torch.cat([pixel_values, demo_pixel_values.to(pixel_values.dtype)]))
            index = torch.arange(n + len(demo_pixel_values), device=pixel_values.device)
            feats = both.select(index[:n])
            shown = self.region_tokens(both.select(index[n:]), demo_boxes)
            starts = [sum(demo_counts[:b]) for b in range(n)]
            regions = [torch.cat([*shown[s: s + c], r])
                       for s, c, r in zip(starts, demo_counts, self.region_tokens(feats, boxes, masks))]
        emb = self.embed(input_ids, feats.image_tokens, regions)
        extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        context = None
        if self.prompting_on:
            groups = []
            for b in range(len(input_ids)):
                skip = demo_counts[b] if demo_counts else 0
                end = instruction_end(input_ids[b], labels[b], self.ids.bbox, skip)
                if end is not None:
                    image = [feats.image_tokens[b]] if feats.image_tokens is not None else []
                    groups.append((b, 0, end, torch.cat(image + [regions[b]]), skip))
            context = prompting(input_ids, self.ids.bbox, groups)
        with self.prompts(context):
            return self.lm(inputs_embeds=emb, attention_mask=attention_mask, labels=labels, **extra).loss

    # ------------------------------------------------------------------------------------------- checkpoints
    def save_pretrained(self, path: str | Path, metadata: dict[str, Any] | None = None,
                        dtype: torch.dtype | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        """config.json (architecture, exact sub-configs, training metadata) + weights + tokenizer.

        Weights up to `max_shard_bytes` are one model.safetensors; above, HF's sharded layout
        (model-0000i-of-0000N.safetensors and model.safetensors.index.json)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # the tower is always copied in, a pretrained frozen one too: the folder stays valid when it (or the tower's
        # folder, or the working directory) moves; config.vision_path only records where it came from
        state, seen = {}, set()
        for name, tensor in self.state_dict().items():
            if tensor.data_ptr() in seen:  # tied weights are stored once
                continue
            seen.add(tensor.data_ptr())
            t = tensor.detach()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            state[name] = t.contiguous().cpu()
        for stale in [path / WEIGHTS, path / SAFE_INDEX, *path.glob("model-*-of-*.safetensors")]:
            stale.unlink(missing_ok=True)
        save_state(path, state, max_shard_bytes)
        write_config(path, self.config, self.vision.config.to_dict(),
                     self.lm.config.to_dict(), metadata)
        self.tokenizer.save_pretrained(str(path))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> "RegionScribeModel":
        from transformers import AutoTokenizer, PretrainedConfig

        path = Path(path)
        if adapters.is_adapter_version(path):  # a LoRA adapter version over a base checkpoint (model/adapters.py)
            return load_adapter_version(path, device=device)
        if not (path / CONFIG).is_file() or not is_checkpoint_weights(path):
            raise FileNotFoundError(f"{path} is not a regionscribe checkpoint (needs {CONFIG} and {WEIGHTS} "
                                    f"or {SAFE_INDEX} with its shards)")
        doc = json.loads((path / CONFIG).read_text())
        if doc.get("model_type") != "regionscribe":
            raise ValueError(f"{path / CONFIG} is not a regionscribe config")
        config = ModelConfig.from_dict(doc["model"])
        # an empty config: AutoTokenizer would otherwise read our config.json and warn about model type regionscribe
        tokenizer = AutoTokenizer.from_pretrained(str(path), config=PretrainedConfig())
        vision = build_vision(config, saved=doc["vision"])
        lm = build_lm(config, len(tokenizer), saved=doc["lm"])
        model = cls(config, tokenizer, vision=vision, lm=lm)
        expected = set(model.state_dict())
        seen, unexpected = set(), []
        for state in iter_state(path):  # one memory-mapped shard at a time
            unexpected += [k for k in state if k not in expected]
            seen.update(state)
            model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
            del state
        missing = expected - seen
        allowed = {k for k in missing if k.startswith("vision.") and doc["vision"] is None}
        tied = {k for k in missing if k.startswith("lm.") and getattr(model.lm.config, "tie_word_embeddings", False)}
        bad = set(missing) - allowed - tied
        if bad or unexpected:
            raise ValueError(f"checkpoint {path} does not match its config: missing {sorted(bad)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        model.metadata = doc.get("metadata", {})
        model.to(compute_dtype(config, device))
        if device is not None:
            model.to(device)
        return model.eval()

    metadata: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        return self.projector.weight.device


def load_adapter_version(path: str | Path, device: str | torch.device | None = None,
                         trainable: bool = False) -> RegionScribeModel:
    """An adapter version (model/adapters.py): its base with the visual weights and the adapter (merged unless
    `trainable`)."""
    path = Path(path)
    base = adapters.base_of(path)
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"{path} is an adapter over {base}, which is not there")
    model = RegionScribeModel.from_pretrained(base)  # fp32 on the CPU: merged first, then cast and placed
    adapters.apply(model, path, trainable)
    model.to(compute_dtype(model.config, device))
    if device is not None:
        model.to(device)
    return model.eval()
