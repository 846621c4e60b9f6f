"""Store methods that record what Label Studio reports: raw events (kept for audit and replay), annotations and
their regions (`record_annotation`, `delete_annotations`), and the per-annotation state a sync compares with.

Idempotency rules (see `record_annotation`): an annotation's state is the newest by (updated_at, content digest),
so the same event twice, or an UPDATE arriving before its CREATE, ends in the same state; an accepted version
replaces the annotation's region set (regions no longer in it are marked deleted); ANNOTATIONS_DELETED leaves a
tombstone, and a CREATE/UPDATE arriving after it is ignored. Every event is kept raw in `events` (deduplicated by
digest, with a delivery count) for audit and replay.
"""
from __future__ import annotations

import hashlib
import json
import time

from regionscribe.backend.store.database import _Cursorish
from regionscribe.backend.store.records import (AnnotationInput, canonical_json, _source, differs_from_suggestion,
                                                image_key, pixel_box)
from regionscribe.backend.store.schema import REGION_COLUMNS


class AnnotationsMixin:
    """Events and annotations (uses `Database._run`, `ProjectsMixin._project`, `SuggestionsMixin._suggestions`, and
    `DemonstrationsMixin`'s project lock and retiring of superseded rows)."""

    # ------------------------------------------------------------------------------------------------ events

    def _event(self, tx: _Cursorish, action: str, payload: dict, project_id: int | None,
               annotation_id: int | None, source: str = "webhook") -> tuple[int, int]:
        """Keep the raw event with its source ("webhook" or "sync"); a repeated delivery only bumps its count.
        Returns (event id, deliveries)."""
        text = canonical_json(payload)
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
        "images_missing": [(image_ref, task_id)], "tasks": [[project_id, task_id]]} ("tasks" as delete_annotations
        gives it: the task whose accepted regions this may have changed).

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
                      "images_missing": [], "tasks": [[a.project_id, a.task_id]]}
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
            # demonstration rows of this project are written in id order (regionscribe.backend.store.demonstrations)
            self._lock_project(tx, a.project_id)
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
                    *(box or (None, None, None, None)), canonical_json(list(region.labels)), region.caption,
                    region.detailed_caption, region.relation_text, canonical_json(region.attributes),
                    canonical_json(region.relations), a.completed_by, a.completed_by_email, a.created_at, a.updated_at,
                    a.lead_time, prefilled_by, changed, int(region.has_content), digest, change_seq, 0, None,
                    int(a.ground_truth), int(a.was_cancelled), now, region_source,
                    canonical_json(region.shape) if region.shape is not None else None))
            columns = ", ".join(REGION_COLUMNS)
            updates = ", ".join(f"{c} = excluded.{c}" for c in REGION_COLUMNS[2:])
            tx.executemany(f"INSERT INTO regions ({columns}) VALUES ({', '.join('?' * len(REGION_COLUMNS))}) "
                           f"ON CONFLICT (annotation_id, region_id) DO UPDATE SET {updates}", rows)
            gone = [rid for rid, old in existing.items() if rid not in inputs and not old["deleted"]]
            if gone:
                tx.executemany("UPDATE regions SET deleted = 1, deleted_at = ? WHERE annotation_id = ? AND "
                               "region_id = ?", [(now, a.annotation_id, rid) for rid in gone])
            # the demonstrations this version supersedes: its changed and removed regions, and other annotations'
            # answers for the same regions of the task (the newest answer wins)
            self._retire_answered(tx, a.project_id, a.task_id, a.annotation_id,
                                  {**{rid: None for rid in gone},
                                   **{rid: r.digest(a.was_cancelled) for rid, r in inputs.items()}})
            result.update(outcome="applied", regions=len(rows), removed_regions=len(gone))
            if a.image_ref and image is None and rows:
                result["images_missing"] = [(a.image_ref, a.task_id)]
            self._set_outcome(tx, event_id, "applied")
            return result

        return self._run(write)

    def delete_annotations(self, annotation_ids: list[int], payload: dict, project_id: int | None = None,
                           action: str = "ANNOTATIONS_DELETED", source: str = "webhook") -> dict:
        """Tombstone these annotations and mark all their regions deleted (kept for audit, never trained on).
        `source`: "webhook" (ANNOTATIONS_DELETED) or "sync" (gone from Label Studio, regionscribe.backend.feedback.sync).
        The outcome lists the [project, task] of the annotations the store knew (their other answers may be the
        newest again: regionscribe.backend.store.demonstrations)."""
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
            self._retire_annotations(tx, ids)  # their regions are demonstrations no more
            self._set_outcome(tx, event_id, "deleted")
            tasks = sorted({(int(r["project_id"]), int(r["task_id"])) for r in tx.all(
                f"SELECT project_id, task_id FROM annotations WHERE annotation_id IN ({', '.join('?' * len(ids))}) "
                "AND project_id IS NOT NULL AND task_id IS NOT NULL", ids)}) if ids else []
            return {"outcome": "deleted", "event_id": event_id, "annotations": len(ids), "regions": regions,
                    "tasks": [list(t) for t in tasks]}

        return self._run(write)

    def annotation_state(self, annotation_id: int) -> dict | None:
        return self._run(lambda tx: tx.one("SELECT * FROM annotations WHERE annotation_id = ?", (annotation_id,)),
                         write=False)

    def annotation_versions(self, project_id: int) -> dict[int, dict]:
        """Every annotation the store knows in a project, by id: {"task_id", "version_us", "version_digest",
        "updated_at", "deleted_at", "stored_at", "source"} (what regionscribe.backend.feedback.sync compares Label Studio's with)."""
        rows = self._run(lambda tx: tx.all(
            "SELECT annotation_id, task_id, version_us, version_digest, updated_at, deleted_at, stored_at, source "
            "FROM annotations WHERE project_id = ?", (int(project_id),)), write=False)
        return {int(row.pop("annotation_id")): row for row in rows}
