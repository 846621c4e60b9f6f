"""VPG-C (Cheetah): an instruction-guided visual prompt. Halfway up the LM, the hidden state at the end of the
instruction asks the image and region features again, and what it reads is added back at the region tokens.

    VisualPromptGenerator(hidden, layer, dim, heads)    the module (a few tenths of a percent to 2% of the model)
    Prompting                                           where, in one LM call, the region tokens and the instruction
                                                        ends are, and what each instruction may read
    prompting(ids, bbox_id, groups)                     a Prompting from token ids
    instruction_end(ids, labels, bbox_id, skip)         where a training row's question ends

Cheetah (models.md §5) adds 32 query tokens to a frozen Q-Former at layer 16 of Vicuna and writes the result over the
image's 32 positions. Here every region token of a question (not its demonstrations') gets its own query (the
instruction's state plus the token's own), which reads the question's memory (its image's tokens and its region
tokens, demonstrations' included) by attention; the output projection starts at zero, so a model with VPG-C starts exactly as the model without. It is
hooked on the LM's decoder layer (a forward pre-hook that changes that layer's input), never patched into it, and acts
only while a Prompting is set: on the pass over a question's own tokens, not while decoding its answer.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from regionscribe.model.conversation import IGNORE


@dataclass
class Prompting:
    rows: torch.Tensor  # [P] row and column of each region token to prompt
    cols: torch.Tensor
    group: torch.Tensor  # [P] the instruction (index into the groups) each belongs to
    end_rows: torch.Tensor  # [G] row and column of each instruction's last token
    end_cols: torch.Tensor
    memory: torch.Tensor  # [G, M, hidden] what each instruction may read (padded)
    memory_mask: torch.Tensor  # [G, M] True where memory is real


def prompting(ids: torch.Tensor, bbox_id: int,
              groups: list[tuple[int, int, int, torch.Tensor, int]]) -> Prompting | None:
    """`groups`: per instruction (row, its first column, its last column, its memory [M, hidden], how many of its
    `<bbox>` are demonstrations'); the region tokens prompted are the other `<bbox>` positions between the first and
    the last column (a demonstration's token is read, as memory, not prompted: several questions may share it).
    None when there are none."""
    rows, cols, group, ends, memories = [], [], [], [], []
    for row, start, end, memory, skip in groups:
        at = (ids[row, start: end + 1] == bbox_id).nonzero().flatten()[skip:] + start
        if not len(at) or not len(memory):
            continue
        rows.append(torch.full_like(at, row))
        cols.append(at)
        group.append(torch.full_like(at, len(ends)))
        ends.append((row, end))
        memories.append(memory)
    if not ends:
        return None
    device = memories[0].device
    width = max(len(m) for m in memories)
    memory = memories[0].new_zeros(len(memories), width, memories[0].shape[-1])
    mask = torch.zeros(len(memories), width, dtype=torch.bool, device=device)
    for g, m in enumerate(memories):
        memory[g, : len(m)] = m
        mask[g, : len(m)] = True
    return Prompting(torch.cat(rows).to(device), torch.cat(cols).to(device), torch.cat(group).to(device),
                     torch.tensor([r for r, _ in ends], device=device),
                     torch.tensor([c for _, c in ends], device=device), memory, mask)


def instruction_end(ids: torch.Tensor, labels: torch.Tensor, bbox_id: int, skip: int = 0) -> int | None:
    """In a training row (`ids`, `labels` IGNORE where nothing is learned), the column before the first learned
    token that follows its first region token after the `skip` demonstrations' (the question's instruction ends
    there); None when nothing is learned after one. A row that learns the demonstrations' own answers (an episode's
    shown answers) still ends its instruction at the question, not at the first shown answer, which no question's
    region token comes before."""
    regions = (ids == bbox_id).nonzero().flatten()
    first = int(regions[skip]) if len(regions) > skip else 0
    learned = (labels[first:] != IGNORE).nonzero().flatten()
    return int(learned[0]) + first - 1 if len(learned) else None


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class VisualPromptGenerator(nn.Module):
    def __init__(self, hidden: int, layer: int, dim: int = 64, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"VPG-C dim {dim} must be a multiple of its heads {heads}")
        self.layer, self.heads = layer, heads
        self.instruction = nn.Linear(hidden, dim)
        self.region = nn.Linear(hidden, dim, bias=False)
        self.key = nn.Linear(hidden, dim)
        self.value = nn.Linear(hidden, dim)
        self.out = nn.Linear(dim, hidden)
        nn.init.zeros_(self.out.weight)  # starts as the model without it (Cheetah zero-initialises its projections)
        nn.init.zeros_(self.out.bias)
        self.context: Prompting | None = None
        self._hook = None

    def forward(self, instruction: torch.Tensor, at: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """instruction, at: [P, hidden] (the instruction's state, the region token's); memory [P, M, hidden] with
        mask [P, M] -> the residual [P, hidden] for each region token."""
        p, m, _ = memory.shape
        d = self.instruction.out_features // self.heads
        q = (self.instruction(_rms(instruction)) + self.region(_rms(at))).view(p, self.heads, 1, d)
        mem = _rms(memory)
        k = self.key(mem).view(p, m, self.heads, d).transpose(1, 2)
        v = self.value(mem).view(p, m, self.heads, d).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)  # [P, heads, 1, M]
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        read = (scores.softmax(-1) @ v).reshape(p, -1)
        return self.out(read)

    # ------------------------------------------------------------------------------------------ the LM's layer
    def attach(self, lm: nn.Module) -> None:
        layers = _decoder_layers(lm)
        if not 0 <= self.layer < len(layers):
            raise ValueError(f"VPG-C layer {self.layer} is not one of the LM's {len(layers)} decoder layers")
        if self._hook is not None:
            self._hook.remove()
        self._hook = layers[self.layer].register_forward_pre_hook(self._prompt, with_kwargs=True)

    def _prompt(self, module, args, kwargs):
        ctx = self.context
        if ctx is None:
            return None
        hs = args[0] if args else kwargs["hidden_states"]
        instruction = hs[ctx.end_rows, ctx.end_cols].index_select(0, ctx.group)
        at = hs[ctx.rows, ctx.cols]
        residual = self(instruction.float(), at.float(), ctx.memory.index_select(0, ctx.group).float(),
                        ctx.memory_mask.index_select(0, ctx.group))
        hs = hs.index_put((ctx.rows, ctx.cols), at + residual.to(hs.dtype))
        if args:
            return (hs, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hs}

    @contextmanager
    def prompts(self, context: Prompting | None) -> Iterator[None]:
        """Prompt the region tokens `context` names during the LM calls inside the block."""
        self.context = context
        try:
            yield
        finally:
            self.context = None


def _decoder_layers(lm: nn.Module) -> nn.ModuleList:
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
    for name in ("layers", "h", "blocks"):
        layers = getattr(decoder, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"{type(base).__name__}: no decoder layer list (layers, h or blocks) to hook VPG-C on")
