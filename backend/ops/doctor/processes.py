"""The doctor's checks of the processes: the model the inference workers would load (`--load` loads it), the live
workers and their queues, and a running web server's /health."""
from __future__ import annotations

import json
import time
from pathlib import Path

from regionscribe.model.checkpoints import DEFAULT_CHECKPOINT

from regionscribe.backend.core.liveness import announced_model, live_workers
from regionscribe.backend.core.settings import TINY_UNTRAINED, Settings
from regionscribe.backend.ops.doctor.checks import FAIL, OK, SKIP, WARN, Check, short_error


def _announced(connection) -> dict | None:
    if connection is None:
        return None
    try:
        return announced_model(connection)
    except Exception:
        return None


def check_model(settings: Settings, connection, load: bool) -> Check:
    if settings.model_dir == TINY_UNTRAINED:
        check = Check("model", WARN, "MODEL_DIR=tiny-untrained: an untrained tiny model (well-formed gibberish)",
                      "meant for tests; unset MODEL_DIR for the embedded default or point it at a checkpoint")
        return _load(settings, None, check) if load else check
    announced = _announced(connection)
    if announced:
        path, source = Path(announced["path"]), f"the registry's current version {announced.get('version')}"
    elif settings.model_dir:
        path, source = Path(settings.model_dir), "MODEL_DIR"
    else:
        path, source = DEFAULT_CHECKPOINT, "the embedded default"
    config = path / "config.json"
    weights = path / "model.safetensors"
    for other in ("model.safetensors.index.json", "adapter/adapter_model.safetensors"):  # sharded; an adapter version
        if not weights.is_file() and (path / other).is_file():
            weights = path / other
    if not path.is_dir() or not config.is_file() or not weights.is_file():
        missing = "the folder" if not path.is_dir() else ", ".join(p.name for p in (config, weights) if not p.is_file())
        if announced:
            fix = ("the training job announced this path in Redis, but this machine does not see it: mount the "
                   "registry (REGISTRY_DIR) at the same path on every worker machine")
        elif settings.model_dir:
            fix = ("point MODEL_DIR at a folder written by `regionscribe train` (config.json, model.safetensors and "
                   "the tokenizer files), or unset it for the embedded default")
        else:
            fix = "reinstall regionscribe: the package ships its checkpoint in model/default"
        return Check("model", FAIL, f"{source} at {path}: missing {missing}", fix)
    try:
        from regionscribe.model.config import ModelConfig

        doc = json.loads(config.read_text())
        if doc.get("model_type") != "regionscribe":
            raise ValueError("model_type is not 'regionscribe'")
        cfg = ModelConfig.from_dict(doc["model"])
    except Exception as exc:
        return Check("model", FAIL, f"{config} is not a readable regionscribe config: {short_error(exc)}",
                     "the checkpoint is damaged or not a regionscribe checkpoint: write it again with "
                     "`regionscribe train`, or roll the registry back to an earlier version")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return Check("model", FAIL, f"{path} has no tokenizer files",
                     "copy the whole checkpoint folder (tokenizer.json, tokenizer_config.json come with it)")
    if doc.get("vision") is None and cfg.vision_path and not Path(cfg.vision_path).exists():
        return Check("model", FAIL, f"{path} uses the vision tower at {cfg.vision_path}, which is not on this machine",
                     "put the pretrained vision tower at that path (checkpoints with a frozen pretrained tower do not "
                     "copy its weights)")
    if doc.get("adapter"):
        from regionscribe.model.adapters import base_of

        if not (base_of(path) / "config.json").is_file():
            return Check("model", FAIL, f"{path} is a LoRA adapter over {base_of(path)}, which is not there",
                         "keep the base checkpoint beside the registry (or at its recorded absolute path), or roll "
                         "the registry back to a full version")
    version = (doc.get("metadata") or {}).get("version") or path.name
    if weights.name == "model.safetensors.index.json":  # sharded: the shards' total
        size = json.loads(weights.read_text()).get("metadata", {}).get("total_size", 0) / 2**20
    else:
        size = weights.stat().st_size / 2**20
    check = Check("model", OK, f"{source}: {path} (version {version}, preset {cfg.preset}, {size:.0f} MiB of weights,"
                              f" dtype {cfg.dtype})")
    return _load(settings, path, check) if load else check


def _load(settings: Settings, path: Path | None, check: Check) -> Check:
    """Load the model the way a worker does and describe one box; adds the timings to the check."""
    try:
        import torch
        from PIL import Image

        from regionscribe.model.asks import Asks
        from regionscribe.model.describer import RegionDescriber

        started = time.perf_counter()
        if path is None:
            from regionscribe.training.stages import untrained_describer

            describer = untrained_describer("tiny", seed=0)
        else:
            describer = RegionDescriber.from_pretrained(path, device=settings.device)
        loaded = time.perf_counter() - started
        image = Image.new("RGB", (128, 96), (240, 240, 240))
        started = time.perf_counter()
        describer.describe(image, [(10, 10, 60, 60)], Asks(caption=True, max_new_tokens=8))
        described = time.perf_counter() - started
        device = describer.model.device
        del describer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception as exc:
        fix = ("see the error; a CUDA out-of-memory error means the GPU is too small or busy (DEVICE, one worker "
               "per GPU)")
        return Check("model", FAIL, check.detail + f"; loading it failed: {short_error(exc)}", fix)
    check.detail += f"; loaded on {device} in {loaded:.1f} s, one box described in {1000 * described:.0f} ms"
    return check


def check_workers(settings: Settings, connection) -> list[Check]:
    if connection is None:
        return [Check("workers", SKIP, "needs Redis")]
    checks = []
    roles = (("inference", settings.inference_queue, FAIL,
              "start an inference worker against the same REDIS_URL: `regionscribe worker` (it serves the ingest "
              "queue too; docker compose --profile gpu or --profile cpu up); /predict answers errors until one is "
              "ready"),
             ("training", settings.training_queue, WARN,
              "start a training worker (`regionscribe worker --queue training`, the compose service `trainer`); "
              "until then training runs wait in the queue"),
             ("ingest", settings.ingest_queue, WARN,
              "start an ingest worker: a plain `regionscribe worker` serves the inference and ingest queues, "
              "`regionscribe worker --queue ingest` the ingest queue alone (the compose service `ingest`); until "
              "then the trainer fetches missing images itself before each run"))
    for role, queue, missing_status, fix in roles:
        try:
            workers = live_workers(connection, queue)
            depth = _queue_depth(connection, queue)
        except Exception as exc:
            checks.append(Check(f"workers.{role}", FAIL, f"cannot list workers: {short_error(exc)}",
                                "check Redis (see the redis check)"))
            continue
        ready = [w for w in workers if w.get("state") == "ready"]
        queued = f"{depth} job(s) queued on {queue!r}" if depth is not None else f"queue {queue!r}"
        if not workers:
            checks.append(Check(f"workers.{role}", missing_status, f"no live {role} worker; {queued}", fix))
            continue
        hosts = sorted({str(w.get("host")) for w in workers})
        versions = sorted({str(w.get("model_version")) for w in ready if w.get("model_version")})
        detail = (f"{len(ready)} ready of {len(workers)} on {', '.join(hosts)}; {queued}"
                  + (f"; model {', '.join(versions)}" if versions and role == "inference" else ""))
        if not ready:
            checks.append(Check(f"workers.{role}", WARN, detail + " (still loading)",
                                "wait for the model to load; if it never does, read the worker's log"))
        elif role == "inference" and len(versions) > 1:
            checks.append(Check(f"workers.{role}", WARN, detail + " (different versions)",
                                "workers reload the announced version between jobs; a worker that stays behind "
                                "cannot see the registry path"))
        else:
            checks.append(Check(f"workers.{role}", OK, detail))
    return checks


def _queue_depth(connection, queue: str) -> int | None:
    try:
        from rq import Queue

        return Queue(queue, connection=connection).count
    except Exception:
        return None


def check_backend(url: str, timeout: float) -> Check:
    import requests

    url = url.rstrip("/")
    try:
        response = requests.get(f"{url}/health", timeout=timeout)
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        return Check("backend", FAIL, f"cannot read {url}/health: {type(exc).__name__}",
                     "is `regionscribe serve` running there (HOST/PORT)?")
    if response.status_code != 200:
        return Check("backend", FAIL, f"{url}/health answered {response.status_code}: {body.get('detail', body)}",
                     "the web server cannot reach Redis: check REDIS_URL in its environment")
    return Check("backend", OK, f"{url} is up; {body.get('workers_ready', 0)} worker(s) ready, model "
                                f"{body.get('model_version')}")
