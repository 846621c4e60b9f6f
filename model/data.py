"""From conversation samples to padded training batches.

A sample is one image, its boxes (pixel xyxy, in the order their `<bbox>` placeholders appear) and its turns; any
object with `.image`, `.boxes` and `.turns` (each turn with `.question` and `.answer`) will do, so the synthetic
corpus, accumulated corrections and exported datasets all feed the same loader.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from model.conversation import IGNORE, box_as_text, encode
from model.images import check_boxes, normalise_boxes, pixel_values
from model.modeling import RegionScribeModel


def encode_sample(model: RegionScribeModel, sample) -> dict:
    cfg = model.config
    w, h = sample.image.size
    boxes = check_boxes(sample.boxes, w, h) if len(sample.boxes) else []
    norm = normalise_boxes(boxes, w, h) if boxes else torch.zeros(0, 4)
    text_boxes = None if model.uses_region_features else [box_as_text(b) for b in norm.tolist()]
    enc = encode(model.tokenizer, [(t.question, t.answer) for t in sample.turns], model.n_image_tokens, len(boxes),
                 boxes_text=text_boxes, system=model.system)
    if len(enc.input_ids) > cfg.max_length:
        raise ValueError(f"sample of {len(enc.input_ids)} tokens exceeds max_length {cfg.max_length}")
    return {
        "pixel_values": pixel_values(sample.image, cfg.image_size, cfg.image_mean, cfg.image_std),
        "input_ids": torch.tensor(enc.input_ids),
        "labels": torch.tensor(enc.labels),
        "boxes": norm,
    }


def collate(items: Sequence[dict], pad_id: int) -> dict:
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = it["input_ids"], it["labels"], 1
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "boxes": [it["boxes"] for it in items],
    }


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
    return {k: ([b.to(device) for b in v] if isinstance(v, list) else v.to(device)) for k, v in batch.items()}
