"""GPT4RoI's region encoder: a multi-level pyramid from ViT depth, fused, RoI-aligned on every level.

    hidden states of `num_levels` layers, `layer_stride` apart, ending at `select_layer`
      -> patch grids [B, C, g, g], the shallower ones up-sampled x2, x4, ... (bilinear, align_corners=True)
      -> fuse: coordinate channels + 1x1 conv per level, then `num_fuse` rounds of cross-level channel shuffle
         (keep C/2, take C/4 from the next coarser and C/4 from the next finer level) with 3x3 conv + GN + ReLU
      -> torchvision.ops.roi_align on EVERY level (aligned=True, fp32), not MultiScaleRoIAlign's one level per box
      -> regions with a mask: each RoI bin weighted by the mask's coverage of the bin (below), on every level
      -> per-level 3x3 conv, sum, ReLU, flatten, Linear
      -> + MLP of the normalised box, LayerNorm (PVIT's position term; `position_encoding="sinusoidal"`: of
         sinusoidal features of the box instead of its four raw coordinates)
      -> Linear to the LM width: one token per box.

Mask pooling: a region may come with a mask (`mask_grid`: the fraction of each cell of a square grid over the image
that the mask covers, model/images.py). The RoI is still the mask's bounding box; the mask grid itself is RoIAligned as
a 1-channel image with the same box and output size (adaptive sampling), which gives per bin the share `w` of the bin
inside the mask. On every pyramid level the RoI features `f` of a masked region become, with `mask_pooling`:
    "weighted" (default)  w * f: bins outside the mask are zero, so the token keeps the mask's silhouette (Osprey-style
                          masked pooling, kept on the RoI grid);
    "filled"              w * f + (1 - w) * m, m = sum(w * f) / sum(w) the mask's mean feature: bins outside the mask
                          hold the object's own mean instead of whatever else falls inside the box.
Measured (benchmarks/mask_regions.py, README "Mask-aware regions"): on the embedded default, never trained on masks,
either pooling reads an occluded object's colour far better than its box does (heavy overlap: 27 -> 86.5 filled,
72.5 weighted) but loses shape (93.5 -> 63.5 / 67.5; "filled" erases the silhouette). 85 stage-2 steps with masks
(`--mask-share`, weighted) brought shape back (95.5) with colour at 73, but cost boxes their same-colour relations.
The position term keeps the box. A region without a mask takes exactly the unmasked path (no weight is applied at
all), so boxes give bitwise the tokens they gave before masks existed.

Position term: the presets (and the embedded default) use an MLP of the four raw coordinates. A linear probe reads
the box centre from the token (R^2 0.99); the position term carries about 5% of the tokens' variance, the appearance
part the rest. Trained on the stage-2 mix alone, the LM never learned to read it (left/right and above/below at
exactly 50%); relation drills (training/stages.py) taught it. `position_encoding="sinusoidal"` (DETR-style box
features) with `match_embedding_scale` was tried first: a full-budget default with it plus 128 px input, a LayerNorm
on the appearance part and per-question region slot embeddings did worse (colour 54%, shape 31%, texture 45%,
left/right still 50%: README, "The embedded default").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from regionscribe.model.config import MASK_POOLINGS, POSITION_ENCODINGS

Masks = list[list[torch.Tensor | None]] | None  # per image, per box: None (the box) or a [S, S] mask grid


def pyramid_layers(num_hidden_states: int, select_layer: int, layer_stride: int, num_levels: int) -> list[int]:
    """Indices into `hidden_states` (0 = embeddings): GPT4RoI's `hs[select::-stride][::-1][-num_levels:]`."""
    indices = list(range(num_hidden_states))[select_layer::-layer_stride][::-1][-num_levels:]
    if len(indices) < num_levels:
        raise ValueError(f"a tower with {num_hidden_states} hidden states cannot give {num_levels} levels "
                         f"{layer_stride} apart ending at {select_layer}")
    return indices


def patch_grid(hidden: torch.Tensor) -> torch.Tensor:
    """[B, T, C] ViT tokens (with or without a CLS token) -> [B, C, g, g]."""
    b, t, c = hidden.shape
    g = int(round(t ** 0.5))
    if g * g != t:
        g = int(round((t - 1) ** 0.5))
        if g * g != t - 1:
            raise ValueError(f"cannot arrange {t} tokens in a square patch grid")
        hidden = hidden[:, 1:]
    return hidden.transpose(1, 2).reshape(b, c, g, g)


def _coords(x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy]).expand(b, 2, h, w)


class LevelFuse(nn.Module):
    """GPT4RoI's MLVLFuseModule with nn layers (no mmcv)."""

    def __init__(self, in_channels: int, channels: int, num_levels: int, num_fuse: int, gn_groups: int):
        super().__init__()
        self.num_levels = num_levels
        self.input_convs = nn.ModuleList(nn.Conv2d(in_channels + 2, channels, 1) for _ in range(num_levels))
        self.rounds = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.GroupNorm(gn_groups, channels),
                          nn.ReLU())
            for _ in range(num_fuse)
        )

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = [conv(torch.cat([x, _coords(x)], 1)) for conv, x in zip(self.input_convs, levels)]
        c = feats[0].shape[1]
        quarter = c // 4
        remain = c - 2 * quarter
        last = self.num_levels - 1
        for block in self.rounds:
            fused = []
            for i, x in enumerate(feats):  # levels ordered finest (largest grid) to coarsest
                size = x.shape[-2:]
                coarser = feats[min(i + 1, last)][:, c - quarter:].float()
                finer = feats[max(i - 1, 0)][:, remain:remain + quarter].float()
                coarser = F.interpolate(coarser, size=size, mode="bilinear", align_corners=True).to(x.dtype)
                finer = F.interpolate(finer, size=size, mode="bilinear", align_corners=True).to(x.dtype)
                fused.append(block(torch.cat([x[:, :remain], coarser, finer], 1)))
            feats = fused
        return feats


BOX_FREQUENCIES = 6


def box_features(boxes: torch.Tensor, n_freqs: int = BOX_FREQUENCIES) -> torch.Tensor:
    """[N, 4] normalised xyxy -> [N, 8 + 16 * n_freqs]: x0, y0, x1, y1, cx, cy, w, h, then sin and cos of each at
    frequencies pi/2 * 2^k (k = 0 gives a monotonic code over [0, 1], the higher ones finer ones)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    coords = torch.stack([x0, y0, x1, y1, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)
    freqs = (torch.pi / 2) * 2.0 ** torch.arange(n_freqs, device=boxes.device, dtype=boxes.dtype)
    angles = (coords[..., None] * freqs).flatten(-2)
    return torch.cat([coords, angles.sin(), angles.cos()], -1)


class RegionEncoder(nn.Module):
    def __init__(self, vision_hidden: int, lm_hidden: int, image_size: int, num_levels: int, fuse_channels: int,
                 num_fuse: int, gn_groups: int, roi_output: int, roi_sampling_ratio: int, region_hidden: int,
                 position_hidden: int, position_encoding: str = "coordinates"):
        super().__init__()
        self.image_size = image_size
        self.roi_output = roi_output
        self.sampling_ratio = roi_sampling_ratio
        self.num_levels = num_levels
        self.fuse = LevelFuse(vision_hidden, fuse_channels, num_levels, num_fuse, gn_groups)
        self.level_convs = nn.ModuleList(nn.Conv2d(fuse_channels, fuse_channels, 3, padding=1)
                                         for _ in range(num_levels))
        self.flatten_linear = nn.Linear(fuse_channels * roi_output * roi_output, region_hidden)
        self.position_encoding = position_encoding
        if position_encoding == "sinusoidal":
            self.position = nn.Sequential(
                nn.Linear(8 + 16 * BOX_FREQUENCIES, position_hidden), nn.GELU(),
                nn.Linear(position_hidden, region_hidden), nn.LayerNorm(region_hidden),
            )
        elif position_encoding == "coordinates":  # the first design, kept so that its checkpoints load
            self.position = nn.Sequential(
                nn.Linear(4, position_hidden), nn.ReLU(), nn.LayerNorm(position_hidden),
                nn.Linear(position_hidden, region_hidden), nn.ReLU(), nn.LayerNorm(region_hidden),
            )
        else:
            raise ValueError(f"position_encoding must be one of {POSITION_ENCODINGS}, not {position_encoding!r}")
        self.to_lm = nn.Linear(region_hidden, lm_hidden)

    def pyramid(self, hidden_levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Selected hidden states (shallow to deep) -> fused feature maps, finest first."""
        grids = [patch_grid(h) for h in hidden_levels]
        n = len(grids)
        ups = []
        for k, g in enumerate(grids):  # shallowest is up-sampled the most: x2^(n-1-k)
            scale = 2 ** (n - 1 - k)
            if scale > 1:
                size = (g.shape[-2] * scale, g.shape[-1] * scale)
                g = F.interpolate(g.float(), size=size, mode="bilinear", align_corners=True).to(g.dtype)
            ups.append(g)
        return self.fuse(ups)

    def pool(self, levels: list[torch.Tensor], boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """RoIAlign of every box on every level: per level [sum N_i, C, out, out] (boxes normalised, per image)."""
        norm = torch.cat(boxes).to(torch.float32)
        index = torch.cat([torch.full((len(b), 1), i, dtype=torch.float32) for i, b in enumerate(boxes)])
        rois = torch.cat([index.to(norm.device), norm * self.image_size], 1)
        return [roi_align(feat.float(), rois, self.roi_output, spatial_scale=feat.shape[-1] / self.image_size,
                          sampling_ratio=self.sampling_ratio, aligned=True) for feat in levels]

    def mask_weights(self, boxes: list[torch.Tensor], masks: Masks) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(indices into the concatenated boxes of the masked regions, their bin coverage [K, 1, out, out]), or None
        when no region has a mask."""
        if masks is None:
            return None
        if len(masks) != len(boxes) or any(len(m) != len(b) for m, b in zip(masks, boxes)):
            raise ValueError(f"masks per image {[len(m) for m in masks]} do not match boxes {[len(b) for b in boxes]}")
        flat = [m for per_image in masks for m in per_image]
        index = [k for k, m in enumerate(flat) if m is not None]
        if not index:
            return None
        norm = torch.cat(boxes).to(torch.float32)
        grids = torch.stack([flat[k] for k in index]).to(device=norm.device, dtype=torch.float32)[:, None]
        side = grids.shape[-1]
        at = torch.tensor(index, device=norm.device)
        rois = torch.cat([torch.arange(len(index), device=norm.device, dtype=torch.float32)[:, None],
                          norm.index_select(0, at) * side], 1)
        weights = roi_align(grids, rois, self.roi_output, spatial_scale=1.0, sampling_ratio=0, aligned=True)
        return at, weights

    @staticmethod
    def apply_mask(pooled: torch.Tensor, at: torch.Tensor, weights: torch.Tensor, pooling: str) -> torch.Tensor:
        """One level's RoI features [N, C, out, out] with the masked rows `at` weighted (see the module docstring);
        the other rows are left untouched."""
        f = pooled.index_select(0, at)
        w = weights.to(f.dtype)
        if pooling not in MASK_POOLINGS:
            raise ValueError(f"mask_pooling must be one of {MASK_POOLINGS}, not {pooling!r}")
        if pooling == "filled":
            mean = (f * w).sum((2, 3), keepdim=True) / w.sum((2, 3), keepdim=True).clamp_min(1e-6)
            masked = w * f + (1 - w) * mean
        else:
            masked = w * f
        return pooled.index_copy(0, at, masked)

    def forward(self, levels: list[torch.Tensor], boxes: list[torch.Tensor], masks: Masks = None,
                mask_pooling: str = "weighted") -> list[torch.Tensor]:
        """levels: fused maps [B, C, s, s]; boxes: per image [N_i, 4] normalised xyxy; masks: None, or per image per
        box None or a [S, S] mask grid (`regionscribe.model.tensors.mask_grid`) -> per image [N_i, lm_hidden]."""
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return [levels[0].new_zeros(0, self.to_lm.out_features) for _ in boxes]
        rois = self.pool(levels, boxes)
        masked = self.mask_weights(boxes, masks)
        if masked is not None:
            rois = [self.apply_mask(r, *masked, mask_pooling) for r in rois]
        pooled = sum(conv(r.to(feat.dtype)) for conv, r, feat in zip(self.level_convs, rois, levels))
        x = self.flatten_linear(F.relu(pooled).flatten(1))
        box = torch.cat(boxes).to(x.dtype)
        x = x + self.position(box_features(box) if self.position_encoding == "sinusoidal" else box)
        return list(self.to_lm(x).split(counts))
