"""The feedback store: durable region-text records built from Label Studio's annotation webhooks, the suggestions
the model made, the cached training images, and the per-project counters the retraining policy reads.

    store = Store.open("sqlite:///var/store.sqlite3")       # or postgresql://user@host:5432/db (psycopg 3)
    snap = store.snapshot(project_id)                        # Snapshot(id, records: list[RegionRecord])
    store.mark_training_started(project_id, snap.id)         # pending_count(project_id) restarts from here
    store.edit_rate()                                        # {model_version: {"regions", "changed", "rate"}}

Backends. SQLite by default (`STORE_URL`, default `sqlite:///<DATA_DIR>/store.sqlite3`; `sqlite:///rel/path` or
`sqlite:////abs/path`), PostgreSQL when the URL is `postgresql://...` (`STORE_URL`, else `DATABASE_URL`). Plain SQL
through a thin adapter: statements are written with `?` placeholders and shared by both; the schema is a list of
numbered migration steps recorded in `schema_version` and applied at open, under an exclusive lock (SQLite:
`BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock), so concurrent openers are safe.

Durability. SQLite runs in WAL mode with `synchronous=FULL`: every commit fsyncs the WAL, so a record the webhook
acknowledged survives a power loss, not only a process crash (NORMAL would only lose the last commits on power loss,
but the webhook promises "durable before the 2xx", and a commit costs about a millisecond more). Writers take the
write lock at BEGIN (`BEGIN IMMEDIATE`) and wait up to 30 s for it (busy_timeout); readers never block writers.
PostgreSQL commits are durable by its own settings. Transient conflicts (SQLite busy, PostgreSQL deadlock or
serialization failure, a dropped connection) are retried.

Idempotency rules (see `record_annotation`): an annotation's state is the newest by (updated_at, content digest),
so the same event twice, or an UPDATE arriving before its CREATE, ends in the same state; an accepted version
replaces the annotation's region set (regions no longer in it are marked deleted); ANNOTATIONS_DELETED leaves a
tombstone, and a CREATE/UPDATE arriving after it is ignored. Every event is kept raw in `events` (deduplicated by
digest, with a delivery count) for audit and replay.

Pending count. Each project has a change counter; every accepted write that adds or changes a region's content
stamps it with the next value (`change_seq`). `snapshot()` records the counter value it saw; `mark_training_started`
moves the project's watermark there; `pending_count` counts live trainable regions stamped above the watermark, so
events that arrive while a run is going count toward the next run. A run that never completes (`training_failed`:
its worker was killed, it raised) gives its count back: the watermark returns to the newest snapshot of a run that did
not fail, and a training request it had satisfied is pending again.

Training leases. `acquire_training_lease` gives a project's training run a row with an expiry, which the running
worker renews (`renew_training_lease`) and releases at the end; the policy counts a live lease as a run going, so one
run per project holds even when Redis loses its data mid-run. A run closed as failed (`training_failed`) releases its
lease.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import random
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from regionscribe.backend.core.settings import redacted_url

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------- the schema

# (version, name, SQL). Placeholders: {AUTOID} an auto-increment primary key, {BIGINT}, {REAL}. Append new steps;
# never edit an applied one.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial schema", """
CREATE TABLE projects (
    project_id {BIGINT} PRIMARY KEY,
    label_config TEXT,
    label_config_at {REAL},
    change_seq {BIGINT} NOT NULL DEFAULT 0,
    trained_seq {BIGINT} NOT NULL DEFAULT 0,
    training_started_at {REAL},
    last_snapshot_id TEXT,
    train_requested_at {REAL},
    created_at {REAL} NOT NULL
);
CREATE TABLE events (
    id {AUTOID},
    digest TEXT NOT NULL UNIQUE,
    action TEXT NOT NULL,
    project_id {BIGINT},
    annotation_id {BIGINT},
    received_at {REAL} NOT NULL,
    last_received_at {REAL} NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    outcome TEXT,
    payload TEXT NOT NULL
);
CREATE TABLE annotations (
    annotation_id {BIGINT} PRIMARY KEY,
    project_id {BIGINT},
    task_id {BIGINT},
    version_us {BIGINT},
    version_digest TEXT,
    created_at TEXT,
    updated_at TEXT,
    was_cancelled INTEGER NOT NULL DEFAULT 0,
    ground_truth INTEGER NOT NULL DEFAULT 0,
    regions INTEGER NOT NULL DEFAULT 0,
    deleted_at {REAL},
    stored_at {REAL} NOT NULL
);
CREATE TABLE regions (
    annotation_id {BIGINT} NOT NULL,
    region_id TEXT NOT NULL,
    project_id {BIGINT} NOT NULL,
    task_id {BIGINT} NOT NULL,
    image_ref TEXT,
    image_key TEXT,
    image_sha256 TEXT,
    image_width INTEGER,
    image_height INTEGER,
    original_width INTEGER,
    original_height INTEGER,
    x {REAL} NOT NULL,
    y {REAL} NOT NULL,
    width {REAL} NOT NULL,
    height {REAL} NOT NULL,
    rotation {REAL} NOT NULL DEFAULT 0,
    px_x1 {REAL},
    px_y1 {REAL},
    px_x2 {REAL},
    px_y2 {REAL},
    labels TEXT NOT NULL,
    caption TEXT,
    detailed_caption TEXT,
    relation_text TEXT,
    attributes TEXT NOT NULL,
    relations TEXT NOT NULL,
    completed_by {BIGINT},
    completed_by_email TEXT,
    created_at TEXT,
    updated_at TEXT,
    lead_time {REAL},
    prefilled_by TEXT,
    changed INTEGER,
    has_content INTEGER NOT NULL,
    content_digest TEXT NOT NULL,
    change_seq {BIGINT} NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    deleted_at {REAL},
    ground_truth INTEGER NOT NULL DEFAULT 0,
    was_cancelled INTEGER NOT NULL DEFAULT 0,
    stored_at {REAL} NOT NULL,
    PRIMARY KEY (annotation_id, region_id)
);
CREATE INDEX regions_project_seq ON regions (project_id, change_seq);
CREATE INDEX regions_image_key ON regions (image_key);
CREATE INDEX regions_prefilled_by ON regions (prefilled_by);
CREATE TABLE suggestions (
    project_id {BIGINT} NOT NULL,
    task_id {BIGINT} NOT NULL,
    region_id TEXT NOT NULL,
    model_version TEXT NOT NULL,
    caption TEXT,
    detailed_caption TEXT,
    relation_text TEXT,
    attributes TEXT NOT NULL,
    suggested_at {REAL} NOT NULL,
    PRIMARY KEY (project_id, task_id, region_id)
);
CREATE TABLE images (
    image_key TEXT PRIMARY KEY,
    image_ref TEXT NOT NULL,
    sha256 TEXT,
    ext TEXT,
    width INTEGER,
    height INTEGER,
    bytes {BIGINT},
    fetched_at {REAL},
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_attempt_at {REAL}
);
CREATE TABLE snapshots (
    project_id {BIGINT} NOT NULL,
    snapshot_id TEXT NOT NULL,
    max_seq {BIGINT} NOT NULL,
    regions INTEGER NOT NULL,
    created_at {REAL} NOT NULL,
    PRIMARY KEY (project_id, snapshot_id)
);
CREATE TABLE training_runs (
    id {AUTOID},
    project_id {BIGINT} NOT NULL,
    snapshot_id TEXT NOT NULL,
    max_seq {BIGINT} NOT NULL,
    started_at {REAL} NOT NULL
);
"""),
    # a run's outcome, so a run that never completes (its worker killed, an exception) gives its count back
    (2, "training run outcome", """
ALTER TABLE training_runs ADD COLUMN job_id TEXT;
ALTER TABLE training_runs ADD COLUMN cleared_request_at {REAL};
ALTER TABLE training_runs ADD COLUMN finished_at {REAL};
ALTER TABLE training_runs ADD COLUMN outcome TEXT;
CREATE INDEX training_runs_project ON training_runs (project_id, id)
"""),
    # where each event came from ("webhook": Label Studio's webhook; "sync": reconciliation with Label Studio's API,
    # regionscribe.backend.feedback.sync), which path brought the version an annotation holds, and, per region, "webhook" when a webhook
    # delivered its current content, else "sync" (a rising count of the latter means the webhook path is broken).
    # Everything stored before this step came through the webhook.
    (3, "event source", """
ALTER TABLE events ADD COLUMN source TEXT NOT NULL DEFAULT 'webhook';
ALTER TABLE annotations ADD COLUMN source TEXT;
ALTER TABLE regions ADD COLUMN source TEXT NOT NULL DEFAULT 'webhook';
UPDATE annotations SET source = 'webhook' WHERE version_us IS NOT NULL;
CREATE INDEX annotations_project ON annotations (project_id);
CREATE INDEX regions_project_source ON regions (project_id, source)
"""),
    # a training run's lease: one row per project while a run holds it, with an expiry the running worker renews
    # (regionscribe.backend.feedback.training_run), so "one run per project" survives Redis losing its data (FLUSHALL, a restart without
    # persistence): the policy enqueues nothing and a second job refuses to start while the lease is live
    (4, "training leases", """
CREATE TABLE training_leases (
    project_id {BIGINT} PRIMARY KEY,
    holder TEXT NOT NULL,
    acquired_at {REAL} NOT NULL,
    renewed_at {REAL} NOT NULL,
    expires_at {REAL} NOT NULL
)
"""),
    # a region's shape when it is not a rectangle (regionscribe.backend.labelstudio.shapes.Shape.to_json: polygon points, ellipse, brush mask
    # as Label Studio's RLE, keypoint); x, y, width, height stay its bounding box. NULL: a rectangle.
    (5, "region shape", """
ALTER TABLE regions ADD COLUMN shape TEXT
"""),
]

SOURCES = ("webhook", "sync")  # the values of events.source, annotations.source and regions.source

_TYPES = {
    "sqlite": {"AUTOID": "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT": "INTEGER", "REAL": "REAL"},
    "postgresql": {"AUTOID": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "BIGINT": "BIGINT",
                   "REAL": "DOUBLE PRECISION"},
}

REGION_COLUMNS = (
    "annotation_id", "region_id", "project_id", "task_id", "image_ref", "image_key", "image_sha256", "image_width",
    "image_height", "original_width", "original_height", "x", "y", "width", "height", "rotation", "px_x1", "px_y1",
    "px_x2", "px_y2",
    "labels", "caption", "detailed_caption", "relation_text", "attributes", "relations", "completed_by",
    "completed_by_email", "created_at", "updated_at", "lead_time", "prefilled_by", "changed", "has_content",
    "content_digest", "change_seq", "deleted", "deleted_at", "ground_truth", "was_cancelled", "stored_at", "source",
    "shape",
)


_NO_LOCK = nullcontext()


class StoreError(RuntimeError):
    """The store cannot be opened or written (bad URL, unreachable database, failed migration)."""


# ------------------------------------------------------------------------------------------------ data types


@dataclass(frozen=True)
class RegionInput:
    """One region of an annotation, as ingest parsed it from Label Studio results (percent geometry)."""

    region_id: str
    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0
    labels: tuple[str, ...] = ()
    caption: str | None = None
    detailed_caption: str | None = None
    relation_text: str | None = None
    attributes: dict[str, list] = field(default_factory=dict)  # control name → values (taxonomy: list of paths)
    relations: list[dict] = field(default_factory=list)  # [{"to": region id, "labels": [...], "direction": ...}]
    original_width: int | None = None
    original_height: int | None = None
    shape: dict | None = None  # regionscribe.backend.labelstudio.shapes.Shape.to_json() of a polygon, ellipse, brush or keypoint; None: a box

    @property
    def has_content(self) -> bool:
        return bool(self.caption or self.detailed_caption or self.relation_text
                    or any(values for values in self.attributes.values()))

    def digest(self, was_cancelled: bool) -> str:
        body = [round(self.x, 6), round(self.y, 6), round(self.width, 6), round(self.height, 6),
                round(self.rotation, 6), list(self.labels), self.caption, self.detailed_caption, self.relation_text,
                self.attributes, self.relations, bool(was_cancelled)]
        if self.shape is not None:  # (rectangles keep the digest they had before shapes)
            body.append(self.shape)
        return hashlib.sha256(_canonical(body).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class AnnotationInput:
    """An annotation as one ANNOTATION_CREATED/UPDATED event carries it, parsed by ingest."""

    project_id: int
    task_id: int
    annotation_id: int
    image_ref: str | None
    regions: tuple[RegionInput, ...]
    completed_by: int | None = None
    completed_by_email: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    lead_time: float | None = None
    was_cancelled: bool = False
    ground_truth: bool = False
    digest: str = ""  # of the annotation's meaningful content (result, flags, annotator)

    @property
    def version_us(self) -> int:
        """The annotation's version: its updated_at (else created_at) in microseconds since the epoch."""
        for stamp in (self.updated_at, self.created_at):
            us = parse_time_us(stamp)
            if us is not None:
                return us
        return 0


@dataclass(frozen=True)
class Suggestion:
    """What the model suggested for one region (remembered at /predict time)."""

    task_id: int
    region_id: str
    model_version: str
    caption: str | None = None
    detailed_caption: str | None = None
    relation_text: str | None = None
    attributes: dict[str, list] = field(default_factory=dict)


@dataclass(frozen=True)
class RegionRecord:
    """One live (or deleted) region of an annotation: a region-text training pair and its provenance."""

    project_id: int
    task_id: int
    annotation_id: int
    region_id: str
    image_ref: str | None
    image_sha256: str | None  # None until the ingest job (or the sweep) cached the image
    image_width: int | None  # of the decoded (EXIF-rotated) image; None until cached
    image_height: int | None
    x: float  # percent of the image, top-left corner (Label Studio units)
    y: float
    width: float
    height: float
    rotation: float  # degrees, about the top-left corner
    pixel_box: tuple[float, float, float, float] | None  # xyxy in pixels of the decoded image (else LS's original size)
    labels: tuple[str, ...]  # the region tool's label values (RectangleLabels, PolygonLabels...)
    caption: str | None
    detailed_caption: str | None
    relation_text: str | None
    attributes: dict[str, list]  # control name → values; Taxonomy values are paths (lists)
    relations: list[dict]  # [{"to": region id, "labels": [...], "direction": "right"}]
    completed_by: int | None
    completed_by_email: str | None
    created_at: str | None  # the annotation's, as Label Studio sent it (ISO 8601)
    updated_at: str | None
    lead_time: float | None
    prefilled_by: str | None  # model version whose suggestion this region had, if any
    changed: bool | None  # True: the annotator changed the suggestion; False: confirmed it; None: not prefilled
    deleted: bool
    deleted_at: float | None
    ground_truth: bool
    was_cancelled: bool
    image_path: Path | None  # the cached image file, when it is on disk
    source: str = "webhook"  # "webhook" when a webhook delivered the region's current content, else "sync"
    shape: dict | None = None  # regionscribe.backend.labelstudio.shapes.Shape.to_json() when not a rectangle (x..height: its bounding box)


@dataclass(frozen=True)
class Snapshot:
    id: str
    records: list[RegionRecord]


# --------------------------------------------------------------------------------------------------- helpers


def _source(value: str) -> str:
    if value not in SOURCES:
        raise ValueError(f"unknown event source {value!r}: use one of {', '.join(SOURCES)}")
    return value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def parse_time_us(value) -> int | None:
    """An ISO 8601 time (Label Studio's "2024-05-01T12:00:00.123456Z") or epoch seconds → microseconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(round(float(value) * 1_000_000))
    try:
        stamp = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    delta = stamp - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def image_key(image_ref: str | None) -> str | None:
    """The key of an image reference (references can be long data: URIs; keys index well)."""
    return hashlib.sha256(image_ref.encode()).hexdigest()[:32] if image_ref else None


def _norm_text(value: str | None) -> str:
    return " ".join((value or "").split())


def _norm_values(values) -> list:
    """An attribute's values, order-insensitive (taxonomy paths stay paths)."""
    out = []
    for v in values or []:
        out.append(_canonical([str(p) for p in v]) if isinstance(v, (list, tuple)) else _canonical(str(v)))
    return sorted(out)


def differs_from_suggestion(region: RegionInput, suggestion: Suggestion) -> bool:
    """Whether the annotator changed what the model pre-filled: the caption (whitespace-normalised), the detailed
    caption or relation text when suggested, or any attribute (over the union of the controls either side filled)."""
    if suggestion.caption is not None and _norm_text(region.caption) != _norm_text(suggestion.caption):
        return True
    if suggestion.detailed_caption is not None and \
            _norm_text(region.detailed_caption) != _norm_text(suggestion.detailed_caption):
        return True
    if suggestion.relation_text is not None and \
            _norm_text(region.relation_text) != _norm_text(suggestion.relation_text):
        return True
    for name in set(region.attributes) | set(suggestion.attributes):
        if _norm_values(region.attributes.get(name)) != _norm_values(suggestion.attributes.get(name)):
            return True
    return False


def pixel_box(x: float, y: float, width: float, height: float, rotation: float, image_w: int | None,
              image_h: int | None, shape: dict | None = None) -> tuple[float, float, float, float] | None:
    """The region's pixel box on a decoded `image_w`×`image_h` image: a shape's own (a mask's bounding box, a
    keypoint's small box), else the rectangle's bounding box. None when the size is unknown or the shape has no
    pixels on that image."""
    if not image_w or not image_h:
        return None
    if shape is not None:
        from regionscribe.backend.labelstudio.shapes import Shape, ShapeError

        try:
            return Shape.from_json(shape).pixel_box(int(image_w), int(image_h))
        except ShapeError as exc:
            log.info("no pixel box for a %s: %s", shape.get("kind"), exc)
            return None
    from regionscribe.backend.labelstudio.labeling import percent_box_to_pixels

    return percent_box_to_pixels({"x": x, "y": y, "width": width, "height": height, "rotation": rotation},
                                 int(image_w), int(image_h))


def default_url(settings) -> str:
    """The store URL the settings name: STORE_URL, else DATABASE_URL, else SQLite under DATA_DIR."""
    if getattr(settings, "store_url", None):
        return settings.store_url
    return f"sqlite:///{Path(settings.data_dir) / 'store.sqlite3'}"




# --------------------------------------------------------------------------------------------------- adapter


class _Cursorish:
    """The few things the store needs from a connection inside one transaction, for both databases."""

    def __init__(self, conn, dialect: str):
        self.conn = conn
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def execute(self, sql: str, params: Iterable = ()) -> Any:
        return self.conn.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        if not rows:
            return
        if self.dialect == "postgresql":
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(sql), rows)
        else:
            self.conn.executemany(sql, rows)

    def all(self, sql: str, params: Iterable = ()) -> list[dict]:
        cur = self.execute(sql, params)
        if cur.description is None:
            return []
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def one(self, sql: str, params: Iterable = ()) -> dict | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: Iterable = ()):
        cur = self.execute(sql, params)
        row = cur.fetchone()
        return row[0] if row else None

    @property
    def for_update(self) -> str:
        return " FOR UPDATE" if self.dialect == "postgresql" else ""


class Store:
    """A handle on the store: thread-safe (a small pool of connections, one per concurrent transaction) and
    fork-aware (a child process opens its own connections)."""

    _shared: dict[tuple[int, str, str], "Store"] = {}
    _shared_lock = threading.Lock()

    def __init__(self, url: str, images_dir: str | Path | None = None):
        self.url = url
        if url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            path = url[len("sqlite:///"):].split("?", 1)[0]
            if not path:
                raise StoreError(f"no file in the SQLite URL {url!r} (sqlite:///relative or sqlite:////absolute)")
            self.path: Path | None = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            self.dialect = "postgresql"
            self.path = None
            self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        else:
            raise StoreError(f"unsupported store URL {redacted_url(url)!r}: use sqlite:///path or postgresql://...")
        if images_dir is None:
            from regionscribe.backend.core.settings import get_settings

            images_dir = Path(get_settings().data_dir) / "images"
        self.images_dir = Path(images_dir)  # cached training images: <images_dir>/<sha256>.<ext>
        self._pool: queue.LifoQueue = queue.LifoQueue()
        self._pid = os.getpid()
        self._closed = False
        # SQLite has one writer at a time; threads of one process queue on this lock instead of polling the file
        # lock (SQLite's busy handler sleeps in growing steps, which starves some waiters for seconds under load)
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, url: str | None = None, images_dir: str | Path | None = None) -> "Store":
        """Open (and migrate) the store at `url`; defaults from the settings: STORE_URL / DATABASE_URL, else
        sqlite:///<DATA_DIR>/store.sqlite3; images under <DATA_DIR>/images."""
        if url is None:
            from regionscribe.backend.core.settings import get_settings

            url = default_url(get_settings())
        store = cls(url, images_dir)
        store.migrate()
        return store

    @classmethod
    def shared(cls, settings) -> "Store":
        """This process's store for `settings` (opened once per process and URL; safe after fork)."""
        url = default_url(settings)
        images = str(Path(settings.data_dir) / "images")
        key = (os.getpid(), url, images)
        with cls._shared_lock:
            store = cls._shared.get(key)
            if store is None or store._closed:
                store = cls.open(url, images)
                cls._shared[key] = store
            return store

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                break
            try:
                conn.close()
            except Exception:
                pass

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({redacted_url(self.url)!r})"

    # ---------------------------------------------------------------------------------------- connections

    def _connect(self):
        if self.dialect == "sqlite":
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            return conn
        try:
            import psycopg
        except ImportError:  # pragma: no cover - depends on the install
            raise StoreError("a postgresql:// store needs psycopg 3: pip install 'psycopg[binary]'") from None
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to {redacted_url(self.url)}: {str(exc).strip().splitlines()[0]}") from None

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        if self._closed:
            raise StoreError("the store is closed")
        if os.getpid() != self._pid:  # forked: never use the parent's connections
            self._pool = queue.LifoQueue()
            self._pid = os.getpid()
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            conn = self._connect()
        ok = False
        try:
            yield conn
            ok = True
        finally:
            if ok and not self._closed and self._pool.qsize() < 16:
                self._pool.put(conn)
            else:
                try:
                    conn.close()
                except Exception:
                    pass

    def _transient(self, exc: Exception) -> bool:
        if isinstance(exc, sqlite3.OperationalError):
            text = str(exc).lower()
            return "locked" in text or "busy" in text
        if self.dialect == "postgresql":
            import psycopg

            if isinstance(exc, (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
                                psycopg.errors.LockNotAvailable)):
                return True
            return isinstance(exc, psycopg.OperationalError)
        return False

    def _run(self, fn: Callable[[_Cursorish], Any], write: bool = True, attempts: int = 8) -> Any:
        """Run `fn` in one transaction (write: the SQLite write lock is taken at BEGIN), retrying transient
        conflicts with a short jittered back-off."""
        for attempt in range(attempts):
            try:
                with self._connection() as conn:
                    tx = _Cursorish(conn, self.dialect)
                    if self.dialect == "sqlite":
                        with self._write_lock if write else _NO_LOCK:
                            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                            try:
                                result = fn(tx)
                                conn.execute("COMMIT")
                            except BaseException:
                                if conn.in_transaction:
                                    conn.execute("ROLLBACK")
                                raise
                        return result
                    with conn.transaction():
                        return fn(tx)
            except Exception as exc:
                if attempt + 1 < attempts and self._transient(exc):
                    log.info("store: transient %s, retrying (%d)", type(exc).__name__, attempt + 1)
                    time.sleep(min(0.5, 0.01 * (2 ** attempt)) * (0.5 + random.random()))
                    continue
                raise

    # ------------------------------------------------------------------------------------------ migrations

    def migrate(self) -> int:
        """Apply every migration step not yet recorded in `schema_version`; returns the schema version."""
        types = _TYPES[self.dialect]

        def apply(tx: _Cursorish) -> int:
            if self.dialect == "postgresql":
                tx.execute("SELECT pg_advisory_xact_lock(hashtext('regionscribe-store:' || current_schema()))")
            tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                       f"applied_at {types['REAL']} NOT NULL)")
            current = tx.scalar("SELECT MAX(version) FROM schema_version") or 0
            known = max(v for v, _, _ in MIGRATIONS)
            if current > known:
                raise StoreError(f"the store's schema is version {current}, newer than this code knows ({known})")
            for version, name, sql in MIGRATIONS:
                if version <= current:
                    continue
                for statement in sql.format(**types).split(";"):
                    if statement.strip():
                        tx.execute(statement)
                tx.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                           (version, name, time.time()))
                log.info("store %s: applied migration %d (%s)", redacted_url(self.url), version, name)
                current = version
            return current

        return self._run(apply)

    def schema_version(self) -> int:
        return self._run(lambda tx: tx.scalar("SELECT MAX(version) FROM schema_version") or 0, write=False)

    # ------------------------------------------------------------------------------------------------ events

    def _event(self, tx: _Cursorish, action: str, payload: dict, project_id: int | None,
               annotation_id: int | None, source: str = "webhook") -> tuple[int, int]:
        """Keep the raw event with its source ("webhook" or "sync"); a repeated delivery only bumps its count.
        Returns (event id, deliveries)."""
        text = _canonical(payload)
        digest = hashlib.sha256(text.encode()).hexdigest()
        now = time.time()
        row = tx.one("INSERT INTO events (digest, action, project_id, annotation_id, received_at, last_received_at, "
                     "deliveries, payload, source) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?) ON CONFLICT (digest) DO UPDATE "
                     "SET deliveries = events.deliveries + 1, last_received_at = excluded.last_received_at "
                     "RETURNING id, deliveries", (digest, action, project_id, annotation_id, now, now, text,
                                                  _source(source)))
        return int(row["id"]), int(row["deliveries"])

    def _set_outcome(self, tx: _Cursorish, event_id: int, outcome: str) -> None:
        tx.execute("UPDATE events SET outcome = ? WHERE id = ?", (outcome, event_id))

    def _project(self, tx: _Cursorish, project_id: int, label_config: str | None = None) -> None:
        tx.execute("INSERT INTO projects (project_id, created_at) VALUES (?, ?) ON CONFLICT (project_id) DO NOTHING",
                   (project_id, time.time()))
        if label_config:
            tx.execute("UPDATE projects SET label_config = ?, label_config_at = ? WHERE project_id = ? AND "
                       "(label_config IS NULL OR label_config <> ?)", (label_config, time.time(), project_id,
                                                                         label_config))

    def record_event(self, action: str, payload: dict, project_id: int | None = None, source: str = "webhook") -> int:
        """Keep an event that changes no records (START_TRAINING) for audit; returns its id."""

        def write(tx):
            if project_id is not None:
                self._project(tx, project_id)
            event_id, _ = self._event(tx, action, payload, project_id, None, source)
            return event_id

        return self._run(write)

    def events(self, after_id: int = 0, limit: int = 1000) -> list[dict]:
        """Raw events in arrival order (id, action, project_id, annotation_id, deliveries, outcome, source, payload
        dict)."""
        rows = self._run(lambda tx: tx.all(
            "SELECT id, action, project_id, annotation_id, received_at, deliveries, outcome, source, payload FROM "
            "events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)), write=False)
        for row in rows:
            row["payload"] = json.loads(row["payload"])
        return rows

    # ------------------------------------------------------------------------------------------ annotations

    def record_annotation(self, annotation: AnnotationInput, action: str, payload: dict,
                          label_config: str | None = None, source: str = "webhook") -> dict:
        """Apply one ANNOTATION_CREATED/UPDATED in one transaction. Returns what happened:
        {"outcome": "applied" | "stale" | "tombstoned", "event_id", "regions", "changed_regions", "removed_regions",
        "images_missing": [(image_ref, task_id)]}.

        `source` is the path the annotation came by: "webhook" (Label Studio's webhook) or "sync" (regionscribe.backend.feedback.sync,
        reading Label Studio's API). Both go through this one path, so a sync and a webhook delivering the same
        version, in any order or at the same time, store it once and count each region once: a region's change
        counter only moves when its content differs from what is stored. A region's `source` becomes "webhook" as
        soon as a webhook delivers its current content (also when that delivery is stale because a sync stored the
        same content first); content only a sync delivered stays "sync"."""
        a = annotation
        version = a.version_us
        inputs = {r.region_id: r for r in a.regions}
        source = _source(source)

        def write(tx: _Cursorish) -> dict:
            now = time.time()
            event_id, _ = self._event(tx, action, payload, a.project_id, a.annotation_id, source)
            result = {"event_id": event_id, "regions": 0, "changed_regions": 0, "removed_regions": 0,
                      "images_missing": []}
            # lock the annotation's row (PostgreSQL: FOR UPDATE; SQLite: the whole database is locked)
            tx.execute("INSERT INTO annotations (annotation_id, project_id, task_id, stored_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (annotation_id) DO NOTHING", (a.annotation_id, a.project_id, a.task_id, now))
            state = tx.one("SELECT version_us, version_digest, deleted_at FROM annotations WHERE annotation_id = ?"
                           + tx.for_update, (a.annotation_id,))
            self._project(tx, a.project_id, label_config)
            if state["deleted_at"] is not None:
                self._set_outcome(tx, event_id, "tombstoned")
                return {**result, "outcome": "tombstoned"}
            if state["version_us"] is not None and \
                    (version, a.digest) <= (int(state["version_us"]), state["version_digest"] or ""):
                if source == "webhook" and inputs:  # the webhook delivered what is stored: not "only via sync"
                    tx.executemany("UPDATE regions SET source = 'webhook' WHERE annotation_id = ? AND region_id = ? "
                                   "AND content_digest = ? AND deleted = 0 AND source <> 'webhook'",
                                   [(a.annotation_id, rid, r.digest(a.was_cancelled)) for rid, r in inputs.items()])
                self._set_outcome(tx, event_id, "stale")
                return {**result, "outcome": "stale"}
            tx.execute("UPDATE annotations SET project_id = ?, task_id = ?, version_us = ?, version_digest = ?, "
                       "created_at = ?, updated_at = ?, was_cancelled = ?, ground_truth = ?, regions = ?, "
                       "stored_at = ?, source = ? WHERE annotation_id = ?",
                       (a.project_id, a.task_id, version, a.digest, a.created_at, a.updated_at, int(a.was_cancelled),
                        int(a.ground_truth), len(inputs), now, source, a.annotation_id))

            existing = {row["region_id"]: row for row in tx.all(
                "SELECT region_id, content_digest, change_seq, deleted, source FROM regions WHERE annotation_id = ?",
                (a.annotation_id,))}
            suggestions = self._suggestions(tx, a.project_id, a.task_id, list(inputs)) if inputs else {}
            image = None
            if a.image_ref:
                image = tx.one("SELECT sha256, width, height FROM images WHERE image_key = ? AND sha256 IS NOT NULL",
                               (image_key(a.image_ref),))
            seq = None
            rows = []
            for rid, region in inputs.items():
                digest = region.digest(a.was_cancelled)
                old = existing.get(rid)
                if old is not None and old["content_digest"] == digest and not old["deleted"]:
                    change_seq = int(old["change_seq"])
                    region_source = "webhook" if source == "webhook" else (old["source"] or "webhook")
                else:
                    region_source = source
                    if seq is None:
                        seq = int(tx.scalar("UPDATE projects SET change_seq = change_seq + 1 WHERE project_id = ? "
                                            "RETURNING change_seq", (a.project_id,)))
                    change_seq = seq
                    if region.has_content and not a.was_cancelled:
                        result["changed_regions"] += 1
                suggestion = suggestions.get(rid)
                prefilled_by = suggestion.model_version if suggestion else None
                changed = int(differs_from_suggestion(region, suggestion)) if suggestion else None
                width = image["width"] if image else region.original_width
                height = image["height"] if image else region.original_height
                box = pixel_box(region.x, region.y, region.width, region.height, region.rotation, width, height,
                                region.shape)
                rows.append((
                    a.annotation_id, rid, a.project_id, a.task_id, a.image_ref, image_key(a.image_ref),
                    image["sha256"] if image else None,
                    image["width"] if image else None, image["height"] if image else None, region.original_width,
                    region.original_height, region.x, region.y, region.width, region.height, region.rotation,
                    *(box or (None, None, None, None)), _canonical(list(region.labels)), region.caption,
                    region.detailed_caption, region.relation_text, _canonical(region.attributes),
                    _canonical(region.relations), a.completed_by, a.completed_by_email, a.created_at, a.updated_at,
                    a.lead_time, prefilled_by, changed, int(region.has_content), digest, change_seq, 0, None,
                    int(a.ground_truth), int(a.was_cancelled), now, region_source,
                    _canonical(region.shape) if region.shape is not None else None))
            columns = ", ".join(REGION_COLUMNS)
            updates = ", ".join(f"{c} = excluded.{c}" for c in REGION_COLUMNS[2:])
            tx.executemany(f"INSERT INTO regions ({columns}) VALUES ({', '.join('?' * len(REGION_COLUMNS))}) "
                           f"ON CONFLICT (annotation_id, region_id) DO UPDATE SET {updates}", rows)
            gone = [rid for rid, old in existing.items() if rid not in inputs and not old["deleted"]]
            if gone:
                tx.executemany("UPDATE regions SET deleted = 1, deleted_at = ? WHERE annotation_id = ? AND "
                               "region_id = ?", [(now, a.annotation_id, rid) for rid in gone])
            result.update(outcome="applied", regions=len(rows), removed_regions=len(gone))
            if a.image_ref and image is None and rows:
                result["images_missing"] = [(a.image_ref, a.task_id)]
            self._set_outcome(tx, event_id, "applied")
            return result

        return self._run(write)

    def delete_annotations(self, annotation_ids: list[int], payload: dict, project_id: int | None = None,
                           action: str = "ANNOTATIONS_DELETED", source: str = "webhook") -> dict:
        """Tombstone these annotations and mark all their regions deleted (kept for audit, never trained on).
        `source`: "webhook" (ANNOTATIONS_DELETED) or "sync" (gone from Label Studio, regionscribe.backend.feedback.sync)."""
        ids = sorted({int(i) for i in annotation_ids})
        source = _source(source)

        def write(tx: _Cursorish) -> dict:
            now = time.time()
            event_id, _ = self._event(tx, action, payload, project_id, ids[0] if len(ids) == 1 else None, source)
            if project_id is not None:
                self._project(tx, project_id)
            regions = 0
            for annotation_id in ids:  # sorted: concurrent deletes lock rows in one order
                tx.execute("INSERT INTO annotations (annotation_id, project_id, stored_at, deleted_at) "
                           "VALUES (?, ?, ?, ?) ON CONFLICT (annotation_id) DO NOTHING",
                           (annotation_id, project_id, now, now))
                tx.one("SELECT annotation_id FROM annotations WHERE annotation_id = ?" + tx.for_update,
                       (annotation_id,))
                tx.execute("UPDATE annotations SET deleted_at = ? WHERE annotation_id = ? AND deleted_at IS NULL",
                           (now, annotation_id))
                cur = tx.execute("UPDATE regions SET deleted = 1, deleted_at = ? WHERE annotation_id = ? AND "
                                 "deleted = 0", (now, annotation_id))
                regions += max(cur.rowcount, 0)
            self._set_outcome(tx, event_id, "deleted")
            return {"outcome": "deleted", "event_id": event_id, "annotations": len(ids), "regions": regions}

        return self._run(write)

    def annotation_state(self, annotation_id: int) -> dict | None:
        return self._run(lambda tx: tx.one("SELECT * FROM annotations WHERE annotation_id = ?", (annotation_id,)),
                         write=False)

    # ---------------------------------------------------------------------------------------- suggestions

    def record_suggestions(self, project_id: int, suggestions: list[Suggestion]) -> int:
        """Remember what the model suggested (one transaction; the latest suggestion per region wins)."""
        if not suggestions:
            return 0
        now = time.time()
        rows = [(int(project_id), int(s.task_id), str(s.region_id), s.model_version, s.caption, s.detailed_caption,
                 s.relation_text, _canonical(s.attributes), now) for s in suggestions]

        def write(tx):
            tx.executemany(
                "INSERT INTO suggestions (project_id, task_id, region_id, model_version, caption, detailed_caption, "
                "relation_text, attributes, suggested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (project_id, task_id, region_id) DO UPDATE SET model_version = excluded.model_version, "
                "caption = excluded.caption, detailed_caption = excluded.detailed_caption, "
                "relation_text = excluded.relation_text, attributes = excluded.attributes, "
                "suggested_at = excluded.suggested_at", rows)
            return len(rows)

        return self._run(write)

    def _suggestions(self, tx: _Cursorish, project_id: int, task_id: int, region_ids: list[str]) -> dict:
        rows = tx.all("SELECT * FROM suggestions WHERE project_id = ? AND task_id = ?", (project_id, task_id))
        wanted = set(region_ids)
        return {row["region_id"]: Suggestion(
            task_id=int(row["task_id"]), region_id=row["region_id"], model_version=row["model_version"],
            caption=row["caption"], detailed_caption=row["detailed_caption"], relation_text=row["relation_text"],
            attributes=json.loads(row["attributes"])) for row in rows if row["region_id"] in wanted}

    def suggestions(self, project_id: int, task_id: int) -> dict[str, Suggestion]:
        return self._run(lambda tx: self._suggestions(tx, int(project_id), int(task_id), [
            r["region_id"] for r in tx.all("SELECT region_id FROM suggestions WHERE project_id = ? AND task_id = ?",
                                           (int(project_id), int(task_id)))]), write=False)

    # ------------------------------------------------------------------------------------------- projects

    def label_config(self, project_id: int) -> str | None:
        """The project's labeling config as last seen in a webhook payload or by /setup (None if never seen)."""
        return self._run(lambda tx: tx.scalar("SELECT label_config FROM projects WHERE project_id = ?",
                                              (int(project_id),)), write=False)

    def set_label_config(self, project_id: int, label_config: str) -> None:
        self._run(lambda tx: self._project(tx, int(project_id), label_config))

    def request_training(self, project_id: int, payload: dict | None = None) -> None:
        """Remember durably that training was asked for (START_TRAINING; `payload` is kept as its event); cleared
        when a run starts on a snapshot taken after the request."""
        def write(tx):
            self._project(tx, int(project_id))
            if payload is not None:
                event_id, _ = self._event(tx, str(payload.get("action") or "START_TRAINING"), payload,
                                          int(project_id), None)
                self._set_outcome(tx, event_id, "training requested")
            tx.execute("UPDATE projects SET train_requested_at = ? WHERE project_id = ? AND train_requested_at IS NULL",
                       (time.time(), int(project_id)))

        self._run(write)

    def training_requested(self, project_id: int) -> bool:
        return self._run(lambda tx: tx.scalar("SELECT train_requested_at FROM projects WHERE project_id = ?",
                                              (int(project_id),)), write=False) is not None

    def projects(self) -> list[int]:
        return [int(r["project_id"]) for r in self._run(lambda tx: tx.all(
            "SELECT project_id FROM projects ORDER BY project_id"), write=False)]

    # ------------------------------------------------------------------------------------- for the trainer

    def records(self, project_id: int | None = None, include_deleted: bool = False,
                trainable_only: bool = False) -> list[RegionRecord]:
        """Region records (ordered by annotation and region id); by default every non-deleted one."""
        where, params = [], []
        if project_id is not None:
            where.append("r.project_id = ?")
            params.append(int(project_id))
        if not include_deleted:
            where.append("r.deleted = 0")
        if trainable_only:
            where.append("r.was_cancelled = 0 AND r.has_content = 1")
        sql = ("SELECT r.*, i.ext AS image_ext FROM regions r LEFT JOIN images i ON i.image_key = r.image_key "
               + (f"WHERE {' AND '.join(where)} " if where else "") + "ORDER BY r.annotation_id, r.region_id")
        return [self.record_from_row(row) for row in self._run(lambda tx: tx.all(sql, params), write=False)]

    @contextmanager
    def read_regions(self, where: str, params: list, projects: list[int], chunk_size: int = 1000,
                     ) -> Iterator[tuple[dict, int, Iterator[dict]]]:
        """(store state, number of rows, the rows) of `SELECT r.*, i.ext AS image_ext FROM regions r LEFT JOIN
        images i ... WHERE <where>` ordered by image, annotation and region, from one read-only transaction: every
        query sees the same snapshot, and the rows stream (turn one into a RegionRecord with `record_from_row`).
        The state is the schema version and the change counter of `projects` (every project when empty).

        PostgreSQL: REPEATABLE READ READ ONLY and a server-side (named) cursor fetched `chunk_size` rows at a time;
        SQLite (WAL): a deferred read transaction and a stepped statement (rows are produced as fetched)."""
        base = f"FROM regions r LEFT JOIN images i ON i.image_key = r.image_key WHERE {where}"
        select = (f"SELECT r.*, i.ext AS image_ext {base} "
                  "ORDER BY COALESCE(r.image_sha256, r.image_key), r.annotation_id, r.region_id")
        state_sql = "SELECT project_id, change_seq FROM projects"
        if projects:
            state_sql += f" WHERE project_id IN ({', '.join('?' * len(projects))})"
        state_sql += " ORDER BY project_id"

        def state(tx: _Cursorish) -> dict:
            return {"schema_version": tx.scalar("SELECT MAX(version) FROM schema_version"),
                    "projects": {str(row["project_id"]): int(row["change_seq"])
                                 for row in tx.all(state_sql, list(projects))}}

        def rows(cur) -> Iterator[dict]:
            names = None
            while True:
                batch = cur.fetchmany(chunk_size)
                if not batch:
                    return
                if names is None:
                    names = [d[0] for d in cur.description]
                for row in batch:
                    yield dict(zip(names, row))

        with self._connection() as conn:
            tx = _Cursorish(conn, self.dialect)
            if self.dialect == "sqlite":
                conn.execute("BEGIN")
                try:
                    info = state(tx)
                    total = int(tx.scalar(f"SELECT COUNT(*) {base}", params) or 0)
                    yield info, total, rows(conn.execute(select, params))
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")  # read only: nothing to keep
                return
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                info = state(tx)
                total = int(tx.scalar(f"SELECT COUNT(*) {base}", params) or 0)
                with conn.cursor(name=f"regionscribe_read_{uuid.uuid4().hex[:8]}") as cur:
                    cur.itersize = chunk_size
                    cur.execute(tx._sql(select), tuple(params))
                    yield info, total, rows(cur)

    def snapshot(self, project_id: int) -> Snapshot:
        """Every live trainable region of the project (not deleted, not cancelled, with a caption, detailed caption,
        relation text or attribute), and an id that is a hash of their (annotation id, region id, updated_at): the
        same data gives the same id. Records whose image is not cached yet have image_path None (call
        `ingest.fetch_missing_images(store)` first)."""
        pid = int(project_id)

        def read(tx: _Cursorish) -> Snapshot:
            self._project(tx, pid)
            max_seq = int(tx.scalar("SELECT change_seq FROM projects WHERE project_id = ?" + tx.for_update, (pid,)))
            rows = tx.all("SELECT r.*, i.ext AS image_ext FROM regions r LEFT JOIN images i ON "
                          "i.image_key = r.image_key WHERE r.project_id = ? AND r.deleted = 0 AND r.was_cancelled = 0 "
                          "AND r.has_content = 1 ORDER BY r.annotation_id, r.region_id", (pid,))
            h = hashlib.sha256()
            for row in rows:
                h.update(f"{row['annotation_id']}\t{row['region_id']}\t{row['updated_at'] or ''}\n".encode())
            snapshot_id = h.hexdigest()[:24]
            tx.execute("INSERT INTO snapshots (project_id, snapshot_id, max_seq, regions, created_at) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (project_id, snapshot_id) DO UPDATE SET "
                       "max_seq = excluded.max_seq, created_at = excluded.created_at",
                       (pid, snapshot_id, max_seq, len(rows), time.time()))
            return Snapshot(id=snapshot_id, records=[self.record_from_row(row) for row in rows])

        return self._run(read)

    def pending_count(self, project_id: int) -> int:
        """New or changed live trainable regions since the last training run started (since the watermark that
        `mark_training_started` set)."""
        return int(self._run(lambda tx: tx.scalar(
            "SELECT COUNT(*) FROM regions r JOIN projects p ON p.project_id = r.project_id WHERE r.project_id = ? "
            "AND r.change_seq > p.trained_seq AND r.deleted = 0 AND r.was_cancelled = 0 AND r.has_content = 1",
            (int(project_id),)), write=False) or 0)

    def mark_training_started(self, project_id: int, snapshot_id: str, job_id: str | None = None) -> int:
        """A training run started on `snapshot_id` (from `snapshot()`): what it holds no longer counts as pending,
        and a training request made before that snapshot is satisfied. Returns the run's id (for
        `training_completed`). `job_id`, the queue job running it, lets `training_failed` give the count back when
        the run never completes. Raises KeyError for an unknown snapshot."""
        pid = int(project_id)

        def write(tx: _Cursorish) -> int:
            snap = tx.one("SELECT max_seq, created_at FROM snapshots WHERE project_id = ? AND snapshot_id = ?",
                          (pid, snapshot_id))
            if snap is None:
                raise KeyError(f"no snapshot {snapshot_id!r} for project {pid}: take it with store.snapshot()")
            requested = tx.scalar("SELECT train_requested_at FROM projects WHERE project_id = ?" + tx.for_update,
                                  (pid,))
            cleared = requested if requested is not None and requested <= snap["created_at"] else None
            now = time.time()
            tx.execute("UPDATE projects SET trained_seq = CASE WHEN trained_seq > ? THEN trained_seq ELSE ? END, "
                       "training_started_at = ?, last_snapshot_id = ? WHERE project_id = ?",
                       (snap["max_seq"], snap["max_seq"], now, snapshot_id, pid))
            tx.execute("UPDATE projects SET train_requested_at = NULL WHERE project_id = ? AND "
                       "train_requested_at <= ?", (pid, snap["created_at"]))
            row = tx.one("INSERT INTO training_runs (project_id, snapshot_id, max_seq, started_at, job_id, "
                         "cleared_request_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                         (pid, snapshot_id, snap["max_seq"], now, job_id, cleared))
            return int(row["id"])

        return self._run(write)

    def training_completed(self, run_id: int, outcome: str = "completed") -> None:
        """The run finished and published its candidate (`outcome`: "accepted", "rejected"): it stays counted. Its
        watermark is applied again, in case the run had been given up as failed meanwhile (its job lost with a
        Redis restart while it kept training)."""

        def write(tx: _Cursorish) -> None:
            run = tx.one("SELECT project_id, max_seq FROM training_runs WHERE id = ?", (int(run_id),))
            if run is None:
                raise KeyError(f"no training run {run_id}")
            tx.execute("UPDATE training_runs SET finished_at = ?, outcome = ? WHERE id = ?",
                       (time.time(), str(outcome)[:500], int(run_id)))
            tx.execute("UPDATE projects SET trained_seq = CASE WHEN trained_seq > ? THEN trained_seq ELSE ? END "
                       "WHERE project_id = ?", (run["max_seq"], run["max_seq"], run["project_id"]))

        self._run(write)

    def open_training_run(self, project_id: int) -> dict | None:
        """The project's newest run that started under a queue job and has not finished (completed or failed), or
        None."""
        return self._run(lambda tx: tx.one(
            "SELECT * FROM training_runs WHERE project_id = ? AND job_id IS NOT NULL AND finished_at IS NULL "
            "ORDER BY id DESC LIMIT 1", (int(project_id),)), write=False)

    def training_failed(self, project_id: int, job_id: str, reason: str = "failed") -> bool:
        """The run of `job_id` will never complete (its worker died, it raised, it was stopped): close it as failed
        and give its count back. The project's watermark returns to the newest snapshot a run that did not fail has
        taken (so every region the failed run had taken is pending again, and events during it stay pending), and
        a training request it had satisfied is pending again unless a later run took it. Returns whether an open
        run of that job was found (False: none, or already closed: idempotent)."""
        pid = int(project_id)

        def write(tx: _Cursorish) -> bool:
            tx.scalar("SELECT trained_seq FROM projects WHERE project_id = ?" + tx.for_update, (pid,))
            run = tx.one("SELECT id, cleared_request_at FROM training_runs WHERE project_id = ? AND job_id = ? AND "
                         "finished_at IS NULL ORDER BY id DESC LIMIT 1", (pid, str(job_id)))
            if run is None:
                return False
            tx.execute("UPDATE training_runs SET finished_at = ?, outcome = ? WHERE id = ?",
                       (time.time(), f"failed: {reason}"[:500], run["id"]))
            tx.execute("DELETE FROM training_leases WHERE project_id = ? AND holder = ?", (pid, str(job_id)))
            kept = "project_id = ? AND (outcome IS NULL OR outcome NOT LIKE ?)"  # a parameter: no literal % in SQL
            watermark = tx.scalar(f"SELECT MAX(max_seq) FROM training_runs WHERE {kept}", (pid, "failed%"))
            tx.execute("UPDATE projects SET trained_seq = ? WHERE project_id = ?", (int(watermark or 0), pid))
            later = tx.scalar(f"SELECT COUNT(*) FROM training_runs WHERE {kept} AND id > ?",
                              (pid, "failed%", run["id"]))
            if run["cleared_request_at"] is not None and not later:
                tx.execute("UPDATE projects SET train_requested_at = ? WHERE project_id = ? AND "
                           "train_requested_at IS NULL", (run["cleared_request_at"], pid))
            return True

        return self._run(write)

    # ------------------------------------------------------------------------------------------ training leases

    def acquire_training_lease(self, project_id: int, holder: str, seconds: float) -> dict | None:
        """Take the project's training lease for `holder` (a training job's id) for `seconds`, unless another holder
        has a live one. Returns None when taken, else the lease. Taking it again as its holder renews it."""
        pid, holder = int(project_id), str(holder)

        def write(tx: _Cursorish) -> dict | None:
            now = time.time()
            row = tx.one("SELECT * FROM training_leases WHERE project_id = ?" + tx.for_update, (pid,))
            if row is not None and row["holder"] != holder and row["expires_at"] > now:
                return None
            if row is None:
                tx.execute("INSERT INTO training_leases (project_id, holder, acquired_at, renewed_at, expires_at) "
                           "VALUES (?, ?, ?, ?, ?)", (pid, holder, now, now, now + seconds))
            else:
                acquired = row["acquired_at"] if row["holder"] == holder else now
                tx.execute("UPDATE training_leases SET holder = ?, acquired_at = ?, renewed_at = ?, expires_at = ? "
                           "WHERE project_id = ?", (holder, acquired, now, now + seconds, pid))
            return {"project_id": pid, "holder": holder, "expires_at": now + seconds}

        return self._run(write)

    def renew_training_lease(self, project_id: int, holder: str, seconds: float) -> bool:
        """Extend `holder`'s lease by `seconds` from now. False when the lease is no longer its own (another holder
        took it after it expired, or it was released because its run was closed as failed)."""
        pid, holder = int(project_id), str(holder)

        def write(tx: _Cursorish) -> bool:
            now = time.time()
            cur = tx.execute("UPDATE training_leases SET renewed_at = ?, expires_at = ? WHERE project_id = ? AND "
                             "holder = ?", (now, now + seconds, pid, holder))
            return cur.rowcount > 0

        return self._run(write)

    def release_training_lease(self, project_id: int, holder: str) -> bool:
        """Drop `holder`'s lease (its run ended). Returns whether it held one."""
        return self._run(lambda tx: tx.execute("DELETE FROM training_leases WHERE project_id = ? AND holder = ?",
                                                (int(project_id), str(holder))).rowcount > 0)

    def training_lease(self, project_id: int) -> dict | None:
        """The project's live training lease ({"holder", "acquired_at", "renewed_at", "expires_at"}), or None."""
        return self._run(lambda tx: tx.one(
            "SELECT * FROM training_leases WHERE project_id = ? AND expires_at > ?", (int(project_id), time.time())),
            write=False)

    def training_runs(self, project_id: int) -> list[dict]:
        return self._run(lambda tx: tx.all("SELECT * FROM training_runs WHERE project_id = ? ORDER BY id",
                                           (int(project_id),)), write=False)

    def edit_rate(self, by: str = "model_version", project_id: int | None = None) -> dict:
        """For regions a model pre-filled (live, not cancelled): {key: {"regions", "changed", "rate"}}, where `rate`
        is the share the annotators changed. `by`: "model_version" (default), "project_id" or "completed_by"."""
        column = {"model_version": "prefilled_by", "project_id": "project_id", "completed_by": "completed_by",
                  "project": "project_id", "annotator": "completed_by"}.get(by)
        if column is None:
            raise ValueError(f"edit_rate(by={by!r}): use 'model_version', 'project_id' or 'completed_by'")
        sql = (f"SELECT {column} AS k, COUNT(*) AS n, SUM(changed) AS c FROM regions WHERE prefilled_by IS NOT NULL "
               "AND deleted = 0 AND was_cancelled = 0" + (" AND project_id = ?" if project_id is not None else "")
               + f" GROUP BY {column} ORDER BY {column}")
        rows = self._run(lambda tx: tx.all(sql, [int(project_id)] if project_id is not None else []), write=False)
        return {row["k"]: {"regions": int(row["n"]), "changed": int(row["c"] or 0),
                           "rate": (int(row["c"] or 0) / int(row["n"])) if row["n"] else 0.0} for row in rows}

    def regions_by_source(self, project_id: int | None = None) -> dict[int, dict[str, int]]:
        """Live (not deleted) regions per project: {project_id: {"regions": n, "webhook": w, "sync": s}}, where
        "sync" counts the regions whose current content arrived only through a sync (no webhook delivered it)."""
        sql = ("SELECT project_id, source, COUNT(*) AS n FROM regions WHERE deleted = 0"
               + (" AND project_id = ?" if project_id is not None else "") + " GROUP BY project_id, source")
        rows = self._run(lambda tx: tx.all(sql, [int(project_id)] if project_id is not None else []), write=False)
        out: dict[int, dict[str, int]] = {}
        for row in rows:
            counts = out.setdefault(int(row["project_id"]), {"regions": 0, **{s: 0 for s in SOURCES}})
            counts[row["source"] or "webhook"] = counts.get(row["source"] or "webhook", 0) + int(row["n"])
            counts["regions"] += int(row["n"])
        return out

    def annotation_versions(self, project_id: int) -> dict[int, dict]:
        """Every annotation the store knows in a project, by id: {"task_id", "version_us", "version_digest",
        "updated_at", "deleted_at", "stored_at", "source"} (what regionscribe.backend.feedback.sync compares Label Studio's with)."""
        rows = self._run(lambda tx: tx.all(
            "SELECT annotation_id, task_id, version_us, version_digest, updated_at, deleted_at, stored_at, source "
            "FROM annotations WHERE project_id = ?", (int(project_id),)), write=False)
        return {int(row.pop("annotation_id")): row for row in rows}

    # ------------------------------------------------------------------------------------------------ images

    def image_path(self, sha256: str) -> Path | None:
        """The cached image with this content hash, if it is on disk."""
        if not sha256 or not all(c in "0123456789abcdef" for c in sha256):
            return None
        ext = self._run(lambda tx: tx.scalar("SELECT ext FROM images WHERE sha256 = ? AND ext IS NOT NULL LIMIT 1",
                                             (sha256,)), write=False)
        if ext:
            path = self.images_dir / f"{sha256}.{ext}"
            if path.is_file():
                return path
        found = sorted(self.images_dir.glob(f"{sha256}.*")) if self.images_dir.is_dir() else []
        found = [p for p in found if not p.name.endswith(".tmp")]
        return found[0] if found else None

    def missing_images(self, limit: int | None = None) -> list[tuple[str, int]]:
        """(image_ref, a task id) for every image that live trainable regions need and the cache lacks."""
        rows = self._run(lambda tx: tx.all(
            "SELECT image_key, MIN(image_ref) AS image_ref, MIN(task_id) AS task_id FROM regions WHERE image_sha256 "
            "IS NULL AND image_key IS NOT NULL AND deleted = 0 AND was_cancelled = 0 GROUP BY image_key "
            "ORDER BY image_key"
            + (f" LIMIT {int(limit)}" if limit else "")), write=False)
        return [(row["image_ref"], int(row["task_id"])) for row in rows]

    def cached_image(self, image_ref: str) -> dict | None:
        return self._run(lambda tx: tx.one("SELECT * FROM images WHERE image_key = ?", (image_key(image_ref),)),
                         write=False)

    def set_image(self, image_ref: str, sha256: str, ext: str, width: int, height: int, size: int) -> int:
        """The image behind `image_ref` is cached as <images_dir>/<sha256>.<ext>: fill every record that uses it
        (hash, decoded size, pixel box). Returns how many records were filled."""

        def write(tx: _Cursorish) -> int:
            now = time.time()
            tx.execute("INSERT INTO images (image_key, image_ref, sha256, ext, width, height, bytes, fetched_at, "
                       "attempts, last_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (image_key) DO "
                       "UPDATE SET "
                       "sha256 = excluded.sha256, ext = excluded.ext, width = excluded.width, "
                       "height = excluded.height, "
                       "bytes = excluded.bytes, fetched_at = excluded.fetched_at, attempts = images.attempts + 1, "
                       "last_error = NULL, last_attempt_at = excluded.last_attempt_at",
                       (image_key(image_ref), image_ref, sha256, ext, width, height, size, now, now))
            rows = tx.all("SELECT annotation_id, region_id, x, y, width, height, rotation, shape FROM regions "
                          "WHERE image_key = ?", (image_key(image_ref),))
            updates = []
            for row in rows:
                box = pixel_box(row["x"], row["y"], row["width"], row["height"], row["rotation"], width, height,
                                json.loads(row["shape"]) if row["shape"] else None) or (None, None, None, None)
                updates.append((sha256, width, height, *box, row["annotation_id"], row["region_id"]))
            tx.executemany("UPDATE regions SET image_sha256 = ?, image_width = ?, image_height = ?, px_x1 = ?, "
                           "px_y1 = ?, px_x2 = ?, px_y2 = ? WHERE annotation_id = ? AND region_id = ?", updates)
            return len(updates)

        return self._run(write)

    def image_failed(self, image_ref: str, error: str) -> None:
        def write(tx):
            now = time.time()
            tx.execute("INSERT INTO images (image_key, image_ref, attempts, last_error, last_attempt_at) "
                       "VALUES (?, ?, 1, ?, ?) ON CONFLICT (image_key) DO UPDATE SET attempts = images.attempts + 1, "
                       "last_error = excluded.last_error, last_attempt_at = excluded.last_attempt_at",
                       (image_key(image_ref), image_ref, error[:1000], now))

        self._run(write)

    # --------------------------------------------------------------------------------------------- records

    def record_from_row(self, row: dict) -> RegionRecord:
        box = None
        if row["px_x1"] is not None:
            box = (float(row["px_x1"]), float(row["px_y1"]), float(row["px_x2"]), float(row["px_y2"]))
        path = None
        if row["image_sha256"] and row.get("image_ext"):
            candidate = self.images_dir / f"{row['image_sha256']}.{row['image_ext']}"
            path = candidate if candidate.is_file() else None
        return RegionRecord(
            project_id=int(row["project_id"]), task_id=int(row["task_id"]), annotation_id=int(row["annotation_id"]),
            region_id=row["region_id"], image_ref=row["image_ref"], image_sha256=row["image_sha256"],
            image_width=row["image_width"], image_height=row["image_height"], x=float(row["x"]), y=float(row["y"]),
            width=float(row["width"]), height=float(row["height"]), rotation=float(row["rotation"] or 0.0),
            pixel_box=box, labels=tuple(json.loads(row["labels"])), caption=row["caption"],
            detailed_caption=row["detailed_caption"], relation_text=row["relation_text"],
            attributes=json.loads(row["attributes"]), relations=json.loads(row["relations"]),
            completed_by=int(row["completed_by"]) if row["completed_by"] is not None else None,
            completed_by_email=row["completed_by_email"], created_at=row["created_at"], updated_at=row["updated_at"],
            lead_time=float(row["lead_time"]) if row["lead_time"] is not None else None,
            prefilled_by=row["prefilled_by"], changed=None if row["changed"] is None else bool(row["changed"]),
            deleted=bool(row["deleted"]), deleted_at=row["deleted_at"], ground_truth=bool(row["ground_truth"]),
            was_cancelled=bool(row["was_cancelled"]), image_path=path, source=row.get("source") or "webhook",
            shape=json.loads(row["shape"]) if row.get("shape") else None)
