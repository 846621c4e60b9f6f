"""RegionDescriber: the inference entry point. One image, many boxes, one batched pass.

    describe(image, boxes, asks, masks=None) -> Description

A region is a box, or a box with a mask (a boolean (H, W) array of the EXIF-corrected image; the box is its bounding
box): the region encoder then pools inside the mask (model/region_encoder.py). `masks` is None or a list aligned
with `boxes`, each entry None (the box itself) or a mask.

Work per call: the image is encoded once (vision tower, fused pyramid, image tokens) and the shared prompt prefix
(system prompt + image tokens) is run through the LM once; both are kept in an LRU cache keyed by image content, so
a second box on the same image re-encodes nothing (the cache also keeps the keys and values of the questions'
openings, their words before the first `<bbox>`). Every question about every region (captions, attributes,
relations) is then one batch on top of that prefix, held once per image (model/branches.py); captions are decoded
greedily together, and attribute/relation candidates are ranked by log-likelihood together (that pass:
model/answering.py).

`naive=True` is the baseline kept for honest speed comparisons: one region per pass, image re-encoded each time,
no shared prefix.

`describe_many(requests)` answers several calls at once (an inference worker's waiting jobs,
regionscribe.backend.inference.answers): the vision tower and the LM's prefix run once over every image not cached yet,
each image's prefix is shared by its boxes' questions, and the questions of all requests are one batch for decoding
and ranking. Each request gets its own Description, or its own error (a bad box fails that request alone).

When a call asks for both a caption and attributes, what is served agrees (`agree_caption`, on by default): where
the caption names another value of an attribute than its ranking puts first, the caption is written with the top
value (model/agreement.py says why).

The checkpoint's folder layout and version are model/checkpoints.py's (read without torch); an untrained model of a
preset, for tests and plumbing, is regionscribe.training.stages' `untrained_describer`.
"""
from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from regionscribe.model.agreement import agree
from regionscribe.model.answering import EncodedImage, Question, answer_many, encode, encode_batch
from regionscribe.model.asks import Asks, Box, Description, RegionDescription, Relation
from regionscribe.model.checkpoints import DEFAULT_CHECKPOINT, checkpoint_version
from regionscribe.model.demonstrations import block as demonstration_block
from regionscribe.model.errors import BoxError, DemonstrationError, PlaceholderError, RegionScribeError
from regionscribe.model.images import check_boxes, check_masks, load_image
from regionscribe.model.tensors import mask_grid, normalise_boxes
from regionscribe.model.modeling import RegionScribeModel
from regionscribe.model.prompts import (
    ATTRIBUTE_PROMPT, BBOX, CAPTION_PROMPT, DETAILED_PROMPT, RELATION_TEXT_PROMPT, YESNO_PROMPT,
)


@dataclass
class DescribeRequest:
    """One call of `describe`, for `describe_many`."""

    image: Image.Image | bytes
    boxes: list[Box]
    asks: Asks | None = None
    image_key: str | None = None
    only: Sequence[int] | None = None
    masks: Sequence | None = None  # as `describe`'s: per box None or a boolean (H, W) mask
    extra: dict = field(default_factory=dict)  # further keyword arguments of `describe`: such a request gets its own pass
    demonstrations: Sequence | None = None  # as `describe`'s: per box a list of Demonstrations

class RegionDescriber:
    def __init__(self, model: RegionScribeModel, model_version: str, cache_size: int = 32,
                 relation_threshold: float = 0.5, max_relation_partners: int = 3, agree_caption: bool = True):
        self.model = model.eval()
        self.model_version = model_version
        self.agree_caption = agree_caption
        self.cache_size = cache_size
        self.relation_threshold = relation_threshold
        self.max_relation_partners = max_relation_partners
        self._cache: OrderedDict[str, EncodedImage] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | Path = DEFAULT_CHECKPOINT, device: str | None = None,
                        **kwargs) -> "RegionDescriber":
        path = Path(path)
        model = RegionScribeModel.from_pretrained(path, device=device)
        return cls(model, checkpoint_version(path), **kwargs)

    def reload(self, path: str | Path) -> None:
        """Swap in another checkpoint (a newly published version); clears the feature cache."""
        fresh = RegionScribeModel.from_pretrained(path, device=self.model.device)
        with self._lock:
            self.model = fresh.eval()
            self.model_version = checkpoint_version(Path(path))
            self._cache.clear()

    def cache_info(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._cache)}

    # ----------------------------------------------------------------------------------------------- describe
    @torch.no_grad()
    def describe(self, image: Image.Image | bytes, boxes: list[Box], asks: Asks | None = None,
                 image_key: str | None = None, naive: bool = False,
                 only: Sequence[int] | None = None, masks: Sequence | None = None,
                 demonstrations: Sequence | None = None) -> Description:
        """Describe `boxes` on `image`. `only`: indices of the boxes to describe (caption, attributes, relation text,
        relations from them to their nearest boxes); every box still counts as a partner. The other boxes come back
        as empty RegionDescriptions. None: describe every box. `masks`: None, or per box None or a boolean (H, W)
        mask inside that box (MaskError otherwise). `demonstrations`: None, or per box a list of Demonstrations
        (model/demonstrations.py), nearest first as a lookup returns them, written before that box's caption and
        attribute questions with the nearest last."""
        asks = asks or Asks()
        with self._lock:  # one model, one call at a time (a worker is single-threaded anyway)
            image, boxes, grids, norm = self._regions(image, boxes, masks)
            targets = self._targets(only, len(boxes))
            questions = self._questions(targets, boxes, asks, self._shown(demonstrations, len(boxes)))
            timings = {"encode": 0.0, "answer": 0.0}
            if naive:
                answers: dict[int, object] = {}
                for r in range(len(boxes)):
                    mine = [i for i, q in enumerate(questions) if q.regions[0] == r]
                    if not mine:
                        continue
                    t0 = time.perf_counter()
                    enc = encode(self.model, image)
                    timings["encode"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    got = self._answer(enc, norm, [questions[i] for i in mine], asks.max_new_tokens, grids)
                    answers.update({mine[k]: v for k, v in enumerate(got)})
                    timings["answer"] += time.perf_counter() - t0
                answers_list = [answers[i] for i in range(len(questions))]
                hit = False
            else:
                t0 = time.perf_counter()
                enc, hit = self._encode_cached(image, image_key)
                timings["encode"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                answers_list = self._answer(enc, norm, questions, asks.max_new_tokens, grids)
                timings["answer"] = time.perf_counter() - t0
            return self._assemble(boxes, questions, answers_list, hit, timings)

    @torch.no_grad()
    def describe_many(self, requests: Sequence[DescribeRequest]) -> list[Description | RegionScribeError]:
        """Several `describe` calls in one batched pass: images not cached yet go through the vision tower and the
        LM's prefix together, then the questions of every request are decoded and ranked together. Returns, in
        order, each request's Description, or the RegionScribeError that request alone raised (an unreadable
        image, a bad box). A request with `extra` keyword arguments is answered by its own `describe` call."""
        out: list = [None] * len(requests)
        for i, r in enumerate(requests):
            if r.extra:
                try:
                    out[i] = self.describe(r.image, r.boxes, r.asks, image_key=r.image_key, only=r.only, masks=r.masks,
                                           demonstrations=r.demonstrations, **r.extra)
                except RegionScribeError as exc:
                    out[i] = exc
        with self._lock:
            batch = []  # (index, image, boxes, norm, questions, asks, mask grids)
            for i, r in enumerate(requests):
                if r.extra:
                    continue
                try:
                    image, boxes, grids, norm = self._regions(r.image, r.boxes, r.masks)
                    asks = r.asks or Asks()
                    questions = self._questions(self._targets(r.only, len(boxes)), boxes, asks,
                                                self._shown(r.demonstrations, len(boxes)))
                    batch.append((i, image, r.image_key, boxes, norm, questions, asks, grids))
                except RegionScribeError as exc:
                    out[i] = exc
            if not batch:
                return out
            t0 = time.perf_counter()
            encoded = self._encode_many([(image, key) for _, image, key, *_ in batch])
            t1 = time.perf_counter()
            answers = answer_many(self.model, [enc for enc, _ in encoded], [b[4] for b in batch], [b[5] for b in batch],
                                        [b[6].max_new_tokens for b in batch], [b[7] for b in batch])
            timings = {"encode": t1 - t0, "answer": time.perf_counter() - t1, "batch": float(len(batch))}
            for (i, _, _, boxes, _, questions, *_), (_, hit), got in zip(batch, encoded, answers):
                out[i] = self._assemble(boxes, questions, got, hit, dict(timings))
        return out

    @torch.no_grad()
    def ask(self, image: Image.Image | bytes, boxes: list[Box],
            questions: list[tuple[str, list[int], list[str] | None]], image_key: str | None = None,
            masks: Sequence | None = None) -> list:
        """Free questions about regions, all answered in one batched pass over one image.

        Each question is (text, region indices, candidates). The text mentions its regions as `region1 <bbox>`,
        `region2 <bbox>`... in the order of its indices. With candidates the answer is [(candidate, probability)]
        sorted by probability (log-likelihood ranking); without, it is (generated text, confidence). `masks` as in
        `describe`.
        """
        with self._lock:
            image, boxes, grids, norm = self._regions(image, boxes, masks)
            qs = []
            for text, regions, candidates in questions:
                if text.count(BBOX) != len(regions):
                    raise PlaceholderError(f"{text.count(BBOX)} <bbox> in {text!r} but {len(regions)} regions")
                if any(not 0 <= r < len(boxes) for r in regions):
                    raise BoxError(f"question {text!r} names a region index outside 0..{len(boxes) - 1}")
                qs.append(Question("free", list(regions), text, list(candidates) if candidates else None))
            enc, _ = self._encode_cached(image, image_key)
            answers = self._answer(enc, norm, qs, max_new_tokens=48, grids=grids)
            return [sorted(a, key=lambda kv: -kv[1]) if q.candidates else a for q, a in zip(qs, answers)]

    def _regions(self, image: Image.Image | bytes, boxes: list[Box], masks: Sequence | None
                 ) -> tuple[Image.Image, list[Box], list[torch.Tensor | None] | None, torch.Tensor]:
        """A call's image decoded, its boxes checked (clamped), its masks checked as grids (None when no box has
        one) and its boxes normalised on the model's device."""
        image = image if isinstance(image, Image.Image) else load_image(image)
        w, h = image.size
        boxes = check_boxes(boxes, w, h)
        grids = self._mask_grids(masks, boxes, w, h)
        return image, boxes, grids, normalise_boxes(boxes, w, h).to(self.model.device)

    def _mask_grids(self, masks: Sequence | None, boxes: list[Box], w: int, h: int) -> list[torch.Tensor | None] | None:
        """Checked masks as the region encoder's grids (None when no region has one)."""
        checked = check_masks(masks, boxes, w, h)
        if all(m is None for m in checked):
            return None
        size = self.model.config.image_size
        return [None if m is None else mask_grid(m, size).to(self.model.device) for m in checked]

    @staticmethod
    def _targets(only: Sequence[int] | None, n: int) -> list[int]:
        if only is None:
            return list(range(n))
        if any(isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < n for r in only):
            raise BoxError(f"`only` names boxes {list(only)!r}; there are {n} boxes (indices 0..{n - 1})")
        return sorted(set(only))

    @torch.no_grad()
    def region_tokens(self, image: Image.Image | bytes, boxes: list[Box], masks: Sequence | None = None,
                      image_key: str | None = None) -> np.ndarray:
        """The region tokens of `boxes` (float32 [n, hidden]) as this model version computes them: what a
        demonstration carries, and what finds the demonstrations nearest to a box. The image's encoding is cached
        as `describe`'s is."""
        if not self.model.uses_region_features:
            raise DemonstrationError("region tokens need region features (region_format 'features')")
        with self._lock:
            image, boxes, grids, norm = self._regions(image, boxes, masks)
            enc, _ = self._encode_cached(image, image_key)
            tokens = self.model.region_tokens(enc.features, [norm], None if grids is None else [grids])[0]
            return tokens.float().cpu().numpy()

    def _shown(self, demonstrations: Sequence | None, n: int) -> list[tuple[str, torch.Tensor] | None] | None:
        """Per box, its demonstrations as (the block of text before its questions, their tokens), or None."""
        if demonstrations is None:
            return None
        if len(demonstrations) != n:
            raise DemonstrationError(f"demonstrations for {len(demonstrations)} boxes, but there are {n} boxes "
                                     "(one list per box, empty for none)")
        if any(demonstrations) and not self.model.uses_region_features:
            raise DemonstrationError("demonstrations need region features (region_format 'features')")
        hidden = self.model.lm.config.hidden_size
        out: list[tuple[str, torch.Tensor] | None] = []
        for b, demos in enumerate(demonstrations):
            if not demos:
                out.append(None)
                continue
            tokens = []
            for d in demos:
                t = torch.as_tensor(np.asarray(d.token, dtype=np.float32) if not isinstance(d.token, torch.Tensor)
                                    else d.token).float()
                if t.shape != (hidden,) or not torch.isfinite(t).all():
                    raise DemonstrationError(f"box {b}: a demonstration's token has shape {tuple(t.shape)}; this "
                                             f"model's region tokens are ({hidden},) finite numbers")
                tokens.append(t)
            # nearest first as given; written nearest last, next to the question (as training wrote them)
            text = demonstration_block([(d.caption, d.attributes) for d in demos[::-1]])
            out.append((text, torch.stack(tokens[::-1]).to(self.model.device)))
        return out

    def _questions(self, targets: list[int], boxes: list[Box], asks: Asks,
                   shown: list[tuple[str, torch.Tensor] | None] | None = None) -> list[Question]:
        qs: list[Question] = []
        for r in targets:
            text, tokens = shown[r] if shown and shown[r] else ("", None)
            if asks.caption:
                qs.append(Question("caption", [r], text + CAPTION_PROMPT, shown=tokens, block=text))
            if asks.detailed:
                qs.append(Question("detailed", [r], text + DETAILED_PROMPT, shown=tokens, block=text))
            for name, values in asks.attributes.items():
                if values:
                    qs.append(Question("attribute", [r], text + ATTRIBUTE_PROMPT.format(name=name), list(values),
                                       name, shown=tokens, block=text))
        if len(boxes) > 1 and (asks.relation_labels or asks.relation_text):
            for r in targets:
                partners = self._partners(r, boxes)  # among all the boxes, described or not
                for p in partners:
                    for label in asks.relation_labels:
                        qs.append(Question("yesno", [r, p], YESNO_PROMPT.format(label=label), ["yes", "no"],
                                            label))
                if asks.relation_text:
                    qs.append(Question("relation_text", [r, partners[0]], RELATION_TEXT_PROMPT))
        return qs

    def _partners(self, r: int, boxes: list[Box]) -> list[int]:
        def centre(b):
            return ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
        cx, cy = centre(boxes[r])
        others = sorted((math.hypot(centre(b)[0] - cx, centre(b)[1] - cy), j) for j, b in enumerate(boxes) if j != r)
        return [j for _, j in others[: self.max_relation_partners]]

    # ------------------------------------------------------------------------------------------------ encoding
    def _image_key(self, image: Image.Image) -> str:
        digest = hashlib.sha1(image.tobytes())
        digest.update(f"{image.size}".encode())
        return digest.hexdigest()

    def _encode_cached(self, image: Image.Image, image_key: str | None) -> tuple[EncodedImage, bool]:
        key = image_key or self._image_key(image)
        if key in self._cache:
            self._cache.move_to_end(key)
            self.hits += 1
            return self._cache[key], True
        self.misses += 1
        enc = encode(self.model, image)
        self._cache[key] = enc
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return enc, False

    @torch.no_grad()
    def encode_images(self, items: Sequence[tuple[Image.Image | bytes, str | None]]) -> None:
        """Encode the images (with their cache keys, or None) not cached yet in one batch, into the cache: for a
        caller that asks something of each image (`region_tokens`) before one `describe_many` over them all."""
        with self._lock:
            self._encode_many([(i if isinstance(i, Image.Image) else load_image(i), key) for i, key in items])

    def _encode_many(self, items: list[tuple[Image.Image, str | None]]) -> list[tuple[EncodedImage, bool]]:
        """Encodings of several images (with whether each was already there: cached, or earlier in `items`); those
        not cached go through the vision tower and the LM's prefix in one batch, then into the cache."""
        keys = [key or self._image_key(image) for image, key in items]
        found: dict[str, EncodedImage] = {}
        todo: dict[str, Image.Image] = {}
        for (image, _), key in zip(items, keys):
            if key in self._cache:
                self._cache.move_to_end(key)
                found[key] = self._cache[key]
            elif key not in todo:
                todo[key] = image
        if todo:
            fresh = encode_batch(self.model, list(todo.values()))
            for key, enc in zip(todo, fresh):
                found[key] = self._cache[key] = enc
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        out, seen = [], set()
        for key in keys:
            hit = key not in todo or key in seen
            seen.add(key)
            self.hits, self.misses = self.hits + hit, self.misses + (not hit)
            out.append((found[key], hit))
        return out

    # ------------------------------------------------------------------------------------------------ answering
    def _answer(self, enc: EncodedImage, norm: torch.Tensor, questions: list[Question], max_new_tokens: int,
                grids: list[torch.Tensor | None] | None = None) -> list:
        return answer_many(self.model, [enc], [norm], [questions], [max_new_tokens], [grids])[0]

    def _assemble(self, boxes: list[Box], questions: list[Question], answers: list, hit: bool,
                  timings: dict[str, float]) -> Description:
        regions = [RegionDescription(box=tuple(b)) for b in boxes]
        relations: list[Relation] = []
        for q, a in zip(questions, answers):
            reg = regions[q.regions[0]]
            if q.kind == "caption":
                reg.caption, reg.caption_confidence = a
            elif q.kind == "detailed":
                reg.detailed = a[0]
            elif q.kind == "attribute":
                reg.attributes[q.key] = sorted(a, key=lambda kv: -kv[1])
            elif q.kind == "relation_text":
                reg.relation_text, reg.relation_partner = a[0], q.regions[1]
            elif q.kind == "yesno":
                p_yes = dict(a)["yes"]
                if p_yes >= self.relation_threshold:
                    relations.append(Relation(q.regions[0], q.regions[1], q.key, p_yes))
        for reg in regions:
            if self.agree_caption and reg.caption and reg.attributes:
                reg.caption = agree(reg.caption, reg.attributes)
            parts = ([reg.caption_confidence] if reg.caption is not None else []) + \
                    [v[0][1] for v in reg.attributes.values() if v]
            reg.confidence = math.exp(sum(math.log(max(p, 1e-9)) for p in parts) / len(parts)) if parts else 0.0
        return Description(regions, relations, self.model_version, timings, hit)
