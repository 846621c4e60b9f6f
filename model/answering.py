"""The batched pass under RegionDescriber: images encoded with their shared prompt prefix, and questions about their
regions answered together.

    encode / encode_batch(model, images) -> Encoded    vision tower, fused pyramid, image tokens, and the LM run over
                                                       the shared prefix (system prompt + image tokens)
    answer_many(model, encs, norms, questions, ...)    every question about every image in one right-padded batch on
                                                       top of its image's prefix: captions decoded greedily together,
                                                       candidates ranked by log-likelihood together

A Question is one row of that batch: its kind, the regions it mentions (indices into the image's boxes), its text
with one `<bbox>` per region, and for the ranking kinds its candidates. The describer (model/describer.py) builds the
questions, caches the encodings and assembles the answers into a Description.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

from regionscribe.model import conversation as conv
from regionscribe.model.generation import State, extend, greedy, last_logits, rank
from regionscribe.model.tensors import pixel_values
from regionscribe.model.modeling import ImageFeatures, RegionScribeModel
from regionscribe.model.prompts import BBOX


@dataclass
class Question:
    kind: str  # caption | detailed | attribute | yesno | relation_text
    regions: list[int]
    text: str
    candidates: list[str] | None = None
    key: str | None = None  # attribute name or relation label


@dataclass
class Encoded:
    features: ImageFeatures
    prefix: State


def encode_batch(model: RegionScribeModel, images: list[Image.Image]) -> list[Encoded]:
    """The vision tower and the shared prefix (system prompt + image tokens) for several images at once."""
    m = model
    cfg = m.config
    pv = torch.stack([pixel_values(im, cfg.image_size, cfg.image_mean, cfg.image_std) for im in images]).to(m.device)
    feats = m.encode_images(pv)
    n = len(images)
    ids = torch.tensor([conv.prefix_ids(m.tokenizer, m.n_image_tokens, m.system)], device=m.device).expand(n, -1)
    emb = m.embed(ids, feats.image_tokens, [ids.new_zeros(0, 1)] * n)
    state, _ = extend(m.lm, State.empty(n, m.device), emb, torch.full((n,), ids.shape[1], device=m.device))
    return [Encoded(feats.select(torch.tensor([b], device=m.device)), state.select(torch.tensor([b], device=m.device)))
            for b in range(n)]


def encode(model: RegionScribeModel, image: Image.Image) -> Encoded:
    m = model
    cfg = m.config
    pv = pixel_values(image, cfg.image_size, cfg.image_mean, cfg.image_std)[None].to(m.device)
    feats = m.encode_images(pv)
    ids = torch.tensor([conv.prefix_ids(m.tokenizer, m.n_image_tokens, m.system)], device=m.device)
    emb = m.embed(ids, feats.image_tokens, [ids.new_zeros(0, 1)])
    state, _ = extend(m.lm, State.empty(1, m.device), emb, torch.tensor([ids.shape[1]], device=m.device))
    return Encoded(feats, state)


def answer_many(model: RegionScribeModel, encs: list[Encoded], norms: list[torch.Tensor],
                questions: list[list[Question]], max_new_tokens: list[int],
                grids: list[list[torch.Tensor | None] | None] | None = None) -> list[list]:
    """Answers to the questions about each image (encs[k], boxes norms[k], per box None or a mask grid in
    grids[k]), all in one right-padded batch: each row continues its own image's prefix; captions are decoded
    together (one pass per distinct max_new_tokens, stopping at </s> or the config's stop string) and
    candidates ranked together."""
    out: list[list] = [[None] * len(qs) for qs in questions]
    active = [k for k, qs in enumerate(questions) if qs]
    if not active:
        return out
    m = model
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
                    text = text.replace(BBOX, conv.box_as_text(norms[k][r].tolist()), 1)
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
