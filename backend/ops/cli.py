"""`regionscribe`: thin command line over importable functions.

    regionscribe train   two-stage tuning of a preset (or --vision PATH --lm PATH) on the synthetic corpus or on
                         region-text datasets (--stage2-data, --recipe gpt4roi), on one process or under
                         `accelerate launch` -> an HF-shaped checkpoint
    regionscribe data    read datasets or exports as training conversations; counts and what was skipped
    regionscribe eval    metrics of a checkpoint on a split of the synthetic corpus (--json)
    regionscribe run     Redis (private, if REDIS_URL is unset) + one worker + the web server, for `make run`
    regionscribe serve   the web server (gunicorn) only
    regionscribe worker  a long-lived, non-forking RQ worker (the inference and ingest queues, or --queue training)
    regionscribe versions  the model registry's versions with their metrics
    regionscribe report  an HTML page with the metrics across versions and the edit rate per model version
    regionscribe doctor  checks Redis, the store, the registry, the model, workers and Label Studio; exit 1 on a FAIL
    regionscribe export  curated region-text datasets from the feedback store (conversations, vg, coco, hf)
    regionscribe sync    bring the feedback store in line with Label Studio (annotations the webhook missed)
    regionscribe demonstrations rebuild|status|prune  region tokens of accepted regions (DEMONSTRATIONS): compute
                         the missing ones with the served model (--project N, --force), count them, or delete those of
                         versions no worker serves
    regionscribe convert gpt4roi  GPT4RoI's released checkpoint (or delta + LLaMA-7B) -> a regionscribe checkpoint
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from regionscribe.backend.ops import service_commands as service
from regionscribe.backend.ops import training_commands as training

# The table of commands: name -> (help, the function adding its options, the function running it), in --help's order.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("two-stage spatial instruction tuning on the synthetic corpus or on datasets", training.train_options,
              training.train_command),
    "eval": ("evaluate a checkpoint on the synthetic corpus", training.eval_options, training.eval_command),
    "versions": ("the model registry's versions with their metrics", service.versions_options,
                 service.versions_command),
    "report": ("an HTML page: metrics across versions and the edit rate per model version", service.report_options,
               service.report_command),
    "run": ("Redis + one worker + web server on the embedded default (make run)", service.run_options,
            service.run_command),
    "serve": ("the HTTP app under gunicorn", service.serve_options, service.serve_command),
    "worker": ("a long-lived non-forking RQ worker", service.worker_options, service.worker_command),
    "doctor": ("check Redis, the store, the registry, the model, workers and Label Studio", service.doctor_options,
               service.doctor_command),
    "export": ("write a curated region-text dataset from the feedback store", service.export_options,
               service.export_command),
    "sync": ("bring the feedback store in line with Label Studio (annotations the webhook missed: backend down, 401, "
             "timeout)", service.sync_options, service.sync_command),
    "demonstrations": ("the region tokens of accepted regions, for DEMONSTRATIONS: rebuild them (--project N, "
                       "--force), show their status, or prune the versions no worker serves",
                       service.demonstrations_options, service.demonstrations_command),
    "data": ("read public region-text datasets or exports as training conversations and report what was kept and "
             "skipped", training.data_options, training.data_command),
    "convert": ("convert a released checkpoint into a regionscribe checkpoint", training.convert_options,
                training.convert_command),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="regionscribe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, (text, options, run) in COMMANDS.items():
        command = sub.add_parser(name, help=text)
        options(command)
        command.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
