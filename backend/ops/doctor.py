"""`regionscribe doctor`: is this deployment able to work? Each check prints OK, WARN, FAIL or SKIP with what it saw
and, when something is wrong, what to do about it in plain words. Exit status 1 when any check FAILs.

    regionscribe doctor            # text
    regionscribe doctor --json     # {"ok": bool, "checks": [{"name", "status", "detail", "fix", "seconds"}]}
    regionscribe doctor --load     # also load the model the workers would serve, time it, describe one box

Checks, with the settings of this process's environment (run it where the service runs, e.g.
`docker compose exec backend regionscribe doctor`):
- settings: every variable parses;
- redis: REDIS_URL answers PING; server version at least 6.0.6 (rq's requirement for its queue commands); the
  eviction policy keeps rq's keys (noeviction);
- store: the feedback store opens and its schema is current (SQLite file under DATA_DIR, or PostgreSQL from
  STORE_URL); opening a SQLite store creates it when it is missing;
- registry: REGISTRY_DIR's current version is complete and the folder is writable (the trainer writes it);
- model: the checkpoint the inference workers would load (the version the training job announced in Redis, else
  MODEL_DIR, else the embedded default) is on this machine with a readable config; `--load` loads it;
- workers: live inference, training and ingest workers (their Redis heartbeats) and the queue depths;
- label_studio: LABEL_STUDIO_URL answers /health, and LABEL_STUDIO_API_KEY is accepted
  (/api/current-user/whoami; a personal access token is first exchanged for an access token, as the image fetcher
  does);
- webhooks: for every connected project (its /setup reached this deployment), Label Studio's webhook to this
  backend's /webhook is there, carries the Basic auth header when BASIC_AUTH_USER/BASIC_AUTH_PASS are set, is not
  duplicated and is active; and how many requests to /webhook were refused with 401 in the last hour and day;
- sync: the periodic sync with Label Studio (SYNC_INTERVAL) is on and ran recently, and how many live regions
  arrived only through it (events the webhook lost);
- backend (only with --backend URL): the web server's /health.

No secret is ever printed: the API key, BASIC_AUTH_PASS and passwords inside REDIS_URL/STORE_URL are scrubbed from
every line, whatever a library put into an error message.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from regionscribe.backend.core.connections import redis_connection
from regionscribe.backend.core.keys import SYNC_LAST_KEY
from regionscribe.backend.core.settings import TINY_UNTRAINED, Settings, redacted_url

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
MIN_REDIS = (6, 0, 6)


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    seconds: float = 0.0




def _secrets(settings: Settings | None, env) -> list[str]:
    """Every secret value this process could leak, longest first (so that a substring is not replaced first)."""
    values = []
    if settings is not None:
        values += [settings.label_studio_api_key, settings.basic_auth_pass]
        for url in (settings.redis_url, settings.store_url):
            if url:
                password = urlsplit(url).password
                if password:
                    values += [password, unquote(password)]
    for name in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN", "BASIC_AUTH_PASS"):
        values.append(env.get(name))
    return sorted({v for v in values if v and len(v) >= 3}, key=len, reverse=True)


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _error(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# ------------------------------------------------------------------------------------------------------ checks


def check_redis(settings: Settings, timeout: float):
    """(Check, connection or None)."""
    if not settings.redis_url:
        return Check("redis", FAIL, "REDIS_URL is not set",
                     "point REDIS_URL at the Redis the web server and the workers share (redis://host:6379/0); "
                     "`regionscribe run` starts a private one when it is unset"), None

    where = redacted_url(settings.redis_url)
    connection = redis_connection(settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                  health_check_interval=0, retry_on_timeout=False)
    try:
        connection.ping()
        info = connection.info("server")
    except Exception as exc:  # redis.RedisError, or a malformed URL
        fix = "is Redis running and reachable from here? check the host and port in REDIS_URL"
        if "auth" in type(exc).__name__.lower() or "password" in str(exc).lower():
            fix = "Redis refused the credentials: check the user and password in REDIS_URL"
        return Check("redis", FAIL, f"cannot reach Redis at {where}: {_error(exc)}", fix), None
    version = str(info.get("redis_version", "0"))
    parsed = tuple(int(p) for p in (version.split(".") + ["0", "0"])[:3] if p.isdigit())
    if parsed < MIN_REDIS:
        return Check("redis", FAIL, f"{where} runs Redis {version}; the job queue (rq) needs 6.0.6 or newer",
                     "upgrade Redis (docker-compose.yml uses the redis:7 image)"), connection
    notes = [f"{where} answers PING; Redis {version}"]
    try:
        persistence = connection.info("persistence")
        notes.append("persistence: " + ("AOF" if persistence.get("aof_enabled") else "RDB snapshots only or none"))
    except Exception:
        pass
    try:
        policy = connection.config_get("maxmemory-policy").get("maxmemory-policy")
    except Exception:  # CONFIG is often disabled on managed Redis
        policy = None
    if policy and policy != "noeviction":
        return Check("redis", WARN, "; ".join(notes) + f"; maxmemory-policy is {policy}",
                     "set maxmemory-policy to noeviction: with eviction Redis may drop queued jobs and results "
                     "(rq's requirement)"), connection
    return Check("redis", OK, "; ".join(notes)), connection


def check_store(settings: Settings) -> Check:
    try:
        from regionscribe.backend.store import Store, default_url
    except ImportError:
        return Check("store", SKIP, "not configured: this version has no feedback store (backend/store.py)")
    url = default_url(settings)
    images = Path(settings.data_dir) / "images"
    sqlite_file = Path(url[len("sqlite:///"):].split("?", 1)[0]) if url.startswith("sqlite:///") else None
    created = sqlite_file is not None and not sqlite_file.exists()
    try:
        store = Store.open(url, images)
    except Exception as exc:
        if url.startswith("sqlite"):
            fix = (f"DATA_DIR ({settings.data_dir}) must be a writable folder on a local disk (it holds "
                   "store.sqlite3); when several machines write the store use PostgreSQL (STORE_URL=postgresql://...)")
        else:
            fix = ("is PostgreSQL up and reachable from here, does the database exist, are the user and password in "
                   "STORE_URL right? (psycopg 3 must be installed: pip install 'psycopg[binary]')")
        return Check("store", FAIL, f"cannot open the store {redacted_url(url)}: {_error(exc)}", fix)
    try:
        version = store.schema_version()
        projects = len(store.projects())
    except Exception as exc:
        return Check("store", FAIL, f"the store {redacted_url(url)} opened but cannot be read: {_error(exc)}",
                     "check the database's permissions; restore it from a backup if it is damaged")
    finally:
        store.close()
    detail = (f"{store.dialect} store {redacted_url(url)}{' (created now)' if created else ''}: schema version "
              f"{version}, {projects} project(s)")
    try:
        images.mkdir(parents=True, exist_ok=True)
        writable = os.access(images, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        return Check("store", WARN, detail + f"; the image cache {images} is not writable",
                     "give the ingest worker and the trainer write access to <DATA_DIR>/images")
    return Check("store", OK, detail)


def check_registry(settings: Settings) -> Check:
    root_name = getattr(settings, "registry_path", None)
    if root_name is None:
        return Check("registry", SKIP, "not configured: this version has no model registry setting")
    root = Path(root_name)
    if not root.exists():
        return Check("registry", WARN, f"no registry at {root} yet",
                     "nothing to do if no training run has finished yet (the trainer creates it); otherwise check "
                     "REGISTRY_DIR: every worker and the trainer must see the same folder at the same path")
    versions_dir = root / "versions"
    try:  # read without regionscribe.backend.core.registry.Registry: it creates folders, and falls back to the base checkpoint
        versions = sorted(p.name for p in versions_dir.iterdir() if (p / "manifest.json").is_file()) \
            if versions_dir.is_dir() else []
        pointer = root / "current"
        named = pointer.read_text().strip() if pointer.is_file() else None
    except OSError as exc:
        return Check("registry", FAIL, f"cannot read the registry at {root}: {_error(exc)}",
                     "check REGISTRY_DIR's permissions (the trainer writes it, workers read it)")
    detail = f"{root}: {len(versions)} version(s)"
    if named is not None:
        folder = versions_dir / named
        if not ((folder / "config.json").is_file() and any(
                (folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                       "adapter/adapter_model.safetensors"))):
            return Check("registry", FAIL, detail + f"; `current` names {named!r}, which is not a complete version",
                         "point `current` at a complete version (regionscribe.backend.core.registry.Registry(REGISTRY_DIR)"
                         ".set_current(VERSION), the rollback) or remove the `current` file to serve the base "
                         "checkpoint")
        detail += f", current {named}"
    else:
        detail += ", none current yet (workers serve MODEL_DIR or the embedded default)"
    if not os.access(root, os.W_OK):
        return Check("registry", WARN, detail + "; not writable from here",
                     "fine on an inference-only machine; the trainer needs write access to REGISTRY_DIR")
    return Check("registry", OK, detail)


def _announced(connection) -> dict | None:
    if connection is None:
        return None
    try:
        from regionscribe.backend.inference.worker import announced_model
    except ImportError:
        return None
    try:
        return announced_model(connection)
    except Exception:
        return None


def _default_checkpoint() -> Path:
    """model/default without importing regionscribe.model.describer (which imports torch: seconds)."""
    from regionscribe import model

    return Path(model.__file__).parent / "default"


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
        path, source = _default_checkpoint(), "the embedded default"
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
        return Check("model", FAIL, f"{config} is not a readable regionscribe config: {_error(exc)}",
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
        return Check("model", FAIL, check.detail + f"; loading it failed: {_error(exc)}", fix)
    check.detail += f"; loaded on {device} in {loaded:.1f} s, one box described in {1000 * described:.0f} ms"
    return check


def check_workers(settings: Settings, connection) -> list[Check]:
    if connection is None:
        return [Check("workers", SKIP, "needs Redis")]
    from regionscribe.backend.inference.worker import live_workers

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
            checks.append(Check(f"workers.{role}", FAIL, f"cannot list workers: {_error(exc)}",
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


def check_label_studio(settings: Settings, timeout: float) -> list[Check]:
    import requests

    from regionscribe.backend.labelstudio.fetcher import FetchError, LabelStudioAuth, _jwt_claims

    url = settings.label_studio_url
    if not url:
        return [Check("label_studio", WARN, "not configured: LABEL_STUDIO_URL is unset",
                      "set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) so that workers can fetch images uploaded to "
                      "Label Studio (/data/upload/...); images from other sources do not need it")]
    session = requests.Session()
    session.headers["User-Agent"] = "regionscribe-doctor"
    try:
        response = session.get(f"{url}/health", timeout=timeout)
    except requests.RequestException as exc:
        return [Check("label_studio", FAIL, f"cannot reach Label Studio at {url}: {type(exc).__name__}",
                      "is Label Studio running, and is LABEL_STUDIO_URL right as seen from this machine? (in "
                      "docker-compose.yml it is http://labelstudio:8080)")]
    if response.status_code != 200:
        return [Check("label_studio", FAIL, f"{url}/health answered HTTP {response.status_code}",
                      "LABEL_STUDIO_URL must be Label Studio's base URL (scheme, host, port, no path)")]
    checks = [Check("label_studio", OK, f"{url} is up")]
    key = settings.label_studio_api_key
    if not key:
        checks.append(Check("label_studio.auth", WARN, "LABEL_STUDIO_API_KEY is unset",
                            "set it to a personal access token (Label Studio: Account & Settings → Personal Access "
                            "Token) so that workers can download uploaded images"))
        return checks
    claims = _jwt_claims(key)
    kind = "legacy token" if claims is None else (
        "personal access token" if claims.get("token_type") == "refresh" else "access token")
    auth = LabelStudioAuth(url, key, session, timeout)
    try:
        header = auth.header()
    except FetchError as exc:
        checks.append(Check("label_studio.auth", FAIL, str(exc),
                            "create a new personal access token in Label Studio (Account & Settings) and put it in "
                            "LABEL_STUDIO_API_KEY; an expired or revoked one cannot be exchanged"))
        return checks
    try:
        response = session.get(f"{url}/api/current-user/whoami", headers=header, timeout=timeout,
                               allow_redirects=False)
    except requests.RequestException as exc:
        checks.append(Check("label_studio.auth", FAIL, f"cannot ask {url} who the key belongs to: "
                            f"{type(exc).__name__}", "retry; if it persists, check Label Studio's logs"))
        return checks
    if response.status_code == 200:
        try:
            who = response.json()
            user = who.get("email") or who.get("username") or f"user {who.get('id')}"
        except ValueError:
            user = "a user"
        checks.append(Check("label_studio.auth", OK, f"the {kind} is accepted (as {user})"))
    elif response.status_code in (301, 302, 401, 403):
        fix = ("copy a personal access token from Label Studio (Account & Settings → Personal Access Token) into "
               "LABEL_STUDIO_API_KEY")
        if kind == "legacy token":
            fix = ("check the token (Account & Settings → Legacy Token). Label Studio 1.23 refuses legacy tokens "
                   "unless the organisation allows them (its access-token settings; an organisation created while "
                   "Label Studio ran with --enable-legacy-api-token or LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true "
                   "allows them); a personal access token works either way")
        checks.append(Check("label_studio.auth", FAIL,
                            f"Label Studio refused the {kind} in LABEL_STUDIO_API_KEY (HTTP {response.status_code})",
                            fix))
    else:
        checks.append(Check("label_studio.auth", FAIL, f"/api/current-user/whoami answered HTTP "
                            f"{response.status_code}", "check Label Studio's logs"))
    return checks


def check_webhooks(settings: Settings, connection, timeout: float) -> list[Check]:
    from regionscribe.backend.labelstudio.webhooks import basic_auth_header, connected_projects, refusals

    checks = []
    if connection is None:
        return [Check("webhooks", SKIP, "needs Redis (the connected projects and the refusals are kept there)")]
    try:
        refused = refusals(connection)
        projects = connected_projects(connection)
    except Exception as exc:
        return [Check("webhooks", FAIL, f"cannot read Redis: {_error(exc)}", "check Redis (see the redis check)")]
    recover = ("the events refused so far are recovered by the sync (`regionscribe sync`, or the ingest worker every "
               "SYNC_INTERVAL seconds)")
    if refused["last_day"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(refused["last_at"])) if refused["last_at"] else "?"
        detail = (f"{refused['last_hour']} request(s) to /webhook refused with 401 in the last hour, "
                  f"{refused['last_day']} in the last 24 h (last at {when})")
        fix = ("Label Studio's webhook carries no or wrong Basic auth credentials (see the webhooks.project-N checks); "
               + recover)
        checks.append(Check("webhooks.401", FAIL if refused["last_hour"] else WARN, detail, fix))
    else:
        checks.append(Check("webhooks.401", OK, "no request to /webhook refused with 401 in the last 24 h"))
    if not projects:
        checks.append(Check("webhooks", SKIP, "no connected project yet (Label Studio calls /setup when a project "
                                              "connects the model)"))
        return checks
    if not settings.label_studio_api_enabled:
        status = FAIL if settings.basic_auth_enabled else WARN
        checks.append(Check("webhooks", status, f"{len(projects)} connected project(s), but LABEL_STUDIO_URL and "
                            "LABEL_STUDIO_API_KEY are not both set: their webhooks cannot be checked"
                            + (" or given the Basic auth header, so Label Studio's events get 401" if
                               settings.basic_auth_enabled else ""),
                            "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (a personal access token) for the web "
                            "server and the workers"))
        return checks
    from regionscribe.backend.labelstudio.api import LabelStudioError, client
    from regionscribe.backend.labelstudio.webhooks import inspect

    c = client(settings, timeout=timeout)
    header = basic_auth_header(settings)
    for pid, info in sorted(projects.items()):
        name = f"webhooks.project-{pid}"
        try:
            state = inspect(settings, c, pid, info.get("url") or "")
        except LabelStudioError as exc:
            gone = exc.status == 404
            checks.append(Check(name, WARN if gone else FAIL, str(exc),
                                "the project is gone from Label Studio; nothing to do" if gone else
                                "see the label_studio checks"))
            continue
        if "missing" in state.problems:
            checks.append(Check(name, WARN if settings.sync_interval > 0 else FAIL,
                                f"no webhook to {state.url}: annotations reach the store only through the sync"
                                + (f" (every {settings.sync_interval} s)" if settings.sync_interval > 0 else
                                   ", and SYNC_INTERVAL=0 turns that off: they do not reach it at all"),
                                f"in Label Studio, remove the model from project {pid}'s settings and connect it again "
                                f"(Label Studio then creates the webhook), or POST /api/webhooks with "
                                f"{{\"project\": {pid}, \"url\": \"{state.url}\", \"send_payload\": true, "
                                "\"send_for_all_actions\": true}"))
            continue
        hook = state.keep
        parts = [f"webhook {hook.get('id')} to {state.url}"]
        if header is not None:
            parts.append("carries the Basic auth header" if state.authenticated else
                         "carries " + ("other credentials" if "wrong credentials" in state.problems else
                                       "no credentials") + ": every event gets 401")
        if state.duplicates:
            ids = ", ".join(str(h.get("id")) for h in state.duplicates)
            parts.append(f"{len(state.duplicates)} more to the same URL ({ids}): each event arrives more than once")
        if "inactive" in state.problems:
            parts.append("inactive: Label Studio sends nothing through it")
        fix = ""
        if state.authenticated is False or state.duplicates:
            fix = (f"open project {pid}'s model settings in Label Studio (it calls /setup, and the ingest worker then "
                   "sets the header and removes duplicates), or PATCH /api/webhooks/<id> with {\"headers\": "
                   "{\"Authorization\": \"Basic <base64 of BASIC_AUTH_USER:BASIC_AUTH_PASS>\"}} and DELETE the "
                   "duplicates; " + recover)
        elif "inactive" in state.problems:
            fix = f"activate webhook {hook.get('id')} in project {pid}'s settings (Webhooks); " + recover
        status = FAIL if state.authenticated is False else WARN if state.problems else OK
        checks.append(Check(name, status, "; ".join(parts), fix))
    return checks


def check_sync(settings: Settings, connection) -> Check:
    if settings.sync_interval <= 0:
        return Check("sync", WARN, "SYNC_INTERVAL=0: no periodic sync with Label Studio",
                     "set SYNC_INTERVAL (seconds, default 300) so that events the webhook loses (backend down, 401, "
                     "timeout) still reach the store; `regionscribe sync` does it by hand")
    if not settings.label_studio_api_enabled:
        return Check("sync", WARN, "the periodic sync is off: LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not both "
                                   "set", "set both for the ingest worker (a personal access token)")
    notes = []
    try:
        from regionscribe.backend.store import Store, default_url

        store = Store.open(default_url(settings), Path(settings.data_dir) / "images")
        try:
            by_source = store.regions_by_source()
        finally:
            store.close()
        only = sum(c["sync"] for c in by_source.values())
        total = sum(c["regions"] for c in by_source.values())
        notes.append(f"{only} of {total} live regions arrived only through the sync")
    except Exception as exc:
        notes.append(f"store not read ({_error(exc)})")
    last = None
    if connection is not None:
        try:

            raw = connection.get(SYNC_LAST_KEY)
            last = json.loads(raw) if raw else None
        except Exception:
            last = None
    if last is None:
        return Check("sync", WARN, "; ".join(["no periodic sync has run yet", *notes]),
                     "the ingest worker (`regionscribe worker --queue ingest`) runs it every SYNC_INTERVAL seconds; "
                     "is one running with LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY set?")
    age = time.time() - float(last.get("at", 0))
    errors = {p: r["error"] for p, r in (last.get("projects") or {}).items() if isinstance(r, dict) and "error" in r}
    detail = "; ".join([f"last sync {age:.0f} s ago over {len(last.get('projects') or {})} project(s)", *notes])
    if errors:
        return Check("sync", WARN, detail + f"; failed for {', '.join(sorted(errors))}: "
                     + "; ".join(sorted(errors.values()))[:300], "see the ingest worker's log")
    if age > 3 * settings.sync_interval + 60:
        return Check("sync", WARN, detail + f" (SYNC_INTERVAL is {settings.sync_interval} s)",
                     "is the ingest worker running? (`regionscribe worker --queue ingest`)")
    return Check("sync", OK, detail)


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


# ------------------------------------------------------------------------------------------------------ running


def run_checks(settings: Settings | None = None, load: bool = False, timeout: float = 5.0,
               backend_url: str | None = None, env=None) -> list[Check]:
    """Every check, in order. Settings default to the environment's (a parse error is itself a FAIL)."""
    env = os.environ if env is None else env
    checks: list[Check] = []

    def timed(fn, *args):
        started = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as exc:  # a check must never crash the doctor
            result = Check(getattr(fn, "__name__", "check").removeprefix("check_"), FAIL,
                           f"the check itself failed: {_error(exc)}", "please report this")
        items = result if isinstance(result, list) else [result]
        for c in items:
            c.seconds = round(time.perf_counter() - started, 3)
        checks.extend(items)
        return result

    if settings is None:
        try:
            settings = Settings.from_env(env)
        except ValueError as exc:
            return [Check("settings", FAIL, str(exc), "fix that environment variable (README, Settings)")]
    checks.append(Check("settings", OK, "every variable parses"))
    started = time.perf_counter()
    redis_check, connection = check_redis(settings, timeout)
    redis_check.seconds = round(time.perf_counter() - started, 3)
    checks.append(redis_check)
    timed(check_store, settings)
    timed(check_registry, settings)
    timed(check_model, settings, connection, load)
    timed(check_workers, settings, connection)
    timed(check_label_studio, settings, timeout)
    timed(check_webhooks, settings, connection, timeout)
    timed(check_sync, settings, connection)
    if backend_url:
        timed(check_backend, backend_url, timeout)
    secrets = _secrets(settings, env)
    for c in checks:
        c.detail, c.fix = _scrub(c.detail, secrets), _scrub(c.fix, secrets)
    return checks


def render(checks: list[Check]) -> str:
    lines = ["regionscribe doctor"]
    width = max(len(c.name) for c in checks)
    for c in checks:
        lines.append(f"  {c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in (FAIL, WARN):
            lines.append(f"  {'':<4}  {'':<{width}}  fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    lines.append(f"{failed} problem(s), {warned} warning(s)" if failed or warned else "all checks passed")
    return "\n".join(lines)


def main(json_output: bool = False, load: bool = False, timeout: float = 5.0, backend_url: str | None = None,
         settings: Settings | None = None, out=None) -> int:
    """Run the checks, print them (text or JSON), return the exit status: 1 when any check failed."""
    out = out or sys.stdout
    checks = run_checks(settings, load=load, timeout=timeout, backend_url=backend_url)
    ok = not any(c.status == FAIL for c in checks)
    if json_output:
        print(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}, indent=2), file=out)
    else:
        print(render(checks), file=out)
    return 0 if ok else 1


if __name__ == "__main__":  # python -m regionscribe.backend.ops.doctor [--json] [--load] ...
    from regionscribe.backend.ops.cli import main as cli

    sys.exit(cli(["doctor", *sys.argv[1:]]))
