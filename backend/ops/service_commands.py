"""The commands that run and look after the service: `regionscribe versions`, `report`, `run`, `serve`, `worker`,
`doctor`, `export`, `sync` and `demonstrations`, each a function running it and one adding its options
(regionscribe.backend.ops.cli holds the table of every command)."""
from __future__ import annotations

import argparse
import json
import sys


def versions_command(args: argparse.Namespace) -> int:
    from regionscribe.backend.ops.report import format_table, version_rows, versions_json

    print(versions_json() if args.json else format_table(version_rows()))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from regionscribe.backend.ops.report import write_report

    result = write_report(args.out)
    print(f"wrote {result['path']} ({result['versions']} versions)")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from regionscribe.backend.ops.runner import run_all

    return run_all() or 0


def serve_command(args: argparse.Namespace) -> int:
    from regionscribe.backend.web.server import serve

    return serve(host=args.host, port=args.port, workers=args.workers) or 0


def worker_command(args: argparse.Namespace) -> int:
    from regionscribe.backend.ops.worker import run_worker

    return run_worker(queues=args.queue, burst=args.burst) or 0


def doctor_command(args: argparse.Namespace) -> int:
    from regionscribe.backend.ops.doctor import main as doctor

    return doctor(json_output=args.json, load=args.load, timeout=args.timeout, backend_url=args.backend)


def export_command(args: argparse.Namespace) -> int:
    from regionscribe.backend.export import (
        ExportError, ExportFilters, ExportOptions, export, parse_formats, parse_split,
    )
    from regionscribe.backend.store import Store, StoreError

    try:
        filters = ExportFilters(
            projects=tuple(args.project or ()), annotators=tuple(args.annotator or ()),
            model_versions=tuple(args.model_version or ()), prefilled=args.prefilled, since=args.since,
            until=args.until, min_caption_length=args.min_caption_length, ground_truth_only=args.ground_truth_only,
            dedup=not args.keep_duplicates)
        options = ExportOptions(formats=parse_formats(",".join(args.format)), images=args.images,
                                split=parse_split(args.split), seed=args.seed, filters=filters,
                                overwrite=args.overwrite, chunk_size=args.chunk_size)
        with Store.open(args.store) as store:
            manifest = export(store, args.out, options, progress=not args.quiet)
    except (ExportError, StoreError) as exc:
        print(f"regionscribe export: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, "selection_id": manifest["selection_id"], "counts": manifest["counts"]},
                     indent=2, ensure_ascii=False))
    return 0


def sync_command(args: argparse.Namespace) -> int:
    from regionscribe.backend.core.settings import get_settings
    from regionscribe.backend.store import StoreError
    from regionscribe.backend.feedback.sync import SyncReport, parse_since, sync_all

    settings = get_settings()
    try:
        since = parse_since(args.since)
    except ValueError as exc:
        print(f"regionscribe sync: error: {exc}", file=sys.stderr)
        return 2
    if not settings.label_studio_api_enabled:
        print("regionscribe sync: error: set LABEL_STUDIO_URL (Label Studio's base URL) and LABEL_STUDIO_API_KEY (a "
              "personal access token: Account & Settings) so the backend can read the annotations", file=sys.stderr)
        return 2
    connection = _redis_or_none(settings, "sync", "the store is still synced; images and the retraining policy wait "
                                                  "for the next event")
    from tqdm import tqdm

    bar = tqdm(unit=" tasks", desc="sync", file=sys.stderr, disable=args.quiet or args.json)
    try:
        reports = sync_all(settings, projects=args.project, since=since, connection=connection, on_task=bar.update)
    except StoreError as exc:
        print(f"regionscribe sync: error: {exc}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    failed = {p: r for p, r in reports.items() if not isinstance(r, SyncReport)}
    if args.json:
        print(json.dumps({str(p): (r.as_dict() if isinstance(r, SyncReport) else {"error": r})
                          for p, r in reports.items()}, indent=2))
    else:
        if not reports:
            print("no project to sync: none is connected (Label Studio calls /setup when a project connects) and the "
                  "store holds none; name one with --project")
        for p, r in reports.items():
            if isinstance(r, SyncReport):
                print(f"project {p}: {r.new} new, {r.changed} changed, {r.unchanged} unchanged, {r.deleted} deleted"
                      + (f", {r.skipped} skipped (see the log)" if r.skipped else "")
                      + f" ({r.tasks} tasks in {r.seconds:.1f} s)")
            else:
                print(f"project {p}: not synced: {r}")
    return 1 if failed else 0


def demonstrations_command(args: argparse.Namespace) -> int:
    from regionscribe.backend.core.liveness import read_model_version
    from regionscribe.backend.core.settings import get_settings
    from regionscribe.backend.store import Store, StoreError

    settings = get_settings()
    connection = _redis_or_none(settings, "demonstrations", "the model is the one MODEL_DIR names (or the embedded "
                                                            "default), not a version the registry announced")
    try:
        with Store.open(args.store) as store:
            if args.action == "prune":
                return _prune_demonstrations(args, store, connection, settings)
            if args.action == "status":
                served = read_model_version(connection, settings)
                counts = store.demonstration_counts(args.project)
                if args.json:
                    print(json.dumps({"served_model_version": served, "demonstrations": settings.demonstrations,
                                      "projects": {str(p): c for p, c in sorted(counts.items())}}, indent=2))
                    return 0
                print(f"DEMONSTRATIONS={settings.demonstrations}; the workers serve {served}")
                for p, c in sorted(counts.items()):
                    versions = ", ".join(f"{v}: {n['tokens']} tokens ({n['retired']} retired)"
                                         for v, n in sorted(c["versions"].items())) or "no tokens"
                    print(f"project {p}: {c['accepted']} accepted regions; {versions}")
                return 0
            from tqdm import tqdm

            from regionscribe.backend.inference.demonstrations import rebuild

            with tqdm(unit=" regions", desc="demonstrations", file=sys.stderr,
                      disable=args.quiet or args.json) as bar:
                result = rebuild(settings, store, projects=args.project, force=args.force, connection=connection,
                                 progress=bar.update)
    except StoreError as exc:
        print(f"regionscribe demonstrations: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model_version": result["model_version"],
                          "projects": {str(p): c for p, c in result["projects"].items()}}, indent=2))
    else:
        if not result["projects"]:
            print("no project has accepted regions")
        for p, c in result["projects"].items():
            print(f"project {p} ({result['model_version']}): {c['missing']} regions to compute, {c['written']} "
                  f"written, {c['skipped']} changed meanwhile, {c['without_answer']} without caption or attribute, "
                  f"{c['errors']} errors (see the log), {c['retired']} stale rows retired")
    return 1 if any(c["errors"] for c in result["projects"].values()) else 0


def _prune_demonstrations(args: argparse.Namespace, store, connection, settings) -> int:
    """`regionscribe demonstrations prune`: delete the rows of the model versions no worker serves. What is served
    comes from Redis (the version announced last, and each live worker's own, which differ while workers switch):
    without it the command cannot tell what to keep, unless --keep names it."""
    from regionscribe.backend.core.liveness import MODEL_VERSION_KEY, live_workers

    served: set[str] = set()
    if connection is not None:
        import redis

        try:
            value = connection.get(MODEL_VERSION_KEY)
            served |= {value.decode()} if value else set()
            served |= {w["model_version"] for w in live_workers(connection, settings.inference_queue)
                       if w.get("model_version")}
        except redis.RedisError as exc:
            print(f"regionscribe demonstrations prune: Redis: {exc}", file=sys.stderr)
            served = set()
    keep = sorted(set(args.keep or []) | served)
    if not keep:
        print("regionscribe demonstrations prune: error: no worker has announced the version it serves (Redis "
              "unreachable, or no worker started yet), so nothing can be pruned safely; name the versions to keep "
              "with --keep VERSION", file=sys.stderr)
        return 2
    pruned = store.prune_demonstrations(keep, project_ids=args.project)
    if args.json:
        print(json.dumps({"kept": keep, "projects": {str(p): v for p, v in sorted(pruned.items())}}, indent=2))
        return 0
    print(f"kept {', '.join(f'{v} (served)' if v in served else v for v in keep)}")
    if not pruned:
        print("no rows of other versions")
    for p, versions in sorted(pruned.items()):
        print(f"project {p}: " + ", ".join(f"{v}: {n} rows deleted" for v, n in sorted(versions.items())))
    return 0


def _redis_or_none(settings, command: str, without: str):
    """Redis when REDIS_URL is set and answers (sync: to queue image fetches and ask the retraining policy;
    demonstrations: to read the model version the registry announced), else None, saying so: `without` is what
    `regionscribe <command>` does without it."""
    if not settings.redis_url:
        return None
    import redis

    from regionscribe.backend.core.connections import redis_connection

    connection = redis_connection(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        connection.ping()
    except redis.RedisError as exc:
        print(f"regionscribe {command}: Redis unreachable ({type(exc).__name__}): {without}", file=sys.stderr)
        return None
    return connection


def versions_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe versions`'s options."""
    p.add_argument("--json", action="store_true")


def report_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe report`'s options."""
    p.add_argument("--out", default="regionscribe-report.html")


def run_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe run`'s options: none."""


def serve_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe serve`'s options."""
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)


def worker_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe worker`'s options."""
    p.add_argument("--queue", action="append", default=None,
                   help="queue name (repeatable; default: the inference and ingest queues, as `run` starts it)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")


def doctor_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe doctor`'s options."""
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--load", action="store_true", help="also load the model the workers would serve and time it")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds for each network call")
    p.add_argument("--backend", default=None, metavar="URL", help="also check a running web server's /health")


def export_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe export`'s options."""
    p.add_argument("--format", action="append", required=True, metavar="FORMATS",
                   help="conversations, vg, coco, hf (comma list or repeated)")
    p.add_argument("--out", required=True, help="folder to create (written beside it, renamed at the end)")
    p.add_argument("--images", default="reference", choices=["reference", "copy"],
                   help="copy the cached images into OUT/images, or reference them (default)")
    p.add_argument("--split", default="1", help="train,val,test fractions by image (default 1: all train)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--project", type=int, action="append", help="project id (repeatable)")
    p.add_argument("--annotator", action="append", help="annotator user id or e-mail (repeatable)")
    p.add_argument("--model-version", action="append", help="only regions this model version pre-filled (repeatable)")
    p.add_argument("--prefilled", choices=["any", "changed", "confirmed", "no"],
                   help="pre-filled regions a human changed or confirmed (any), only changed, only confirmed, or "
                        "regions written without a suggestion (no)")
    p.add_argument("--since", help="annotations updated at or after this ISO date/time (UTC)")
    p.add_argument("--until", help="annotations updated before this ISO date/time (UTC)")
    p.add_argument("--min-caption-length", type=int, default=0, help="characters; drops shorter or no captions")
    p.add_argument("--ground-truth-only", action="store_true", help="only annotations marked ground truth")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="keep identical regions (same image, box to the pixel and text); dropped by default")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--store", default=None, metavar="URL", help="store URL (default: STORE_URL/DATABASE_URL/DATA_DIR)")
    p.add_argument("--chunk-size", type=int, default=1000, help="rows read from the store at a time")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def sync_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe sync`'s options."""
    p.add_argument("--project", type=int, action="append",
                   help="project id (repeatable; default: every connected project and every project in the store)")
    p.add_argument("--since", help="only tasks Label Studio changed at or after this ISO date/time (UTC)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def demonstrations_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe demonstrations`'s options."""
    p.add_argument("action", choices=["rebuild", "status", "prune"],
                   help="rebuild: compute, in this process with the model the workers serve, the region tokens the "
                        "accepted regions lack (what the workers' refresh jobs do); status: accepted regions and "
                        "tokens per project and model version; prune: delete the tokens of every version but the "
                        "one the workers serve (and --keep)")
    p.add_argument("--project", type=int, action="append",
                   help="project id (repeatable; default: every project with accepted regions)")
    p.add_argument("--force", action="store_true", help="rebuild: recompute every accepted region's token")
    p.add_argument("--keep", action="append", metavar="VERSION",
                   help="prune: a model version to keep besides the served one (repeatable)")
    p.add_argument("--store", default=None, metavar="URL", help="store URL (default: STORE_URL/DATABASE_URL/DATA_DIR)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
