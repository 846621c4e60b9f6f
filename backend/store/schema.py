"""The store's schema: numbered migration steps (`MIGRATIONS`, recorded in `schema_version`), the column types of
each database, the region columns in insert order, and `migrate()`, which applies the steps not yet recorded under
an exclusive lock (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock), so concurrent openers
are safe. `migrate()` reads `MIGRATIONS` from this module.
"""
from __future__ import annotations

import logging
import time

from regionscribe.backend.core.settings import redacted_url
from regionscribe.backend.store.database import _Cursorish
from regionscribe.backend.store.records import StoreError

log = logging.getLogger(__name__)

# (version, name, SQL). Placeholders: {AUTOID} an auto-increment primary key, {BIGINT}, {REAL}, {BLOB}. Append new steps;
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
    # demonstrations (DEMONSTRATIONS=k, regionscribe.backend.store.demonstrations): per accepted region and model
    # version, its region token (float32 bytes) with the answer the annotators accepted (caption; attribute values by
    # the question the model is asked), one row per (project, task, region id, model version): a newer answer
    # replaces the row, and a region no longer accepted leaves a retired row (token NULL). Either way the row gets a
    # new `id`, so a reader that remembers the highest id it applied catches up with `id > ?`. `content_digest` is
    # the region content the token was computed for. Suggestions remember the demonstrations they were made with.
    (6, "demonstrations", """
CREATE TABLE demonstrations (
    id {AUTOID},
    project_id {BIGINT} NOT NULL,
    task_id {BIGINT} NOT NULL,
    region_id TEXT NOT NULL,
    annotation_id {BIGINT} NOT NULL,
    model_version TEXT NOT NULL,
    content_digest TEXT NOT NULL,
    token {BLOB},
    caption TEXT,
    attributes TEXT NOT NULL,
    stored_at {REAL} NOT NULL
);
CREATE UNIQUE INDEX demonstrations_region ON demonstrations (project_id, task_id, region_id, model_version);
CREATE INDEX demonstrations_since ON demonstrations (project_id, model_version, id);
CREATE INDEX demonstrations_annotation ON demonstrations (annotation_id);
CREATE INDEX regions_task_region ON regions (task_id, region_id);
ALTER TABLE suggestions ADD COLUMN demonstrations TEXT
"""),
]

_TYPES = {
    "sqlite": {"AUTOID": "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT": "INTEGER", "REAL": "REAL", "BLOB": "BLOB"},
    "postgresql": {"AUTOID": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "BIGINT": "BIGINT",
                   "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"},
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


class MigrationsMixin:
    """Store methods that bring the schema up to date and report its version (uses `Database._run`)."""

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
