"""Branches: the sequences that continue one image's prompt prefix (its questions, their generated answers, the
candidate answers being ranked), packed into that image's one row of the batch, so the prefix's keys and values are
held once per image instead of copied into a row per question and per candidate.

    Tree.start(prefixes)                    one row per image, its prefix (system prompt + image tokens) as branch ROOT
    tree.branch(row, parent)                a new branch of a row, continuing `parent`'s positions
    feed(lm, tree, embeds, branch)          append a right-padded segment; branch[r] names each token's branch
    decode(lm, embed, tree, first, ...)     greedy answers and candidate log-likelihoods, every branch together

A token sees its row's prefix, its branch's ancestors and its own branch's earlier tokens; nothing else (not the
other questions in the row, not padding). That is a 4-D attention mask handed to the LM as is, with RoPE positions
given per token, so each branch sees exactly what it would see alone after the prefix (model/generation.py's one
row per question, which tests compare with). The LM is any HF causal LM driven by `inputs_embeds`; `supported(lm)`
says whether its attention takes such a mask (transformers' "sdpa" and "eager" do; flash attention does not), and
callers use model/generation.py otherwise.

The cache's layers (GrowingLayer) write new tokens into a buffer with room to grow, so a decoding step copies only
its own tokens (DynamicCache concatenates, copying the whole cache every step).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import Cache, DynamicLayer

from regionscribe.model.generation import State

ROOT = 0  # every row's prefix
PAD = -1  # padding: seen by no token


class GrowingLayer(DynamicLayer):
    """One layer's keys and values, [B, heads, capacity, head_dim] buffers holding `length` tokens; appending
    writes the new tokens in place (the buffers double when full). Returns views of the filled part."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.length = 0
        self._keys = self._values = None
        self.is_initialized = True

    def reserve(self, like: torch.Tensor, capacity: int) -> None:
        if self._keys is not None and capacity <= self._keys.shape[-2]:
            return
        shape = (*like.shape[:-2], capacity, like.shape[-1])
        keys, values = like.new_empty(shape), like.new_empty(shape)
        if self.length:
            keys[..., : self.length, :] = self._keys[..., : self.length, :]
            values[..., : self.length, :] = self._values[..., : self.length, :]
        self._keys, self._values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._keys is None or end > self._keys.shape[-2]:
            self.reserve(key_states, max(end, 2 * self.length))
        self._keys[..., self.length: end, :] = key_states
        self._values[..., self.length: end, :] = value_states
        self.length = end
        self.keys, self.values = self._keys[..., :end, :], self._values[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


def supported(lm, longest: int) -> bool:
    """Whether `lm` can run branches: its attention takes a 4-D mask as given, and its sliding window, if any, is
    longer than `longest` (the furthest RoPE position a branch reaches): the mask has no window in it."""
    config = lm.config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    window = getattr(config, "sliding_window", None)
    return window is None or longest < window


@dataclass
class Tree:
    """A batch of rows, each an image's prefix followed by its branches' tokens."""
    cache: Cache
    owner: torch.Tensor  # [B, L] the branch of each cached token (ROOT: the prefix, PAD: padding)
    parent: list[int] = field(default_factory=lambda: [ROOT])  # per branch; ROOT is its own parent
    row: list[int] = field(default_factory=lambda: [-1])  # per branch (ROOT is in every row)
    # per branch, the RoPE position of its next token; None until its first token, which continues its parent
    next_pos: list[int | None] = field(default_factory=lambda: [0])
    depth: int = 0  # the most ancestors below ROOT a branch has

    @classmethod
    def start(cls, prefixes: list[State]) -> "Tree":
        """Rows holding these prefixes (one-row states of one length with no padding, as model/answering.py's
        `encode` makes them; they stay unchanged)."""
        length = prefixes[0].mask.shape[1]
        if any(p.mask.shape != (1, length) or not bool(p.mask.all()) for p in prefixes):
            raise ValueError("branches start from one-row prefixes of one length without padding")
        cache = Cache(layer_class_to_replicate=GrowingLayer)
        for layers in zip(*(p.cache.layers for p in prefixes)):
            keys = torch.cat([layer.keys for layer in layers])
            values = torch.cat([layer.values for layer in layers])
            layer = GrowingLayer()
            layer.lazy_initialization(keys, values)
            layer.update(keys, values)
            cache.layers.append(layer)
        device = prefixes[0].mask.device
        owner = torch.full((len(prefixes), length), ROOT, dtype=torch.long, device=device)
        return cls(cache, owner, next_pos=[int(prefixes[0].next_pos[0])])

    def reserve(self, length: int) -> None:
        """Make room for rows of `length` tokens at once (else the buffers double as they fill)."""
        for layer in self.cache.layers:
            layer.reserve(layer.keys, length)

    def position(self, branch: int, n: int) -> int:
        """The position of `branch`'s next token, and move on by n."""
        if self.next_pos[branch] is None:
            self.next_pos[branch] = self.position(self.parent[branch], 0)
        pos = self.next_pos[branch]
        self.next_pos[branch] += n
        return pos

    def branch(self, row: int, parent: int = ROOT) -> int:
        self.parent.append(parent)
        self.row.append(row)
        self.next_pos.append(None)
        ancestors, p = 0, parent
        while p != ROOT:
            ancestors, p = ancestors + 1, self.parent[p]
        self.depth = max(self.depth, ancestors)
        return len(self.parent) - 1


@torch.no_grad()
def attach(tree: Tree, parts: list[list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]]]) -> None:
    """Append tokens whose keys and values were computed before (`taken`): parts[r] lists (branch, per layer
    (keys, values) [heads, n, head_dim]) for row r, each continuing its branch as `feed` would have."""
    lengths = [sum(kv[0][0].shape[1] for _, kv in row) for row in parts]
    width = max(lengths)
    if not width:
        return
    device = tree.owner.device
    owners = torch.full((len(parts), width), PAD, dtype=torch.long)
    for r, row in enumerate(parts):
        col = 0
        for x, kv in row:
            n = kv[0][0].shape[1]
            owners[r, col: col + n] = x
            tree.position(x, n)
            col += n
    for i, layer in enumerate(tree.cache.layers):
        sample = layer.keys
        keys = sample.new_zeros(len(parts), sample.shape[1], width, sample.shape[3])
        values = torch.zeros_like(keys)
        for r, row in enumerate(parts):
            if row:
                keys[r, :, : lengths[r]] = torch.cat([kv[i][0] for _, kv in row], 1)
                values[r, :, : lengths[r]] = torch.cat([kv[i][1] for _, kv in row], 1)
        layer.update(keys, values)
    tree.owner = torch.cat([tree.owner, owners.to(device)], 1)


def taken(tree: Tree, row: int, branch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of the keys and values of `branch`'s tokens in `row`, per layer [heads, n, head_dim], for `attach`."""
    cols = (tree.owner[row] == branch).nonzero().flatten()
    return [(layer.keys[row].index_select(1, cols), layer.values[row].index_select(1, cols))
            for layer in tree.cache.layers]


def _logits_to_keep(lm) -> bool:
    import inspect

    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@torch.no_grad()
def feed(lm, tree: Tree, embeds: torch.Tensor, branch: list[list[int]], keep: list[int] | None = None
         ) -> torch.Tensor:
    """Append the segment `embeds` [B, T, H] to the rows: row r's first len(branch[r]) tokens belong to those
    branches (each branch's tokens in order; the rest is padding). Returns the logits [B, T, V], or with `keep`
    (columns of the segment) only those columns' [B, len(keep), V], in keep's order."""
    b, t, _ = embeds.shape
    device = embeds.device
    owners = torch.full((b, t), PAD, dtype=torch.long)
    positions = torch.full((b, t), tree.next_pos[ROOT], dtype=torch.long)
    for r, names in enumerate(branch):
        pos = [tree.position(x, 1) for x in names]
        owners[r, : len(names)] = torch.tensor(names, dtype=torch.long)
        positions[r, : len(names)] = torch.tensor(pos, dtype=torch.long)
    owners, positions = owners.to(device), positions.to(device)
    keys = torch.cat([tree.owner, owners], 1)  # [B, L + T]
    past = tree.owner.shape[1]
    parent = torch.tensor(tree.parent, dtype=torch.long, device=device)
    seen = owners.clamp(min=ROOT)  # padding sees the prefix only (a row that sees nothing would be NaN)
    visible = (keys[:, None, :] == ROOT).expand(b, t, past + t).clone()
    for _ in range(tree.depth + 1):  # its branch, then each ancestor up to the prefix
        visible |= keys[:, None, :] == seen[:, :, None]
        seen = parent[seen]
    order = torch.arange(past + t, device=device)
    visible &= order[None, None, :] <= past + torch.arange(t, device=device)[None, :, None]
    mask = torch.zeros(b, 1, t, past + t, dtype=embeds.dtype, device=device)
    mask.masked_fill_(~visible[:, None], torch.finfo(embeds.dtype).min)
    extra = {}
    if keep is not None and _logits_to_keep(lm):
        extra["logits_to_keep"] = torch.tensor(keep, dtype=torch.long, device=device)
    out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=tree.cache, use_cache=True,
             **extra)
    tree.owner = keys
    if keep is not None and not extra:
        return out.logits[:, keep]
    return out.logits


@dataclass
class Decoded:
    tokens: list[list[int]]  # per generating branch, without the stop token
    mean_logprob: list[float]  # over its generated tokens, the stop token included
    stopped: list[bool]  # whether it produced the stop token (or met `stop_when`) within its limit
    scores: list[list[float]]  # per ranked branch, the total log-probability of each candidate


def _step(lm, embed: Callable[[torch.Tensor], torch.Tensor], tree: Tree, segment: list[list[tuple[int, int]]]
          ) -> torch.Tensor:
    """feed() the tokens segment[r] = [(branch, token id), ...] to each row; returns the logits [B, T, V]."""
    width = max(len(row) for row in segment)
    ids = torch.zeros(len(segment), width, dtype=torch.long)
    for r, row in enumerate(segment):
        if row:
            ids[r, : len(row)] = torch.tensor([t for _, t in row])
    return feed(lm, tree, embed(ids.to(tree.owner.device)), [[b for b, _ in row] for row in segment])


@torch.no_grad()
def decode(lm, embed: Callable[[torch.Tensor], torch.Tensor], tree: Tree, first: torch.Tensor,
           generate: list[tuple[int, int, int]], rank: list[tuple[int, int, list[list[int]]]], stop_ids: set[int],
           stop_when: Callable[[list[int]], bool] | None = None) -> Decoded:
    """Greedy answers and candidate scores for branches whose next-token logits are rows of `first` [N, V].

    generate: (branch, its row of `first`, max new tokens): greedy decoding, as model/generation.py's `greedy`.
    rank: (branch, its row of `first`, candidates): each candidate token sequence (ending with the stop token)
    scored as model/generation.py's `rank` does, from its own branch under `branch`. The candidates go in with the
    first generated tokens; each later step feeds one token per branch still generating."""
    device = first.device
    first_logp = torch.log_softmax(first.float(), -1)
    n = len(generate)
    tokens: list[list[int]] = [[] for _ in range(n)]
    logp_sum, count, stopped = [0.0] * n, [0] * n, [False] * n
    scores: list[list[float]] = [[] for _ in rank]
    segment: list[list[tuple[int, int]]] = [[] for _ in range(tree.owner.shape[0])]
    owner, heads, fed = [], [], []  # per candidate: its ranked branch, (row of `first`, first token); per fed token:
    for g, (parent, at, cands) in enumerate(rank):  # (candidate, row, column, the token it predicts)
        row = tree.row[parent]
        for c in cands:
            if len(c) < 2:
                raise ValueError("each candidate needs at least one token plus the stop token")
            b = tree.branch(row, parent)
            for x, following in zip(c[:-1], c[1:]):
                fed.append((len(owner), row, len(segment[row]), following))
                segment[row].append((b, x))
            owner.append(g)
            heads.append((at, c[0]))
    live = [g for g in range(n) if generate[g][2] > 0]
    logits = first[[generate[g][1] for g in live]]  # each live branch's next-token logits
    while True:
        where = []  # (row, column) of each branch still generating, in the next segment
        if live:
            logp = torch.log_softmax(logits.float(), -1)
            nxt = logp.argmax(-1)
            chosen = logp.gather(1, nxt[:, None]).squeeze(1).double().tolist()
            still = []
            for g, t, lp in zip(live, nxt.tolist(), chosen):
                logp_sum[g] += lp
                count[g] += 1
                if t in stop_ids:
                    stopped[g] = True
                    continue
                tokens[g].append(t)
                if stop_when is not None and stop_when(tokens[g]):
                    stopped[g] = True
                elif count[g] < generate[g][2]:
                    row = tree.row[generate[g][0]]
                    where.append((row, len(segment[row])))
                    segment[row].append((generate[g][0], t))
                    still.append(g)
            live = still
        if not any(segment):
            break
        out = _step(lm, embed, tree, segment)
        if fed:
            picked = torch.log_softmax(out[[r for _, r, _, _ in fed], [c for _, _, c, _ in fed]].float(), -1)
            picked = picked.gather(1, torch.tensor([[t] for *_, t in fed], device=device)).squeeze(1)
            total = first_logp[[a for a, _ in heads], [t for _, t in heads]]
            total = total.index_add(0, torch.tensor([k for k, *_ in fed], device=device), picked).tolist()
            for g, s in zip(owner, total):
                scores[g].append(s)
            fed = []
        if not live:
            break
        logits = out[[r for r, _ in where], [c for _, c in where]]
        segment = [[] for _ in segment]
    mean = [s / max(c, 1) for s, c in zip(logp_sum, count)]
    return Decoded(tokens, mean, stopped, scores)
