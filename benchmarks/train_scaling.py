"""Training throughput on one and on two processes (accelerate launch, gloo on CPU; NCCL on GPUs), measured in one
run on the same data: samples/s and the ratio. Prints JSON.

Each configuration trains the tiny preset's stage 2 on a Visual Genome-format folder of synthetic scenes twice, for
--short and --long steps; (long - short) steps / (time difference) removes start-up and loading. The global batch is
the same in both (per-device batch x processes), so the two runs do the same work per step.

    .venv/bin/python benchmarks/train_scaling.py [--global-batch 8] [--short 3] [--long 15] [--processes 1,2]

On a 2-core machine two processes share the two cores the one process already uses (one thread each here): do not
expect a speed-up there; the figure shows the overhead of the gradient all-reduce and of each process reading its
own share.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from regionscribe.training.datasets.synthetic import write_visual_genome


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, steps: int, batch: int, data: Path, out: Path, threads: int) -> float:
    args = ["-m", "regionscribe.backend.ops.cli", "train", "--out", str(out), "--preset", "tiny", "--stage0-steps", "0",
            "--stage1-steps", "0", "--stage2-steps", str(steps), "--batch-size", str(batch), "--quiet",
            "--stage2-data", f"vg:{data}", "--version", "train-scaling"]
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_port()), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-4000:])
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--short", type=int, default=3)
    p.add_argument("--long", type=int, default=15)
    p.add_argument("--processes", default="1,2")
    p.add_argument("--scenes", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    args = p.parse_args(argv)
    out = {"global_batch": args.global_batch, "steps": [args.short, args.long], "threads_per_process": args.threads,
           "cpus": os.cpu_count(), "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_visual_genome(Path(tmp) / "vg", args.scenes)
        for n in (int(x) for x in args.processes.split(",")):
            if args.global_batch % n:
                raise SystemExit(f"--global-batch {args.global_batch} does not split over {n} processes")
            batch = args.global_batch // n
            short = run(n, args.short, batch, data, Path(tmp) / f"p{n}s", args.threads)
            long = run(n, args.long, batch, data, Path(tmp) / f"p{n}l", args.threads)
            per_step = (long - short) / (args.long - args.short)
            out["results"][str(n)] = {"seconds_per_step": round(per_step, 4),
                                      "samples_per_s": round(args.global_batch / per_step, 2),
                                      "wall_s": [round(short, 1), round(long, 1)]}
    base = out["results"].get("1")
    if base:
        for n, r in out["results"].items():
            r["speedup_vs_1"] = round(r["samples_per_s"] / base["samples_per_s"], 3)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
