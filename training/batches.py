"""From conversation samples to padded training batches.

A sample is one image, its boxes (pixel xyxy, in the order their `<bbox>` placeholders appear) and its turns; any
object with `.image`, `.boxes` and `.turns` (each turn with `.question` and `.answer`) will do, so the synthetic
corpus, accumulated corrections and exported datasets all feed the same loader. An optional `.masks` (per box None
or a boolean (H, W) mask) makes the region encoder pool inside the masks; a batch carries them as per-sample lists of
mask grids (None for a plain box).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from regionscribe.model.conversation import IGNORE, box_as_text, encode, in_relations
from regionscribe.model.errors import DemonstrationError
from regionscribe.model.images import check_boxes, check_masks
from regionscribe.model.tensors import mask_grid, normalise_boxes, pixel_values
from regionscribe.model.modeling import RegionScribeModel


def encode_sample(model: RegionScribeModel, sample) -> dict:
    cfg = model.config
    w, h = sample.image.size
    boxes = check_boxes(sample.boxes, w, h) if len(sample.boxes) else []
    norm = normalise_boxes(boxes, w, h) if boxes else torch.zeros(0, 4)
    masks = check_masks(getattr(sample, "masks", None) or None, boxes, w, h)
    shown = list(getattr(sample, "demonstrations", None) or [])
    if cfg.relation_regions == "box" and any(m is not None for m in masks):  # as answer_many serves them
        paired = in_relations([t.question for t in sample.turns], len(shown))
        masks = [None if p else m for m, p in zip(masks, paired)]
    if shown and not model.uses_region_features:
        raise DemonstrationError("demonstrations need region features (region_format 'features'), not boxes as text")
    text_boxes = None if model.uses_region_features else [box_as_text(b) for b in norm.tolist()]
    enc = encode(model.tokenizer, [(t.question, t.answer) for t in sample.turns], model.n_image_tokens,
                 len(shown) + len(boxes), boxes_text=text_boxes, system=model.system,
                 shown_answers=bool(shown) and getattr(sample, "learn_shown", False))
    if len(enc.input_ids) > cfg.max_length:
        raise ValueError(f"sample of {len(enc.input_ids)} tokens exceeds max_length {cfg.max_length}")
    return {
        "pixel_values": pixel_values(sample.image, cfg.image_size, cfg.image_mean, cfg.image_std),
        "input_ids": torch.tensor(enc.input_ids),
        "labels": torch.tensor(enc.labels),
        "boxes": norm,
        "masks": [None if m is None else mask_grid(m, cfg.image_size) for m in masks],
        # a demonstration's image and its box on it (model/demonstrations.py DemoRegion); its token comes first
        "shown": [(pixel_values(d.image, cfg.image_size, cfg.image_mean, cfg.image_std),
                   normalise_boxes(check_boxes([d.box], *d.image.size), *d.image.size)) for d in shown],
    }


def pad(rows: Sequence[tuple[Sequence[int] | torch.Tensor, Sequence[int] | torch.Tensor]],
        pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, labels and attention mask [B, longest] of (ids, labels) rows, padded on the right (labels IGNORE)."""
    width = max(len(i) for i, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (i, lab) in enumerate(rows):
        n = len(i)
        ids[r, :n], labels[r, :n], mask[r, :n] = torch.as_tensor(i), torch.as_tensor(lab), 1
    return ids, labels, mask


def collate(items: Sequence[dict], pad_id: int) -> dict:
    ids, labels, mask = pad([(it["input_ids"], it["labels"]) for it in items], pad_id)
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "boxes": [it["boxes"] for it in items],
        "masks": [it["masks"] for it in items] if any(m is not None for it in items for m in it["masks"]) else None,
        **_demonstrations(items),
    }


def _demonstrations(items: Sequence[dict]) -> dict:
    """The batch's demonstrations: their images stacked, their boxes, and how many each sample has (in order)."""
    shown = [d for it in items for d in it.get("shown", ())]
    if not shown:
        return {}
    return {"demo_pixel_values": torch.stack([pv for pv, _ in shown]), "demo_boxes": [b for _, b in shown],
            "demo_counts": [len(it.get("shown", ())) for it in items]}


def batches(model: RegionScribeModel, samples: Iterable, batch_size: int) -> Iterator[dict]:
    buf = []
    for s in samples:
        buf.append(encode_sample(model, s))
        if len(buf) == batch_size:
            yield collate(buf, model.tokenizer.pad_token_id)
            buf = []
    if buf:
        yield collate(buf, model.tokenizer.pad_token_id)


def to_device(batch: dict, device: torch.device) -> dict:
    """Every tensor of a batch on `device`: through the per-sample lists of boxes and of masks (None stays None)."""
    def move(v):
        if v is None:
            return None
        if isinstance(v, list):
            return [move(x) for x in v]
        return v.to(device) if isinstance(v, torch.Tensor) else v  # demo_counts are ints
    return {k: move(v) for k, v in batch.items()}
