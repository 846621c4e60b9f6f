"""The optimisation loop every training phase runs, on one process or many (accelerate), resumable.

    accelerate launch --num_processes 2 -m regionscribe.backend.ops.cli train ...   # or: regionscribe train ... (one process)

- **Data.** Every process walks the same item sequence (training/mixture.py, or any deterministic stream) and takes
  positions rank, rank + world, ...: disjoint shares that together cover it. A step takes `batch_size` items per
  process per micro-batch, `grad_accum` micro-batches: the global batch is batch_size x processes x grad_accum.
- **Loss.** The summed token cross-entropy of the whole global batch divided by its number of target tokens (counted
  across processes before the backward pass). Two processes with batch b therefore follow exactly the loss curve of
  one process with batch 2b, and one process with grad_accum 1 computes the mean token loss as before.
- **Switches.** `mixed_precision` ("no" or "bf16"), `gradient_checkpointing` (the LM's own), FSDP or DeepSpeed
  through `accelerate launch --config_file scripts/accelerate/<fsdp|deepspeed_zero2|deepspeed_zero3>.yaml`.
- **State.** With `save_every` N, every N steps the whole training state (model, optimiser, scheduler, every
  process's RNG, through accelerate's save_state) and the data position (phase, step, losses so far) go to
  `<state_dir>`, written beside it and renamed into place, so a kill leaves the previous state whole. A run started
  again with `resume` continues at the saved step of the saved phase with the same data order; the final weights
  equal an uninterrupted run's.
- Only the main process shows progress bars and writes files.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from regionscribe.model.conversation import IGNORE
from regionscribe.training.batches import collate, encode_sample, to_device

STATE_FILE = "progress.json"


@dataclass
class RunOptions:
    grad_accum: int = 1
    mixed_precision: str = "no"  # "no" | "bf16"
    gradient_checkpointing: bool = False
    save_every: int = 0  # steps between saved training states (0: never)
    state_dir: str | None = None  # where the training state goes (default: <out>/state)
    resume: bool = False

    def __post_init__(self) -> None:
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be at least 1, not {self.grad_accum}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', not {self.mixed_precision!r}")
        if self.save_every < 0:
            raise ValueError(f"save_every must be 0 or more, not {self.save_every}")


def saved_progress(state_dir: str | Path | None) -> dict | None:
    """What a saved training state says: {"phase", "step", "history", "dir", ...}, or None when there is none. A
    kill between the two renames of _save leaves the previous state as <state_dir>.old: it is used then."""
    if state_dir is None:
        return None
    state_dir = Path(state_dir)
    for folder in (state_dir, state_dir.with_name(state_dir.name + ".old")):
        if (folder / STATE_FILE).is_file():
            return {**json.loads((folder / STATE_FILE).read_text()), "dir": str(folder)}
    return None


def accelerator(options: RunOptions):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # some trainable parameters take no part in a given loss (the image projector when a batch's questions never
    # reach it, a frozen-in-practice pyramid level): DDP must not wait for their gradients
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=options.mixed_precision,
                       kwargs_handlers=[ddp])


def process_state():
    """accelerate's state of this process (rank, world size). On a machine without CUDA it must be made with
    cpu=True, or processes started by `accelerate launch --multi_gpu --num_processes N` (torchrun) would not join
    one gloo group: each would train alone."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return process_state().is_main_process


def _my_share(items: Iterable, rank: int, world: int, skip: int) -> Iterator:
    """Items at positions rank, rank + world, ... after the first `skip` (a multiple of world); Units are loaded
    here, so each process reads only its own images. A Unit whose image cannot be read is left out (reported)."""
    for i, item in enumerate(items):
        if i < skip or (i - skip) % world != rank:
            continue
        if hasattr(item, "load"):
            item = item.load()
            if item is None:
                continue
        yield item


def fit(model, params: list, groups: list[dict], steps: int, batch_size: int, warmup: int, items: Iterable,
        options: RunOptions, phase: str, history: dict[str, list[float]], weight_decay: float = 0.0,
        grad_clip: float = 0.0, progress: bool = True, log: Callable[[str], None] | None = None,
        desc: str | None = None) -> list[float]:
    """Train `params` (`groups`: AdamW parameter groups) for `steps` steps on `items`; returns the loss per step.
    `history`: the losses of the phases before this one, saved with the state."""
    from tqdm import tqdm

    acc = accelerator(options)
    world, rank = acc.num_processes, acc.process_index
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = cosine_with_warmup(opt, warmup, steps)
    if options.gradient_checkpointing and hasattr(model.lm, "gradient_checkpointing_enable"):
        model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    # the scheduler stays outside prepare(): accelerate would step it once per process per step, so the learning
    # rate of N processes would run N times ahead of one process's; it is saved with the state all the same
    model, opt = acc.prepare(model, opt)
    acc.register_for_checkpointing(sched)
    inner = acc.unwrap_model(model)
    state_dir = Path(options.state_dir) if options.state_dir else None
    start, losses = 0, []
    saved = saved_progress(state_dir) if options.resume else None
    if saved and saved["phase"] == phase:
        acc.load_state(str(Path(saved["dir"]) / "accelerate"))
        start, losses = saved["step"], list(saved["losses"])
    per_step = batch_size * world * options.grad_accum
    share = _my_share(items, rank, world, start * per_step)
    bar = tqdm(range(start, steps), desc=desc or phase, disable=not (progress and acc.is_main_process),
               dynamic_ncols=True, initial=start, total=steps)
    for step in bar:
        micro = []
        for _ in range(options.grad_accum):
            try:
                chunk = [encode_sample(inner, next(share)) for _ in range(batch_size)]
            except StopIteration:
                raise ValueError(f"{phase}: the data ran out at step {step} of {steps} (give fewer steps, epochs, "
                                 "or more data)") from None
            micro.append(to_device(collate(chunk, inner.tokenizer.pad_token_id), acc.device))
        tokens = sum(int((mb["labels"][:, 1:] != IGNORE).sum()) for mb in micro)
        total = acc.reduce(torch.tensor(float(tokens), device=acc.device), reduction="sum")
        if float(total) == 0:
            raise ValueError(f"{phase} step {step}: a global batch without any answer token to learn")
        summed = torch.zeros((), device=acc.device)
        for j, mb in enumerate(micro):
            sync = contextlib.nullcontext() if j == len(micro) - 1 else acc.no_sync(model)
            with sync, acc.autocast():
                loss_sum = model(**mb, num_items_in_batch=torch.ones((), device=acc.device))
            acc.backward(loss_sum * world / total)
            summed += loss_sum.detach().float()
        if grad_clip:
            acc.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(acc.reduce(summed, reduction="sum") / total))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
        if log and step % 100 == 0 and acc.is_main_process:
            log(f"{phase} step {step} loss {losses[-1]:.4f}")
        if options.save_every and state_dir and (step + 1) % options.save_every == 0 and step + 1 < steps:
            _save(acc, state_dir, {"phase": phase, "step": step + 1, "losses": losses, "history": history,
                                   "global_batch": per_step, "processes": world})
    model = acc.unwrap_model(model)
    model.eval()
    return losses


def _save(acc, state_dir: Path, progress: dict) -> None:
    """The whole state into <state_dir>.tmp, then renamed over <state_dir>: a kill leaves the old state whole."""
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(str(tmp / "accelerate"))
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(progress))
        old = state_dir.with_name(state_dir.name + ".old")
        if old.exists() and state_dir.exists():
            shutil.rmtree(old)
        if state_dir.exists():
            state_dir.rename(old)
        tmp.rename(state_dir)
        if old.exists():
            shutil.rmtree(old)
    acc.wait_for_everyone()


def cosine_with_warmup(optimizer, warmup: int, total: int, decay: bool = True):
    """A linear warm-up over `warmup` steps, then a cosine down to 0 at `total` (or, without `decay`, constant)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if not decay:
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resume_point(state_dir: Path | None, resume: bool) -> dict[str, Any] | None:
    """The saved progress to resume from, or None; `resume` without a saved state is an error that says where it
    looked."""
    if not resume:
        return None
    saved = saved_progress(state_dir)
    if saved is None:
        raise FileNotFoundError(f"--resume: no saved training state in {state_dir} (runs save one with --save-every)")
    return saved
