"""The batched pass under RegionDescriber: images encoded with their shared prompt prefix, and questions about their
regions answered together.

    encode / encode_batch(model, images) -> EncodedImage    vision tower, fused pyramid, image tokens, and the LM run over
                                                       the shared prefix (system prompt + image tokens)
    answer_many(model, encs, norms, questions, ...)    every question about every image in one batch on top of its
                                                       image's prefix: captions decoded greedily together, candidates
                                                       ranked by log-likelihood together

A Question is one question of that batch: its kind, the regions it mentions (indices into the image's boxes), its
text with one `<bbox>` per region, and for the ranking kinds its candidates. Where the LM's attention takes a 4-D
mask, a batch row is an image: its prefix once, its questions, answers and candidates as branches after it
(model/branches.py), the questions' openings (words before the first `<bbox>`) kept with the encoding for the next
boxes. Otherwise a row is a question with its own copy of the prefix (model/generation.py). The describer
(model/describer.py) builds the questions, caches the encodings and assembles the answers into a Description.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch
from PIL import Image

from regionscribe.model import branches
from regionscribe.model import conversation as conv
from regionscribe.model.generation import State, extend, greedy, last_logits, rank
from regionscribe.model.tensors import pixel_values
from regionscribe.model.modeling import ImageFeatures, RegionScribeModel
from regionscribe.model.prompts import BBOX
from regionscribe.model.vpgc import Prompting, prompting


_TOKENS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {(kind, text): ids}


def _ids(tok, kind: str, text: str) -> list[int]:
    """conv.question_ids (kind "question"), conv.answer_ids (kind "answer") or the text's own tokens (kind "block"),
    remembered per tokenizer: every pass asks the same prompts and candidates again."""
    memo = _TOKENS.setdefault(tok, {})
    key = (kind, text)
    if key not in memo:
        if len(memo) >= 4096:  # free questions (`ask`) can be anything
            memo.clear()
        memo[key] = (conv.question_ids(tok, text, first=True) if kind == "question" else
                     conv.answer_ids(tok, text) if kind == "answer" else tok(text, add_special_tokens=False)["input_ids"])
    return memo[key]


@dataclass
class Question:
    kind: str  # caption | detailed | attribute | yesno | relation_text
    regions: list[int]
    text: str
    candidates: list[str] | None = None
    key: str | None = None  # attribute name or relation label
    # the region tokens of the demonstrations written at the start of `text` (model/demonstrations.py), [d, hidden]:
    # they fill its first `<bbox>` placeholders, then come the regions'
    shown: torch.Tensor | None = None
    block: str = ""  # their text (model/demonstrations.py's block), which `text` starts with


@dataclass
class EncodedImage:
    features: ImageFeatures
    prefix: State
    # keys and values of question openings after this prefix (a question's tokens before its first <bbox>: the same
    # for every box), per layer [heads, n, head_dim]; filled by the branch path of answer_many as it meets them
    heads: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

MAX_HEADS = 32  # question openings kept per image (free questions can open any way)


def encode_batch(model: RegionScribeModel, images: list[Image.Image]) -> list[EncodedImage]:
    """The vision tower and the shared prefix (system prompt + image tokens) for several images at once."""
    m = model
    cfg = m.config
    pv = torch.stack([pixel_values(im, cfg.image_size, cfg.image_mean, cfg.image_std) for im in images]).to(m.device)
    feats = m.encode_images(pv)
    n = len(images)
    ids = torch.tensor([conv.prefix_ids(m.tokenizer, m.n_image_tokens, m.system)], device=m.device).expand(n, -1)
    emb = m.embed(ids, feats.image_tokens, [ids.new_zeros(0, 1)] * n)
    state, _ = extend(m.lm, State.empty(n, m.device), emb, torch.full((n,), ids.shape[1], device=m.device))
    return [EncodedImage(feats.select(torch.tensor([b], device=m.device)), state.select(torch.tensor([b], device=m.device)))
            for b in range(n)]


def encode(model: RegionScribeModel, image: Image.Image) -> EncodedImage:
    m = model
    cfg = m.config
    pv = pixel_values(image, cfg.image_size, cfg.image_mean, cfg.image_std)[None].to(m.device)
    feats = m.encode_images(pv)
    ids = torch.tensor([conv.prefix_ids(m.tokenizer, m.n_image_tokens, m.system)], device=m.device)
    emb = m.embed(ids, feats.image_tokens, [ids.new_zeros(0, 1)])
    state, _ = extend(m.lm, State.empty(1, m.device), emb, torch.tensor([ids.shape[1]], device=m.device))
    return EncodedImage(feats, state)


def answer_many(model: RegionScribeModel, encs: list[EncodedImage], norms: list[torch.Tensor],
                questions: list[list[Question]], max_new_tokens: list[int],
                grids: list[list[torch.Tensor | None] | None] | None = None) -> list[list]:
    """Answers to the questions about each image (encs[k], boxes norms[k], per box None or a mask grid in
    grids[k]), all in one right-padded batch: captions are decoded together (up to each request's max_new_tokens,
    stopping at </s> or the config's stop string) and candidates ranked together.

    Where the LM allows (model/branches.py's `supported`), a batch row is an image: its prefix once, its questions,
    answers and candidates as branches after it. Otherwise a row is a question with its own copy of its image's
    prefix (model/generation.py), a candidate row likewise, and one greedy pass runs per distinct max_new_tokens."""
    out: list[list] = [[None] * len(qs) for qs in questions]
    active = [k for k, qs in enumerate(questions) if qs]
    if not active:
        return out
    m = model
    tok = m.tokenizer
    device = m.device
    if len(active) == 1:
        features = encs[active[0]].features
    else:
        features = ImageFeatures([torch.cat(levels) for levels in zip(*(encs[k].features.levels for k in active))],
                                 None)
    masks = None
    if grids is not None and any(grids[k] is not None for k in active):
        masks = [grids[k] if grids[k] is not None else [None] * len(norms[k]) for k in active]
    regions = m.region_tokens(features, [norms[k] for k in active], masks)
    # a question about two or more regions sees their boxes unless the config says masks (config.relation_regions)
    paired = regions if masks is None or m.config.relation_regions == "mask" else \
        m.region_tokens(features, [norms[k] for k in active], None)
    rows, region_rows, slots, owners = [], [], [], []
    for slot, k in enumerate(active):
        for j, q in enumerate(questions[k]):
            text = q.text
            if not m.uses_region_features:
                for r in q.regions:
                    text = text.replace(BBOX, conv.box_as_text(norms[k][r].tolist()), 1)
            rows.append(_ids(tok, "question", text))
            tokens = paired[slot] if len(q.regions) > 1 else regions[slot]
            mine = tokens[q.regions] if m.uses_region_features else tokens.new_zeros(0, tokens.shape[1])
            region_rows.append(mine if q.shown is None else torch.cat([q.shown.to(mine.dtype), mine]))
            slots.append(slot)
            owners.append((k, j))
    candidates = {i: [_ids(tok, "answer", c) for c in questions[k][j].candidates]
                  for i, (k, j) in enumerate(owners) if questions[k][j].candidates is not None}
    longest = encs[active[0]].prefix.mask.shape[1] + max(  # the furthest position a question's answer reaches
        len(rows[i]) + (max((len(c) for c in candidates[i]), default=0) if i in candidates else max_new_tokens[k])
        for i, (k, _) in enumerate(owners))
    if branches.supported(m.lm, longest):
        return _answer_in_branches(m, encs, active, rows, region_rows, owners, questions, candidates,
                                   max_new_tokens, out)
    prefix = State.concat([encs[k].prefix for k in active])  # one row per question, each with a copy of its prefix
    lengths = torch.tensor([len(r) for r in rows], device=device)
    ids = torch.full((len(rows), int(lengths.max())), tok.pad_token_id, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    emb = m.embed(ids, None, region_rows)
    context = _prompting(m, ids, [(i, 0, len(r) - 1, encs[owners[i][0]], region_rows[i], _shown(questions, owners[i]))
                                  for i, r in enumerate(rows)])
    with m.prompts(context):
        state, logits = extend(m.lm, prefix.select(torch.tensor(slots, dtype=torch.long, device=device)), emb,
                               lengths)
    first = last_logits(logits, lengths)
    embed_tokens = m.lm.get_input_embeddings()
    stop = m.config.stop_string
    ranked = list(candidates)
    for limit in sorted({max_new_tokens[k] for k in active}):
        gen = [i for i, (k, _) in enumerate(owners) if i not in candidates and max_new_tokens[k] == limit]
        if not gen:
            continue
        index = torch.tensor(gen, device=device)
        g = greedy(m.lm, embed_tokens, state.select(index), first.index_select(0, index), {tok.eos_token_id},
                   limit, _stop_when(tok, stop))
        for n, i in enumerate(gen):
            k, j = owners[i]
            out[k][j] = _caption(tok, stop, g.tokens[n], g.mean_logprob[n], g.stopped[n])
    if ranked:
        index = torch.tensor(ranked, device=device)
        scores = rank(m.lm, embed_tokens, state.select(index), first.index_select(0, index),
                      [candidates[i] for i in ranked])
        for n, i in enumerate(ranked):
            k, j = owners[i]
            out[k][j] = _ranked(questions[k][j].candidates, scores[n])
    return out


def _prompting(m: RegionScribeModel, ids: torch.Tensor,
               questions: list[tuple[int, int, int, EncodedImage, torch.Tensor, int]]) -> Prompting | None:
    """VPG-C's view of one LM call (model/vpgc.py), when the model has it on: per question (row, first and last
    column of its tokens in `ids`, its image's encoding, its region tokens, how many of the `<bbox>` in those columns
    are demonstrations'), its own region tokens are prompted from its last token with its image's tokens and all its
    region tokens as memory."""
    if not m.prompting_on:
        return None
    groups = []
    for row, start, end, enc, tokens, skip in questions:
        image = enc.features.image_tokens
        groups.append((row, start, end, torch.cat(([image[0]] if image is not None else []) + [tokens]), skip))
    return prompting(ids, m.ids.bbox, groups)


def _shown(questions: list[list[Question]], owner: tuple[int, int]) -> int:
    q = questions[owner[0]][owner[1]]
    return 0 if q.shown is None else len(q.shown)


def _block_length(tok, ids: list[int], q: Question) -> int:
    """How many of a question's first tokens are its demonstrations' block (0 without, or where the block's own
    tokens are not where the question's start)."""
    if q.shown is None or not q.block:
        return 0
    block = _ids(tok, "block", q.block)
    return len(block) if ids[: len(block)] == block else 0


def _words(head: tuple) -> tuple[int, ...]:
    """An opening's token ids (a demonstration block's key holds two markers before them)."""
    return head[2:] if head and head[0] == "shown" else head


def _stop_when(tok, stop: str | None):
    """Whether greedy decoding may stop early: the config's stop string appeared in the last tokens."""
    return (lambda toks: stop in tok.decode(toks[-8:], skip_special_tokens=True)) if stop else None


def _caption(tok, stop: str | None, tokens: list[int], mean_logprob: float, stopped: bool) -> tuple[str, float]:
    """A generated answer and its confidence: the mean token probability, halved when it ran out of tokens."""
    text = tok.decode(tokens, skip_special_tokens=True)
    text = (text.split(stop)[0] if stop else text).strip()
    return text, math.exp(mean_logprob) if stopped else 0.5 * math.exp(mean_logprob)


def _ranked(candidates: list[str], scores: list[float]) -> list[tuple[str, float]]:
    """Candidates with their probabilities: the softmax of their total log-likelihoods."""
    return list(zip(candidates, torch.softmax(torch.tensor(scores, dtype=torch.float64), 0).tolist()))


def _answer_in_branches(m: RegionScribeModel, encs: list[EncodedImage], active: list[int], rows: list[list[int]],
                        region_rows: list[torch.Tensor], owners: list[tuple[int, int]],
                        questions: list[list[Question]], candidates: dict[int, list[list[int]]],
                        max_new_tokens: list[int], out: list[list]) -> list[list]:
    """answer_many's LM work with one batch row per image (model/branches.py): the row holds the image's prefix
    once, then its questions as branches; captions grow their branch, candidates branch off theirs.

    A question's opening (its tokens before its first <bbox>) depends on the image and the words alone: it is one
    branch per row however many questions open so, and its keys and values are kept with the image's encoding
    (`EncodedImage.heads`), so the next boxes on the image (the next requests) start after it."""
    tok = m.tokenizer
    row_of: dict[int, int] = {}  # id(EncodedImage) -> row: requests about one image share its row
    encodings: list[EncodedImage] = []
    for k in active:
        if id(encs[k]) not in row_of:
            row_of[id(encs[k])] = len(encodings)
            encodings.append(encs[k])
    tree = branches.Tree.start([e.prefix for e in encodings])
    per_row: list[list[int]] = [[] for _ in encodings]  # question indices (into rows) of each row
    for i, (k, _) in enumerate(owners):
        per_row[row_of[id(encs[k])]].append(i)
    # a question's opening: its words before its first <bbox>, or with demonstrations their block (one branch for
    # every question of a region with the same demonstrations; keyed by their tokens too, and not kept)
    cut, opening, rest_regions = [], [], []
    block_regions: dict[tuple, torch.Tensor] = {}
    for i, r in enumerate(rows):
        q = questions[owners[i][0]][owners[i][1]]
        n = _block_length(tok, r, q)
        if n:
            cut.append(n)
            opening.append(("shown", id(q.shown), *r[:n]))
            block_regions[opening[-1]] = q.shown.to(region_rows[i].dtype)
            rest_regions.append(region_rows[i][len(q.shown):])
        else:
            cut.append(r.index(m.ids.bbox) if m.ids.bbox in r else 0)
            opening.append(tuple(r[: cut[-1]]))
            rest_regions.append(region_rows[i])
    openings: list[dict[tuple, int]] = [{} for _ in encodings]  # per row: opening -> its branch
    kept: list[list] = [[] for _ in encodings]  # per row: (branch, keys and values) of openings seen before
    fresh: list[list[tuple[int, tuple[int, ...]]]] = [[] for _ in encodings]  # per row: (branch, opening)
    for r, mine in enumerate(per_row):
        for i in mine:
            head = opening[i]
            if head and head not in openings[r]:
                b = openings[r][head] = tree.branch(r)
                if head not in block_regions and head in encodings[r].heads:
                    kept[r].append((b, encodings[r].heads[head]))
                else:
                    fresh[r].append((b, head))
    gen = [i for i in range(len(owners)) if i not in candidates]
    ranked = list(candidates)
    width = max(sum(len(_words(h)) for _, h in fresh[r]) + sum(len(rows[i]) - cut[i] for i in mine)
                for r, mine in enumerate(per_row))
    generating = [sum(1 for i in mine if i not in candidates) for mine in per_row]
    tree.reserve(tree.owner.shape[1] + max(sum(kv[0][0].shape[1] for _, kv in row) for row in kept) + width
                 + max(n + sum(len(c) - 1 for i in mine if i in candidates for c in candidates[i])
                       for n, mine in zip(generating, per_row))
                 + max(generating) * max([max_new_tokens[owners[i][0]] - 1 for i in gen], default=0))
    branches.attach(tree, kept)
    ids = torch.full((len(encodings), width), tok.pad_token_id, dtype=torch.long)
    named, ends, regions, branch_of = [], [(0, 0)] * len(rows), [], [0] * len(rows)
    for r, mine in enumerate(per_row):
        col, names = 0, []
        found = []  # the row's region tokens in the order of its <bbox>: demonstration blocks, then questions
        for b, head in fresh[r]:  # a fresh opening's tokens come before the questions that continue it
            words = _words(head)
            ids[r, col: col + len(words)] = torch.tensor(words)
            names += [b] * len(words)
            col += len(words)
            if head in block_regions:
                found.append(block_regions[head])
        for i in mine:
            branch_of[i] = tree.branch(r, openings[r][opening[i]] if opening[i] else branches.ROOT)
            rest = rows[i][cut[i]:]
            ids[r, col: col + len(rest)] = torch.tensor(rest)
            names += [branch_of[i]] * len(rest)
            col += len(rest)
            ends[i] = (r, col - 1)
        named.append(names)
        regions.append(torch.cat(found + [rest_regions[i] for i in mine]))
    keep = sorted({c for _, c in ends})
    ids = ids.to(m.device)
    context = _prompting(m, ids, [(r, c - (len(rows[i]) - cut[i]) + 1, c, encs[owners[i][0]], region_rows[i],
                                   0 if len(rest_regions[i]) < len(region_rows[i]) else _shown(questions, owners[i]))
                                  for i, (r, c) in enumerate(ends)])
    with m.prompts(context):
        logits = branches.feed(m.lm, tree, m.embed(ids, None, regions), named, keep)
    first = logits[[r for r, _ in ends], [keep.index(c) for _, c in ends]]
    for r, made in enumerate(fresh):
        heads = encodings[r].heads
        for b, head in made:
            if head in block_regions:
                continue
            while len(heads) >= MAX_HEADS:
                heads.pop(next(iter(heads)))
            heads[head] = branches.taken(tree, r, b)
    stop = m.config.stop_string
    done = branches.decode(m.lm, m.lm.get_input_embeddings(), tree, first,
                           [(branch_of[i], i, max_new_tokens[owners[i][0]]) for i in gen],
                           [(branch_of[i], i, candidates[i]) for i in ranked], {tok.eos_token_id},
                           _stop_when(tok, stop))
    for n, i in enumerate(gen):
        k, j = owners[i]
        out[k][j] = _caption(tok, stop, done.tokens[n], done.mean_logprob[n], done.stopped[n])
    for n, i in enumerate(ranked):
        k, j = owners[i]
        out[k][j] = _ranked(questions[k][j].candidates, done.scores[n])
    return out
