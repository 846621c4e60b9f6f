"""Decoding on top of any HF causal LM driven by `inputs_embeds`: shared-prefix KV caches, batched greedy
generation with a stop token, and log-likelihood ranking of candidate answers.

Sequences are processed in segments: a prefix (system prompt + image, shared by every question about one image),
then a right-padded batch of questions, then generated tokens or candidate answers. Each segment extends a KV cache;
padding inside a segment is masked out with the attention mask and RoPE positions are given explicitly, so every
row sees exactly the tokens it would see if it were run alone (a test checks batched == one-by-one). Each row holds
its own copy of its prefix; model/branches.py holds an image's prefix once for all its questions where the LM's
attention takes a 4-D mask, and model/answering.py uses this module's rows otherwise.

The cache goes in and out under transformers' `cache` name (5.24 and later; `past_key_values` is deprecated there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache


def _kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


@dataclass
class State:
    """Everything the LM has seen so far, for a batch of rows."""
    cache: DynamicCache | None
    mask: torch.Tensor  # [B, L] 1 for real tokens
    next_pos: torch.Tensor  # [B] RoPE position of each row's next token

    @classmethod
    def empty(cls, batch: int, device: torch.device) -> "State":
        return cls(None, torch.zeros(batch, 0, dtype=torch.long, device=device),
                   torch.zeros(batch, dtype=torch.long, device=device))

    @classmethod
    def concat(cls, states: list["State"]) -> "State":
        """The rows of several states of the same length, one after another (prefixes of several images)."""
        if len(states) == 1:
            return states[0]
        if len({s.mask.shape[1] for s in states}) != 1:
            raise ValueError(f"states of different lengths {[s.mask.shape[1] for s in states]} cannot be stacked")
        cache = None
        if states[0].cache is not None:
            cache = DynamicCache()
            layers = [_kv(s.cache) for s in states]
            for i in range(len(layers[0])):
                cache.update(torch.cat([kv[i][0] for kv in layers]), torch.cat([kv[i][1] for kv in layers]), i)
        return cls(cache, torch.cat([s.mask for s in states]), torch.cat([s.next_pos for s in states]))

    def select(self, index: torch.Tensor) -> "State":
        """A new state whose rows are copies of `index` rows of this one (the original stays usable)."""
        cache = None
        if self.cache is not None:
            cache = DynamicCache()
            for i, (k, v) in enumerate(_kv(self.cache)):
                cache.update(k.index_select(0, index), v.index_select(0, index), i)
        return State(cache, self.mask.index_select(0, index), self.next_pos.index_select(0, index))


@torch.no_grad()
def extend(lm, state: State, embeds: torch.Tensor, lengths: torch.Tensor) -> tuple[State, torch.Tensor]:
    """Feed a right-padded segment [B, T, H] (row b has lengths[b] real tokens). Returns the new state and logits."""
    b, t, _ = embeds.shape
    ar = torch.arange(t, device=embeds.device)
    seg_mask = (ar[None, :] < lengths[:, None]).long()
    mask = torch.cat([state.mask, seg_mask], 1)
    positions = state.next_pos[:, None] + ar[None, :]
    cache = state.cache if state.cache is not None else DynamicCache()
    out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    return State(out.cache, mask, state.next_pos + lengths), out.logits


def last_logits(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return logits[torch.arange(len(lengths), device=logits.device), (lengths - 1).clamp(min=0)]


@dataclass
class Generated:
    tokens: list[list[int]]  # without the stop token
    mean_logprob: list[float]  # over generated tokens, the stop token included
    stopped: list[bool]  # whether the stop token was produced within max_new_tokens


@torch.no_grad()
def greedy(lm, embed: Callable[[torch.Tensor], torch.Tensor], state: State, first_logits: torch.Tensor,
           stop_ids: set[int], max_new_tokens: int,
           stop_when: Callable[[list[int]], bool] | None = None) -> Generated:
    """Greedy decoding for every row of `state`, whose next-token logits are `first_logits` [B, V].

    A row also stops once `stop_when(its tokens so far)` is true (a stop string; the caller cuts the text there)."""
    b = first_logits.shape[0]
    device = first_logits.device
    tokens: list[list[int]] = [[] for _ in range(b)]
    logp_sum = torch.zeros(b, dtype=torch.float64)
    count = torch.zeros(b, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    stopped = torch.zeros(b, dtype=torch.bool)
    logits = first_logits
    for _ in range(max_new_tokens):
        logp = torch.log_softmax(logits.float(), -1)
        nxt = logp.argmax(-1)
        chosen = logp.gather(1, nxt[:, None]).squeeze(1).cpu().double()
        live = ~done
        logp_sum += torch.where(live, chosen, torch.zeros_like(chosen))
        count += live.long()
        is_stop = torch.tensor([int(t) in stop_ids for t in nxt.tolist()], dtype=torch.bool)
        for i in range(b):
            if live[i] and not is_stop[i]:
                tokens[i].append(int(nxt[i]))
                if stop_when is not None and stop_when(tokens[i]):
                    is_stop[i] = True
        stopped |= live & is_stop
        done |= is_stop
        if bool(done.all()):
            break
        state, out = extend(lm, state, embed(nxt[:, None].to(device)), torch.ones(b, dtype=torch.long, device=device))
        logits = out[:, -1]
    mean = (logp_sum / count.clamp(min=1)).tolist()
    return Generated(tokens, mean, stopped.tolist())


@torch.no_grad()
def rank(lm, embed: Callable[[torch.Tensor], torch.Tensor], state: State, first_logits: torch.Tensor,
         candidates: list[list[list[int]]]) -> list[list[float]]:
    """Total log-probability of each candidate token sequence for each row.

    candidates[b] lists the token sequences (each ending with the stop token) to score after row b.
    """
    device = first_logits.device
    first_logp = torch.log_softmax(first_logits.float(), -1)
    rows = [b for b, cands in enumerate(candidates) for _ in cands]
    flat = [c for cands in candidates for c in cands]
    if not flat:
        return [[] for _ in candidates]
    if any(len(c) < 2 for c in flat):
        raise ValueError("each candidate needs at least one token plus the stop token")
    index = torch.tensor(rows, device=device)
    lengths = torch.tensor([len(c) - 1 for c in flat], device=device)
    width = int(lengths.max())
    feed = torch.zeros(len(flat), width, dtype=torch.long, device=device)
    for i, c in enumerate(flat):
        feed[i, : len(c) - 1] = torch.tensor(c[:-1])
    _, logits = extend(lm, state.select(index), embed(feed), lengths)
    logp = torch.log_softmax(logits.float(), -1)
    scores = []
    for i, c in enumerate(flat):
        s = first_logp[rows[i], c[0]]
        if len(c) > 1:
            s = s + logp[i, torch.arange(len(c) - 1), torch.tensor(c[1:])].sum()
        scores.append(float(s))
    out, k = [], 0
    for cands in candidates:
        out.append(scores[k: k + len(cands)])
        k += len(cands)
    return out
