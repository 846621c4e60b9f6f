"""Training data as one deterministic sequence: weighted sources interleaved by a seeded draw, a seeded shuffle
buffer, and epochs or an endless stream.

Every training process builds the same sequence from the same seed; run_stage (training/phases.py) then gives
process `rank` of `world` the items at positions rank, rank + world, ... (its own share, disjoint from the others'),
so one global batch of the sequence is spread over the processes, and resuming at step k skips k global batches.
Items are `regionscribe.training.datasets.Unit`s (a conversation whose image is read only by the process that trains on it) or
ready Samples (the synthetic corpus, a project's corrections).

    Mixture([("vg", lambda n: vg.units(2, seed=n), 2.0), ("corrections", lambda n: iter(fixes), 1.0)],
            seed=0, epochs=2)

A source is a function of the pass number (0, 1, ...) returning a fresh iterator. With `epochs`, one epoch reads
each source `weight` times (whole passes, so weights are integers, like GPT4RoI's dataset ratios) and the epoch is
padded with its own first items to a multiple of `pad_to` (one global batch), as torch's DistributedSampler pads, so
that every process takes the same number of steps. Without `epochs` the stream is endless: each draw picks a source
with probability proportional to its weight, and a source that runs out starts its next pass.
"""
from __future__ import annotations

import itertools
import random
from typing import Any, Callable, Iterator

Stream = tuple[str, Callable[[int], Iterator[Any]], float]


class Mixture:
    def __init__(self, streams: list[Stream], seed: int = 0, epochs: int | None = None, shuffle_buffer: int = 256,
                 pad_to: int = 1):
        if not streams:
            raise ValueError("a mixture needs at least one source")
        for name, _, weight in streams:
            if not weight > 0:
                raise ValueError(f"source {name}: the weight must be positive, not {weight}")
            if epochs is not None and weight != int(weight):
                raise ValueError(f"source {name}: with epochs a weight counts whole passes per epoch, not {weight}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be at least 1, not {epochs}")
        self.streams, self.seed, self.epochs = streams, seed, epochs
        self.shuffle_buffer, self.pad_to = max(1, shuffle_buffer), max(1, pad_to)

    def _shuffled(self, items: Iterator[Any], rng: random.Random) -> Iterator[Any]:
        buf: list[Any] = []
        for item in items:
            buf.append(item)
            if len(buf) >= self.shuffle_buffer:
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def _epoch(self, epoch: int) -> Iterator[Any]:
        rng = random.Random(f"{self.seed}:epoch:{epoch}")
        active = []  # [weight, iterator]
        for name, make, weight in self.streams:
            for k in range(int(weight)):
                active.append([1.0, make(epoch * int(weight) + k)])

        def draw() -> Iterator[Any]:
            while active:
                slot = rng.choices(range(len(active)), weights=[a[0] for a in active])[0]
                try:
                    yield next(active[slot][1])
                except StopIteration:
                    active.pop(slot)
        first: list[Any] = []
        n = 0
        for item in self._shuffled(draw(), random.Random(f"{self.seed}:shuffle:{epoch}")):
            if len(first) < self.pad_to:
                first.append(item)
            n += 1
            yield item
        if n == 0:
            raise ValueError("the training data is empty: every source gave nothing (see the skip report)")
        short = -n % self.pad_to
        for k in range(short):
            yield first[k % len(first)]

    def _endless(self) -> Iterator[Any]:
        rng = random.Random(f"{self.seed}:draw")
        passes = [0] * len(self.streams)
        iters = [make(0) for _, make, _ in self.streams]
        weights = [w for _, _, w in self.streams]
        empty_in_a_row = [0] * len(self.streams)

        def draw() -> Iterator[Any]:
            while True:
                i = rng.choices(range(len(iters)), weights=weights)[0]
                try:
                    item = next(iters[i])
                    empty_in_a_row[i] = 0
                    yield item
                except StopIteration:
                    empty_in_a_row[i] += 1
                    if empty_in_a_row[i] > 1:  # a whole new pass gave nothing
                        raise ValueError(f"training source {self.streams[i][0]} is empty (see the skip report)")
                    passes[i] += 1
                    iters[i] = self.streams[i][1](passes[i])
        yield from self._shuffled(draw(), random.Random(f"{self.seed}:shuffle"))

    def __iter__(self) -> Iterator[Any]:
        if self.epochs is None:
            return self._endless()
        return itertools.chain.from_iterable(self._epoch(e) for e in range(self.epochs))

    def count(self) -> int:
        """Items in all epochs (padded): a pass over the sources' units, which reads no image."""
        if self.epochs is None:
            raise ValueError("an endless mixture has no length")
        return sum(1 for _ in self)
