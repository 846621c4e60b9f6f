"""The doctor's checks of what every process shares: Redis, the feedback store and the model registry."""
from __future__ import annotations

import os
from pathlib import Path

from regionscribe.backend.core.connections import redis_connection
from regionscribe.backend.core.settings import Settings, redacted_url
from regionscribe.backend.ops.doctor.checks import FAIL, OK, SKIP, WARN, Check, short_error

MIN_REDIS = (6, 0, 6)


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
        return Check("redis", FAIL, f"cannot reach Redis at {where}: {short_error(exc)}", fix), None
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
        return Check("store", SKIP, "not configured: this version has no feedback store (backend/store/)")
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
        return Check("store", FAIL, f"cannot open the store {redacted_url(url)}: {short_error(exc)}", fix)
    try:
        version = store.schema_version()
        projects = len(store.projects())
    except Exception as exc:
        return Check("store", FAIL, f"the store {redacted_url(url)} opened but cannot be read: {short_error(exc)}",
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
    # read without regionscribe.backend.core.registry.Registry: it creates folders, and falls back to the base
    # checkpoint
    try:
        versions = sorted(p.name for p in versions_dir.iterdir() if (p / "manifest.json").is_file()) \
            if versions_dir.is_dir() else []
        pointer = root / "current"
        named = pointer.read_text().strip() if pointer.is_file() else None
    except OSError as exc:
        return Check("registry", FAIL, f"cannot read the registry at {root}: {short_error(exc)}",
                     "check REGISTRY_DIR's permissions (the trainer writes it, workers read it)")
    detail = f"{root}: {len(versions)} version(s)"
    if named is not None:
        folder = versions_dir / named
        if not ((folder / "config.json").is_file() and any(
                (folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                       "adapter/adapter_model.safetensors"))):
            return Check("registry", FAIL, detail + f"; `current` names {named!r}, which is not a complete version",
                         "point `current` at a complete version "
                         "(regionscribe.backend.core.registry.Registry(REGISTRY_DIR)"
                         ".set_current(VERSION), the rollback) or remove the `current` file to serve the base "
                         "checkpoint")
        detail += f", current {named}"
    else:
        detail += ", none current yet (workers serve MODEL_DIR or the embedded default)"
    if not os.access(root, os.W_OK):
        return Check("registry", WARN, detail + "; not writable from here",
                     "fine on an inference-only machine; the trainer needs write access to REGISTRY_DIR")
    return Check("registry", OK, detail)
