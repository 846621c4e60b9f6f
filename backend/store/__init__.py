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

The modules, each named after what it holds (their docstrings carry the details: durability in `database`,
idempotency rules in `annotations`, the pending count and training leases in `training_runs`):
    records        StoreError, the inputs and records (RegionInput, AnnotationInput, Suggestion, RegionRecord,
                   Snapshot), SOURCES and the normalising helpers (parse_time_us, image_key, pixel_box, ...)
    schema         MIGRATIONS, REGION_COLUMNS and migrate() / schema_version()
    database       the adapter: URL, connection pool, cursor shim, transactions with retry; default_url
    annotations    events and annotations (record_annotation, delete_annotations, record_event, events, ...)
    suggestions    the model's suggestions and the edit rate
    projects       a project's labeling config and training request
    regions        reading region records (records, read_regions, record_from_row, regions_by_source)
    demonstrations accepted regions' tokens per model version (DEMONSTRATIONS): accepted_regions,
                   write_demonstrations, demonstrations_since, and the retiring that keeps them consistent
    training_runs  snapshots, the pending count, training runs and their leases
    cached_images  the cached training images
    store          Store, which combines them: open, shared, close
This package keeps every name the single module exported importable from `regionscribe.backend.store`.
"""
from regionscribe.backend.store.database import default_url
from regionscribe.backend.store.records import (SOURCES, AcceptedRegion, AnnotationInput, DemonstrationInput,
                                                DemonstrationRow, RegionInput, RegionRecord, Snapshot, StoreError,
                                                Suggestion, differs_from_suggestion, image_key, parse_time_us,
                                                pixel_box)
from regionscribe.backend.store.schema import MIGRATIONS, REGION_COLUMNS
from regionscribe.backend.store.store import Store

__all__ = [
    "Store", "StoreError", "default_url", "MIGRATIONS", "REGION_COLUMNS", "SOURCES", "RegionInput", "AnnotationInput",
    "Suggestion", "RegionRecord", "Snapshot", "parse_time_us", "image_key", "differs_from_suggestion", "pixel_box",
    "AcceptedRegion", "DemonstrationInput", "DemonstrationRow",
]
