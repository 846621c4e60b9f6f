"""RegionDescriber: the inference entry point. One image, many boxes, one batched pass.

    describe(image, boxes, asks, masks=None) -> Description

A region is a box, or a box with a mask (a boolean (H, W) array of the EXIF-corrected image; the box is its bounding
box): the region encoder then pools inside the mask (model/region_encoder.py). `masks` is None or a list aligned
with `boxes`, each entry None (the box itself) or a mask.

Work per call: the image is encoded once (vision tower, fused pyramid, image tokens) and the shared prompt prefix
(system prompt + image tokens) is run through the LM once; both are kept in an LRU cache keyed by image content, so
a second box on the same image re-encodes nothing. Every question about every region (captions, attributes,
relations) is then one right-padded batch on top of that prefix; captions are decoded greedily together, and
attribute/relation candidates are ranked by log-likelihood together.

`naive=True` is the baseline kept for honest speed comparisons: one region per pass, image re-encoded each time,
no shared prefix.

`describe_many(requests)` answers several calls at once (an inference worker's waiting jobs, regionscribe.backend.inference.jobs): the
vision tower and the LM's prefix run once over every image not cached yet, each image's prefix is shared by its
boxes' questions, and the questions of all requests are one batch for decoding and ranking. Each request gets its
own Description, or its own error (a bad box fails that request alone).

When a call asks for both a caption and attributes, what is served agrees (`agree_caption`, on by default): where
the caption names another value of an attribute than its ranking puts first (`disagreements`), the caption is
written with the top value. The ranking scores every allowed value; the greedy caption commits to one word as it
goes. Measured on the default's disagreements (README, "Caption and choices agree"), the ranking was right 8 times
and the caption once; weighing both by the LM's likelihood of each caption as well did worse (it sided with the
caption in cases the ranking had right).
"""
from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from regionscribe.model import conversation as conv
from regionscribe.model.asks import Asks, Box, Description, RegionDescription, Relation
from regionscribe.model.errors import BoxError, PlaceholderError, RegionScribeError
from regionscribe.model.generation import State, extend, greedy, last_logits, rank
from regionscribe.model.images import check_boxes, check_masks, load_image, mask_grid, normalise_boxes, pixel_values
from regionscribe.model.modeling import WEIGHTS, ImageFeatures, RegionScribeModel
from regionscribe.model.weights import SAFE_INDEX

DEFAULT_CHECKPOINT = Path(__file__).parent / "default"


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

@dataclass
class _Question:
    kind: str  # caption | detailed | attribute | yesno | relation_text
    regions: list[int]
    text: str
    candidates: list[str] | None = None
    key: str | None = None  # attribute name or relation label


@dataclass
class _Encoded:
    features: ImageFeatures
    prefix: State


class RegionDescriber:
    def __init__(self, model: RegionScribeModel, model_version: str, cache_size: int = 32,
                 relation_threshold: float = 0.5, max_relation_partners: int = 3, agree_caption: bool = True):
        self.model = model.eval()
        self.model_version = model_version
        self.agree_caption = agree_caption
        self.cache_size = cache_size
        self.relation_threshold = relation_threshold
        self.max_relation_partners = max_relation_partners
        self._cache: OrderedDict[str, _Encoded] = OrderedDict()
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

    @classmethod
    def from_config(cls, preset: str = "tiny", seed: int = 0, **kwargs) -> "RegionDescriber":
        """An untrained model of a preset (for tests and benchmarks of plumbing; its words are gibberish)."""
        from regionscribe.model.config import preset as make_preset
        from regionscribe.training.corpus import vocabulary_text
        from regionscribe.model.tokenizer import train_tokenizer

        torch.manual_seed(seed)
        model = RegionScribeModel(make_preset(preset), train_tokenizer(vocabulary_text()))
        return cls(model, f"{preset}-untrained-{seed}", **kwargs)

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
                 only: Sequence[int] | None = None, masks: Sequence | None = None) -> Description:
        """Describe `boxes` on `image`. `only`: indices of the boxes to describe (caption, attributes, relation text,
        relations from them to their nearest boxes); every box still counts as a partner. The other boxes come back
        as empty RegionDescriptions. None: describe every box. `masks`: None, or per box None or a boolean (H, W)
        mask inside that box (MaskError otherwise)."""
        asks = asks or Asks()
        with self._lock:  # one model, one call at a time (a worker is single-threaded anyway)
            image = image if isinstance(image, Image.Image) else load_image(image)
            w, h = image.size
            boxes = check_boxes(boxes, w, h)
            grids = self._mask_grids(masks, boxes, w, h)
            targets = self._targets(only, len(boxes))
            norm = normalise_boxes(boxes, w, h).to(self.model.device)
            questions = self._questions(targets, boxes, asks)
            timings = {"encode": 0.0, "answer": 0.0}
            if naive:
                answers: dict[int, object] = {}
                for r in range(len(boxes)):
                    mine = [i for i, q in enumerate(questions) if q.regions[0] == r]
                    if not mine:
                        continue
                    t0 = time.perf_counter()
                    enc = self._encode(image)
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
                    out[i] = self.describe(r.image, r.boxes, r.asks, image_key=r.image_key, only=r.only, **r.extra)
                except RegionScribeError as exc:
                    out[i] = exc
        with self._lock:
            batch = []  # (index, image, boxes, norm, questions, asks, mask grids)
            for i, r in enumerate(requests):
                if r.extra:
                    continue
                try:
                    image = r.image if isinstance(r.image, Image.Image) else load_image(r.image)
                    w, h = image.size
                    boxes = check_boxes(r.boxes, w, h)
                    grids = self._mask_grids(r.masks, boxes, w, h)
                    asks = r.asks or Asks()
                    questions = self._questions(self._targets(r.only, len(boxes)), boxes, asks)
                    batch.append((i, image, r.image_key, boxes, normalise_boxes(boxes, w, h).to(self.model.device),
                                  questions, asks, grids))
                except RegionScribeError as exc:
                    out[i] = exc
            if not batch:
                return out
            t0 = time.perf_counter()
            encoded = self._encode_many([(image, key) for _, image, key, *_ in batch])
            t1 = time.perf_counter()
            answers = self._answer_many([enc for enc, _ in encoded], [b[4] for b in batch], [b[5] for b in batch],
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
            image = image if isinstance(image, Image.Image) else load_image(image)
            w, h = image.size
            boxes = check_boxes(boxes, w, h)
            grids = self._mask_grids(masks, boxes, w, h)
            norm = normalise_boxes(boxes, w, h).to(self.model.device)
            qs = []
            for text, regions, candidates in questions:
                if text.count(conv.BBOX) != len(regions):
                    raise PlaceholderError(f"{text.count(conv.BBOX)} <bbox> in {text!r} but {len(regions)} regions")
                if any(not 0 <= r < len(boxes) for r in regions):
                    raise BoxError(f"question {text!r} names a region index outside 0..{len(boxes) - 1}")
                qs.append(_Question("free", list(regions), text, list(candidates) if candidates else None))
            enc, _ = self._encode_cached(image, image_key)
            answers = self._answer(enc, norm, qs, max_new_tokens=48, grids=grids)
            return [sorted(a, key=lambda kv: -kv[1]) if q.candidates else a for q, a in zip(qs, answers)]

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

    def _questions(self, targets: list[int], boxes: list[Box], asks: Asks) -> list[_Question]:
        qs: list[_Question] = []
        for r in targets:
            if asks.caption:
                qs.append(_Question("caption", [r], conv.CAPTION_PROMPT))
            if asks.detailed:
                qs.append(_Question("detailed", [r], conv.DETAILED_PROMPT))
            for name, values in asks.attributes.items():
                if values:
                    qs.append(_Question("attribute", [r], conv.ATTRIBUTE_PROMPT.format(name=name), list(values), name))
        if len(boxes) > 1 and (asks.relation_labels or asks.relation_text):
            for r in targets:
                partners = self._partners(r, boxes)  # among all the boxes, described or not
                for p in partners:
                    for label in asks.relation_labels:
                        qs.append(_Question("yesno", [r, p], conv.YESNO_PROMPT.format(label=label), ["yes", "no"],
                                            label))
                if asks.relation_text:
                    qs.append(_Question("relation_text", [r, partners[0]], conv.RELATION_TEXT_PROMPT))
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

    def _encode_cached(self, image: Image.Image, image_key: str | None) -> tuple[_Encoded, bool]:
        key = image_key or self._image_key(image)
        if key in self._cache:
            self._cache.move_to_end(key)
            self.hits += 1
            return self._cache[key], True
        self.misses += 1
        enc = self._encode(image)
        self._cache[key] = enc
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return enc, False

    def _encode_many(self, items: list[tuple[Image.Image, str | None]]) -> list[tuple[_Encoded, bool]]:
        """Encodings of several images (with whether each was already there: cached, or earlier in `items`); those
        not cached go through the vision tower and the LM's prefix in one batch, then into the cache."""
        keys = [key or self._image_key(image) for image, key in items]
        found: dict[str, _Encoded] = {}
        todo: dict[str, Image.Image] = {}
        for (image, _), key in zip(items, keys):
            if key in self._cache:
                self._cache.move_to_end(key)
                found[key] = self._cache[key]
            elif key not in todo:
                todo[key] = image
        if todo:
            fresh = self._encode_batch(list(todo.values()))
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

    def _encode_batch(self, images: list[Image.Image]) -> list[_Encoded]:
        """The vision tower and the shared prefix (system prompt + image tokens) for several images at once."""
        m = self.model
        cfg = m.config
        pv = torch.stack([pixel_values(im, cfg.image_size, cfg.image_mean, cfg.image_std) for im in images]).to(m.device)
        feats = m.encode_images(pv)
        n = len(images)
        ids = torch.tensor([conv.prefix_ids(m.tokenizer, m.n_image_tokens, m.system)], device=m.device).expand(n, -1)
        emb = m.embed(ids, feats.image_tokens, [ids.new_zeros(0, 1)] * n)
        state, _ = extend(m.lm, State.empty(n, m.device), emb, torch.full((n,), ids.shape[1], device=m.device))
        return [_Encoded(feats.select(torch.tensor([b], device=m.device)), state.select(torch.tensor([b], device=m.device)))
                for b in range(n)]

    def _encode(self, image: Image.Image) -> _Encoded:
        m = self.model
        cfg = m.config
        pv = pixel_values(image, cfg.image_size, cfg.image_mean, cfg.image_std)[None].to(m.device)
        feats = m.encode_images(pv)
        ids = torch.tensor([conv.prefix_ids(m.tokenizer, m.n_image_tokens, m.system)], device=m.device)
        emb = m.embed(ids, feats.image_tokens, [ids.new_zeros(0, 1)])
        state, _ = extend(m.lm, State.empty(1, m.device), emb, torch.tensor([ids.shape[1]], device=m.device))
        return _Encoded(feats, state)

    # ------------------------------------------------------------------------------------------------ answering
    def _answer(self, enc: _Encoded, norm: torch.Tensor, questions: list[_Question], max_new_tokens: int,
                grids: list[torch.Tensor | None] | None = None) -> list:
        return self._answer_many([enc], [norm], [questions], [max_new_tokens], [grids])[0]

    def _answer_many(self, encs: list[_Encoded], norms: list[torch.Tensor], questions: list[list[_Question]],
                     max_new_tokens: list[int], grids: list[list[torch.Tensor | None] | None] | None = None
                     ) -> list[list]:
        """Answers to the questions about each image (encs[k], boxes norms[k], per box None or a mask grid in
        grids[k]), all in one right-padded batch: each row continues its own image's prefix; captions are decoded
        together (one pass per distinct max_new_tokens, stopping at </s> or the config's stop string) and
        candidates ranked together."""
        out: list[list] = [[None] * len(qs) for qs in questions]
        active = [k for k, qs in enumerate(questions) if qs]
        if not active:
            return out
        m = self.model
        tok = m.tokenizer
        device = m.device
        prefix = State.concat([encs[k].prefix for k in active])
        if len(active) == 1:
            features = encs[active[0]].features
        else:
            features = ImageFeatures([torch.cat(levels) for levels in zip(*(encs[k].features.levels for k in active))],
                                     None)
        masks = None
        if grids is not None and any(grids[k] is not None for k in active):
            masks = [grids[k] if grids[k] is not None else [None] * len(norms[k]) for k in active]
        regions = m.region_tokens(features, [norms[k] for k in active], masks)
        rows, region_rows, slots, owners = [], [], [], []
        for slot, k in enumerate(active):
            for j, q in enumerate(questions[k]):
                text = q.text
                if not m.uses_region_features:
                    for r in q.regions:
                        text = text.replace(conv.BBOX, conv.box_as_text(norms[k][r].tolist()), 1)
                rows.append(conv.question_ids(tok, text, first=True))
                region_rows.append(regions[slot][q.regions] if m.uses_region_features
                                   else regions[slot].new_zeros(0, regions[slot].shape[1]))
                slots.append(slot)
                owners.append((k, j))
        lengths = torch.tensor([len(r) for r in rows], device=device)
        ids = torch.full((len(rows), int(lengths.max())), tok.pad_token_id, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        emb = m.embed(ids, None, region_rows)
        state, logits = extend(m.lm, prefix.select(torch.tensor(slots, dtype=torch.long, device=device)), emb, lengths)
        first = last_logits(logits, lengths)
        embed_tokens = m.lm.get_input_embeddings()
        stop = m.config.stop_string
        stop_when = (lambda toks: stop in tok.decode(toks[-8:], skip_special_tokens=True)) if stop else None
        ranked = [i for i, (k, j) in enumerate(owners) if questions[k][j].candidates is not None]
        for limit in sorted({max_new_tokens[k] for k in active}):
            gen = [i for i, (k, j) in enumerate(owners)
                   if questions[k][j].candidates is None and max_new_tokens[k] == limit]
            if not gen:
                continue
            index = torch.tensor(gen, device=device)
            g = greedy(m.lm, embed_tokens, state.select(index), first.index_select(0, index), {tok.eos_token_id},
                       limit, stop_when)
            for n, i in enumerate(gen):
                text = tok.decode(g.tokens[n], skip_special_tokens=True)
                text = (text.split(stop)[0] if stop else text).strip()
                k, j = owners[i]
                out[k][j] = (text, math.exp(g.mean_logprob[n]) if g.stopped[n] else 0.5 * math.exp(g.mean_logprob[n]))
        if ranked:
            index = torch.tensor(ranked, device=device)
            cands = [[conv.answer_ids(tok, c) for c in questions[owners[i][0]][owners[i][1]].candidates] for i in ranked]
            scores = rank(m.lm, embed_tokens, state.select(index), first.index_select(0, index), cands)
            for n, i in enumerate(ranked):
                k, j = owners[i]
                probs = torch.softmax(torch.tensor(scores[n], dtype=torch.float64), 0).tolist()
                out[k][j] = list(zip(questions[k][j].candidates, probs))
        return out

    def _assemble(self, boxes: list[Box], questions: list[_Question], answers: list, hit: bool,
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


def mentions(text: str, value: str) -> list[tuple[int, int]]:
    """Spans of `value` in `text` as a whole word or phrase, case-insensitive."""
    pattern = r"(?<![\w-])" + r"\s+".join(re.escape(w) for w in value.split()) + r"(?![\w-])"
    return [m.span() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]


@dataclass(frozen=True)
class Disagreement:
    """The caption names `named` (at `span`) where the attribute `attribute` ranks `top` first."""

    attribute: str
    span: tuple[int, int]
    named: str
    top: str

    def rewrite(self, caption: str) -> str:
        return caption[:self.span[0]] + self.top + caption[self.span[1]:]


def disagreements(caption: str, attributes: dict[str, list[tuple[str, float]]]) -> list[Disagreement]:
    """Where `caption` names another value than an attribute's top-ranked one (ranked best first).

    Only clear cases count: the caption names exactly one candidate of the attribute, once. A caption naming several
    (it speaks of more than the region) or none says nothing about it, and a word that two attributes claim (a shape
    and a shape family) is left alone."""
    spans_of = {name: [span for value, _ in ranked for span in mentions(caption, value)]
                for name, ranked in attributes.items()}
    found = []
    for name, ranked in attributes.items():
        named = {value: spans for value, _ in ranked if (spans := mentions(caption, value))}
        if len(named) != 1:
            continue
        (value, spans), = named.items()
        if len(spans) != 1 or value.lower() == ranked[0][0].lower():
            continue
        start, end = spans[0]
        if any(s < end and start < e for other, spans in spans_of.items() if other != name for s, e in spans):
            continue
        found.append(Disagreement(name, spans[0], value, ranked[0][0]))
    return found


def agree(caption: str, attributes: dict[str, list[tuple[str, float]]]) -> str:
    """`caption` written with each attribute's top-ranked value where it names another one (`disagreements`)."""
    for d in sorted(disagreements(caption, attributes), key=lambda d: -d.span[0]):  # right to left: spans stay valid
        caption = d.rewrite(caption)
    return caption


def checkpoint_version(path: Path) -> str:
    """The checkpoint's version: its recorded `version`, else its folder name and a hash of its weights."""
    import json

    meta = json.loads((path / "config.json").read_text()).get("metadata", {})
    if meta.get("version"):
        return str(meta["version"])
    digest = hashlib.sha1()
    # a sharded checkpoint is named by its index (every tensor name and the total size), not by hashing gigabytes
    with open(path / SAFE_INDEX if (path / SAFE_INDEX).is_file() else path / WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.name}-{digest.hexdigest()[:10]}"
