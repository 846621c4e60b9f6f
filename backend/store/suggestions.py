"""Store methods for what the model suggested: remembering suggestions at /predict time, reading them back, and the
edit rate (the share of pre-filled regions the annotators changed).
"""
from __future__ import annotations

import json
import time

from regionscribe.backend.store.database import _Cursorish
from regionscribe.backend.store.records import Suggestion, canonical_json


class SuggestionsMixin:
    """Suggestions and how the annotators took them (uses `Database._run`)."""

    def record_suggestions(self, project_id: int, suggestions: list[Suggestion]) -> int:
        """Remember what the model suggested, and the demonstrations it was shown (one transaction; the latest
        suggestion per region wins)."""
        if not suggestions:
            return 0
        now = time.time()
        rows = [(int(project_id), int(s.task_id), str(s.region_id), s.model_version, s.caption, s.detailed_caption,
                 s.relation_text, canonical_json(s.attributes), now,
                 canonical_json(s.demonstrations) if s.demonstrations else None) for s in suggestions]

        def write(tx):
            tx.executemany(
                "INSERT INTO suggestions (project_id, task_id, region_id, model_version, caption, detailed_caption, "
                "relation_text, attributes, suggested_at, demonstrations) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (project_id, task_id, region_id) DO UPDATE SET model_version = excluded.model_version, "
                "caption = excluded.caption, detailed_caption = excluded.detailed_caption, "
                "relation_text = excluded.relation_text, attributes = excluded.attributes, "
                "suggested_at = excluded.suggested_at, demonstrations = excluded.demonstrations", rows)
            return len(rows)

        return self._run(write)

    def _suggestions(self, tx: _Cursorish, project_id: int, task_id: int, region_ids: list[str]) -> dict:
        rows = tx.all("SELECT * FROM suggestions WHERE project_id = ? AND task_id = ?", (project_id, task_id))
        wanted = set(region_ids)
        return {row["region_id"]: Suggestion(
            task_id=int(row["task_id"]), region_id=row["region_id"], model_version=row["model_version"],
            caption=row["caption"], detailed_caption=row["detailed_caption"], relation_text=row["relation_text"],
            attributes=json.loads(row["attributes"]),
            demonstrations=json.loads(row["demonstrations"]) if row.get("demonstrations") else [])
            for row in rows if row["region_id"] in wanted}

    def suggestions(self, project_id: int, task_id: int) -> dict[str, Suggestion]:
        return self._run(lambda tx: self._suggestions(tx, int(project_id), int(task_id), [
            r["region_id"] for r in tx.all("SELECT region_id FROM suggestions WHERE project_id = ? AND task_id = ?",
                                           (int(project_id), int(task_id)))]), write=False)

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
