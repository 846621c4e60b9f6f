"""Store methods that read region records out: every record of a project, a consistent streamed read for the
exporter (`read_regions`), a database row turned into a `RegionRecord`, and live regions counted by source.
"""
from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from typing import Iterator

from regionscribe.backend.store.database import _Cursorish
from regionscribe.backend.store.records import SOURCES, RegionRecord


class RegionsMixin:
    """Reading region records (uses `Database._run` and `Database._connection`, and `images_dir`)."""

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
