"""regionscribe's settings: every environment variable the backend reads, with its default, read once.

`get_settings()` reads the environment the first time it is called and returns the same frozen `Settings` after
that; `Settings.from_env(env)` builds one from any mapping (tests pass their own). Nothing else in backend/ reads
os.environ for configuration.
"""
from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields, replace
from functools import lru_cache
from typing import Mapping
from urllib.parse import urlsplit

# MODEL_DIR value that makes workers build an untrained tiny model
# (`regionscribe.training.stages.untrained_describer("tiny", seed=0)`) instead of loading a checkpoint: fast,
# well-formed gibberish. Meant for tests and smoke runs.
TINY_UNTRAINED = "tiny-untrained"
LOG_FORMATS = ("text", "json")  # LOG_FORMAT's values (regionscribe.backend.core.logs)
MAX_DEMONSTRATIONS = 16  # DEMONSTRATIONS' ceiling: each one adds its region token and its answer to the prompt


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    # --- where things are -------------------------------------------------------------------------------------
    redis_url: str | None = None  # REDIS_URL: Redis for the job queue and shared counters; unset → `make run` starts a private redis-server
    model_dir: str | None = None  # MODEL_DIR: checkpoint the workers load; unset → the embedded default; "tiny-untrained" → an untrained tiny model (tests)
    device: str | None = None  # DEVICE: torch device for the workers ("cuda", "cuda:1", "cpu"); unset → CUDA when available
    cache_size: int = 64  # CACHE_SIZE: images whose features each worker keeps in its LRU cache

    # --- Label Studio ---------------------------------------------------------------------------------------
    label_studio_url: str | None = None  # LABEL_STUDIO_URL: base URL of Label Studio, for /data/upload and /data/local-files images
    label_studio_api_key: str | None = field(default=None, repr=False)  # LABEL_STUDIO_API_KEY: legacy token or personal access token; only ever sent to LABEL_STUDIO_URL's host

    # --- HTTP server ------------------------------------------------------------------------------------------
    host: str = "0.0.0.0"  # HOST: address the web server binds to
    port: int = 9090  # PORT: port the web server listens on
    web_workers: int = 2  # WEB_WORKERS: gunicorn worker processes (threads: WEB_THREADS each)
    web_threads: int = 4  # WEB_THREADS: threads per gunicorn worker (a /predict mostly waits on Redis)
    basic_auth_user: str | None = None  # BASIC_AUTH_USER: when set with BASIC_AUTH_PASS, every route but /health needs HTTP Basic auth
    basic_auth_pass: str | None = field(default=None, repr=False)  # BASIC_AUTH_PASS: password for BASIC_AUTH_USER (secret: never logged)
    max_request_bytes: int = 16 * 1024 * 1024  # MAX_REQUEST_BYTES: largest request body accepted (413 above)

    # --- images ---------------------------------------------------------------------------------------------
    image_root: str | None = None  # IMAGE_ROOT: local image files are read only under this folder; unset → local paths refused
    allowed_hosts: tuple[str, ...] = ()  # ALLOWED_HOSTS: comma list of other http(s) hosts (host or host:port) images may come from
    max_image_bytes: int = 32 * 1024 * 1024  # MAX_IMAGE_BYTES: largest image download or file accepted
    max_image_pixels: int = 64_000_000  # MAX_IMAGE_PIXELS: largest decoded image (width*height); bigger ones are refused as bombs
    fetch_timeout: float = 10.0  # FETCH_TIMEOUT: seconds for connecting to and reading from an image host
    max_redirects: int = 3  # MAX_REDIRECTS: redirects followed (each one re-checked) when fetching an image

    # --- queue ----------------------------------------------------------------------------------------------
    inference_queue: str = "inference"  # INFERENCE_QUEUE: RQ queue name for describe jobs
    training_queue: str = "training"  # TRAINING_QUEUE: RQ queue name for training runs (feedback loop)
    ingest_queue: str = "ingest"  # INGEST_QUEUE: RQ queue for ingest jobs (caching annotated images by content hash)
    training_lease_seconds: float = 60.0  # TRAINING_LEASE_SECONDS: a training run's lease in the store lasts this long; the running worker renews it every third of it, and a run whose worker died frees the project after at most this long even when Redis lost the job
    training_timeout: int = 3600  # TRAINING_TIMEOUT: seconds a training run may take before rq stops it
    predict_timeout: float = 60.0  # PREDICT_TIMEOUT: seconds a /predict waits for the workers before answering a per-task error (LS gives up at 100)
    job_timeout: int = 120  # JOB_TIMEOUT: seconds a worker may spend on one job before rq stops it
    result_ttl: int = 300  # RESULT_TTL: seconds a finished job's result stays in Redis
    inference_batch_jobs: int = 16  # INFERENCE_BATCH_JOBS: waiting describe jobs an inference worker answers in one batched pass (1: one job per pass)
    inference_batch_wait_ms: float = 2.0  # INFERENCE_BATCH_WAIT_MS: milliseconds an inference worker waits for more jobs when fewer than INFERENCE_BATCH_JOBS are waiting (0: take only what is waiting)
    worker_heartbeat: float = 2.0  # WORKER_HEARTBEAT: seconds between a worker's liveness beats; 4 missed beats = dead (a waiting /predict then fails fast)

    # --- feedback loop: the store of corrected annotations and the retraining policy ---------------------------
    data_dir: str = "./var"  # DATA_DIR: where the SQLite store (store.sqlite3) and the cached training images (images/) live
    store_url: str | None = field(default=None, repr=False)  # STORE_URL (or DATABASE_URL): sqlite:///path or postgresql://user@host/db; unset → sqlite:///<DATA_DIR>/store.sqlite3
    retrain_after: int = 50  # RETRAIN_AFTER: new or changed regions in a project that trigger a training run
    registry_dir: str | None = None  # REGISTRY_DIR: model versions (one folder each) and the `current` pointer; unset → <DATA_DIR>/registry
    retrain_stage1_steps: int = 30  # RETRAIN_STAGE1_STEPS: stage-1 (align, LM frozen) steps of a feedback run
    retrain_stage2_steps: int = 300  # RETRAIN_STAGE2_STEPS: stage-2 (end-to-end) steps of a feedback run
    retrain_lr: float = 3e-4  # RETRAIN_LR: learning rate of a feedback run's two stages (the LM's; the region encoder's is this times RETRAIN_VISUAL_LR_SCALE)
    retrain_visual_lr_scale: float = 0.5  # RETRAIN_VISUAL_LR_SCALE: region encoder's learning-rate factor in feedback runs (the LM is trained by then, so its gradients no longer scramble the region features)
    replay_ratio: float = 2.0  # REPLAY_RATIO: replayed base (synthetic) samples per correction sample, so old skills stay (README, Benchmarks: feedback_loop.py)
    promotion_tolerance: float = 2.0  # PROMOTION_TOLERANCE: points of accuracy a candidate may lose on the base test split, on each attribute and each relation axis alone, and still become current
    promotion_cider_tolerance: float = 25.0  # PROMOTION_CIDER_TOLERANCE: points of caption CIDEr-D (0-1000 scale) a candidate may lose on the base test split and still become current
    promotion_base_scenes: int = 60  # PROMOTION_BASE_SCENES: base test scenes scored for the promotion gate
    sync_interval: int = 300  # SYNC_INTERVAL: seconds between reconciliations of every connected project with Label Studio (regionscribe.backend.feedback.sync; run by the ingest worker); 0 turns it off

    # --- model output -----------------------------------------------------------------------------------------
    multiple_choice_threshold: float = 0.3  # MULTIPLE_CHOICE_THRESHOLD: choice="multiple" gets every value at least this probable (and the top one)
    relation_threshold: float = 0.5  # RELATION_THRESHOLD: <Relations> labels at least this probable are sent
    demonstrations: int = 0  # DEMONSTRATIONS: k, the accepted regions of the same project (other tasks) most like a box, shown to the model with their accepted answers before it describes the box; 0 turns it off
    log_level: str = "INFO"  # LOG_LEVEL: Python logging level for the web server, worker and runner
    log_format: str = "text"  # LOG_FORMAT: "text" (one readable line per record) or "json" (one JSON object per line, with the request id; regionscribe.backend.core.logs)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from `env` (default: os.environ). Empty strings count as unset."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        kwargs: dict = {}
        for f in fields(cls):
            raw = get(f.name.upper())
            if raw is None:
                continue
            default = None if f.default is MISSING else f.default
            try:
                if f.name == "allowed_hosts":
                    kwargs[f.name] = _list(raw)
                elif f.name == "log_format":
                    kwargs[f.name] = raw.strip().lower()
                elif isinstance(default, bool):
                    kwargs[f.name] = _bool(raw)
                elif isinstance(default, int):
                    kwargs[f.name] = int(raw)
                elif isinstance(default, float):
                    kwargs[f.name] = float(raw)
                else:
                    kwargs[f.name] = raw
            except ValueError:
                raise ValueError(f"{f.name.upper()}={raw!r} is not a valid {type(default).__name__}") from None
        if kwargs.get("inference_batch_jobs", 1) < 1:
            raise ValueError(f"INFERENCE_BATCH_JOBS={get('INFERENCE_BATCH_JOBS')!r}: at least 1 job per pass")
        if kwargs.get("inference_batch_wait_ms", 0) < 0:
            raise ValueError(f"INFERENCE_BATCH_WAIT_MS={get('INFERENCE_BATCH_WAIT_MS')!r}: milliseconds, 0 or more")
        if kwargs.get("sync_interval", 0) < 0:
            raise ValueError(f"SYNC_INTERVAL={get('SYNC_INTERVAL')!r}: seconds between syncs, or 0 for none")
        if not 0 <= kwargs.get("demonstrations", 0) <= MAX_DEMONSTRATIONS:
            raise ValueError(f"DEMONSTRATIONS={get('DEMONSTRATIONS')!r}: the number of demonstrations per box, 0 (off) "
                             f"to {MAX_DEMONSTRATIONS}")
        if kwargs.get("log_format", "text") not in LOG_FORMATS:
            raise ValueError(f"LOG_FORMAT={get('LOG_FORMAT')!r}: use one of {', '.join(LOG_FORMATS)}")
        # Label Studio's own tools also accept these names
        if "label_studio_url" not in kwargs and get("LABEL_STUDIO_HOST"):
            kwargs["label_studio_url"] = get("LABEL_STUDIO_HOST")
        if "label_studio_api_key" not in kwargs and get("LABEL_STUDIO_ACCESS_TOKEN"):
            kwargs["label_studio_api_key"] = get("LABEL_STUDIO_ACCESS_TOKEN")
        if "store_url" not in kwargs and get("DATABASE_URL"):
            kwargs["store_url"] = get("DATABASE_URL")
        if kwargs.get("label_studio_url"):
            kwargs["label_studio_url"] = kwargs["label_studio_url"].rstrip("/")
        return cls(**kwargs)

    @property
    def registry_path(self) -> str:
        return self.registry_dir or os.path.join(self.data_dir, "registry")

    @property
    def basic_auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def label_studio_api_enabled(self) -> bool:
        """Whether the backend can call Label Studio's API (webhook repair, sync): LABEL_STUDIO_URL and
        LABEL_STUDIO_API_KEY both set."""
        return bool(self.label_studio_url and self.label_studio_api_key)

    def replace(self, **changes) -> "Settings":
        return replace(self, **changes)


def redacted_url(url: str) -> str:
    """A URL with its password replaced by ***, for logs and reports (Redis, PostgreSQL)."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings.from_env()
