"""Store methods for demonstrations (DEMONSTRATIONS=k): per accepted region and model version, its region token and
the answer the annotators accepted, which the inference workers index and show the model before it describes a
similar box (regionscribe.backend.inference.demonstration_index).

An accepted region is a live region of a submitted annotation (not deleted, not cancelled) with a caption, detailed
caption, relation text or attribute: the annotators confirmed or corrected it (the set a training snapshot takes).
When several annotations of a task carry the same region id (two annotators accepted one prediction), the newest
answer wins: the annotation with the latest version (updated_at).

The table holds one row per (project, task, region id, model version). The store is the source of truth and keeps it
consistent with the regions in the same transactions that change them:
- `record_annotation` retires the rows of the regions it changes or removes (and of other annotations' regions with
  the same task and region id, which the new answer supersedes); `delete_annotations` retires its regions' rows;
- `write_demonstrations` writes a worker's tokens only while each region is still accepted, still the newest answer,
  and still has the content the token was computed for.
Retiring a row replaces it with one whose token is NULL; writing one replaces the old row. Either way the key gets a
new `id`, so an index that remembers the highest id it applied (`demonstrations_since`) learns of every change.
PostgreSQL assigns identity values at insert and commits them in any order; every writer of a project's rows first
locks the project's row (`_lock_project`), so within a project ids commit in order and no reader can skip one.
"""
from __future__ import annotations

import json
import time
from typing import Iterable

from regionscribe.backend.store.database import _Cursorish
from regionscribe.backend.store.records import (AcceptedRegion, DemonstrationInput, DemonstrationRow,
                                                canonical_json)

# a live region `r` of annotation `a` that is the newest answer for its task and region id (no other live region
# with the same ids has a later annotation version, or the same version and a higher annotation id)
_LIVE = "{r}.deleted = 0 AND {r}.was_cancelled = 0 AND {r}.has_content = 1"  # an accepted region, aliased {r}
_ACCEPTED = _LIVE.format(r="r")
_NEWEST = (
    "NOT EXISTS (SELECT 1 FROM regions n JOIN annotations na ON na.annotation_id = n.annotation_id WHERE "
    f"n.task_id = r.task_id AND n.region_id = r.region_id AND n.project_id = r.project_id AND {_LIVE.format(r='n')} "
    "AND (COALESCE(na.version_us, 0), n.annotation_id) > (COALESCE(a.version_us, 0), r.annotation_id))")


class DemonstrationsMixin:
    """Demonstration rows (uses `Database._run`, `ProjectsMixin._project` and `RegionsMixin.record_from_row`)."""

    # ------------------------------------------------------------------------------------------------ reading

    def accepted_regions(self, project_id: int, model_version: str | None = None,
                         task_ids: Iterable[int] | None = None, limit: int | None = None,
                         after_seq: int | None = None, until_seq: int | None = None) -> list[AcceptedRegion]:
        """The project's accepted regions (of `task_ids` only, when given, by task and region id; else oldest change
        first), at most `limit`, with a change counter above `after_seq` and at most `until_seq` when given. With
        `model_version`: only those without a current row for that version (none yet, retired, or computed for
        another annotation or another content), i.e. the regions whose tokens a worker has to compute. The query
        walks the project's regions in change order and stops at `limit`: a refresh reads a chunk at a time."""
        pid = int(project_id)
        tasks = sorted({int(t) for t in task_ids}) if task_ids is not None else None
        if tasks == []:
            return []
        sql = ("SELECT r.*, i.ext AS image_ext FROM regions r JOIN annotations a ON a.annotation_id = r.annotation_id "
               f"LEFT JOIN images i ON i.image_key = r.image_key WHERE r.project_id = ? AND {_ACCEPTED} AND {_NEWEST}")
        params: list = [pid]
        if tasks:
            sql += f" AND r.task_id IN ({', '.join('?' * len(tasks))})"
            params += tasks
        if after_seq is not None:
            sql += " AND r.change_seq > ?"
            params.append(int(after_seq))
        if until_seq is not None:
            sql += " AND r.change_seq <= ?"
            params.append(int(until_seq))
        if model_version is not None:
            sql += (" AND NOT EXISTS (SELECT 1 FROM demonstrations d WHERE d.project_id = r.project_id AND "
                    "d.task_id = r.task_id AND d.region_id = r.region_id AND d.model_version = ? AND d.token IS NOT "
                    "NULL AND d.annotation_id = r.annotation_id AND d.content_digest = r.content_digest)")
            params.append(str(model_version))
        # (a task's regions by the task index; a whole project's in change order, by the project's)
        sql += (" ORDER BY r.task_id, r.region_id" if tasks else " ORDER BY r.change_seq") \
            + (f" LIMIT {int(limit)}" if limit is not None else "")
        rows = self._run(lambda tx: tx.all(sql, params), write=False)
        return [AcceptedRegion(self.record_from_row(row), row["content_digest"], int(row["change_seq"]))
                for row in rows]

    def demonstrations_since(self, project_id: int, model_version: str, after_id: int = 0,
                             limit: int | None = None) -> list[DemonstrationRow]:
        """The project's rows for `model_version` with an id above `after_id`, in id order: new tokens, replaced
        ones and retired ones (token None). An index applies them in order to catch up with the store."""
        sql = ("SELECT id, project_id, task_id, region_id, annotation_id, model_version, token, caption, attributes "
               "FROM demonstrations WHERE project_id = ? AND model_version = ? AND id > ? ORDER BY id"
               + (f" LIMIT {int(limit)}" if limit else ""))
        rows = self._run(lambda tx: tx.all(sql, (int(project_id), str(model_version), int(after_id))), write=False)
        return [DemonstrationRow(id=int(r["id"]), project_id=int(r["project_id"]), task_id=int(r["task_id"]),
                                 region_id=r["region_id"], annotation_id=int(r["annotation_id"]),
                                 model_version=r["model_version"],
                                 token=bytes(r["token"]) if r["token"] is not None else None, caption=r["caption"],
                                 attributes=json.loads(r["attributes"])) for r in rows]

    def demonstration_projects(self) -> list[int]:
        """The projects that have accepted regions (whose tokens a new model version needs)."""
        rows = self._run(lambda tx: tx.all(
            f"SELECT DISTINCT project_id FROM regions r WHERE {_ACCEPTED} ORDER BY project_id"), write=False)
        return [int(r["project_id"]) for r in rows]

    def demonstration_counts(self, project_ids: Iterable[int] | None = None) -> dict[int, dict]:
        """Per project (of `project_ids` only, when given): {"accepted": accepted regions (live, with content; every
        answer), "versions": {model version: {"tokens": current rows, "retired": retired rows}}}."""
        params = sorted({int(p) for p in project_ids}) if project_ids is not None else []
        if project_ids is not None and not params:
            return {}
        only = f"project_id IN ({', '.join('?' * len(params))})" if params else ""
        where = f"WHERE {only}" if only else ""

        def read(tx: _Cursorish) -> dict[int, dict]:
            out: dict[int, dict] = {}
            for row in tx.all(f"SELECT project_id, COUNT(*) AS n FROM regions r WHERE {_ACCEPTED}"
                              + (f" AND {only}" if only else "") + " GROUP BY project_id", params):
                out.setdefault(int(row["project_id"]), {"accepted": 0, "versions": {}})["accepted"] = int(row["n"])
            for row in tx.all("SELECT project_id, model_version, SUM(CASE WHEN token IS NULL THEN 0 ELSE 1 END) AS "
                              "tokens, SUM(CASE WHEN token IS NULL THEN 1 ELSE 0 END) AS retired FROM demonstrations "
                              f"{where} GROUP BY project_id, model_version", params):
                entry = out.setdefault(int(row["project_id"]), {"accepted": 0, "versions": {}})
                entry["versions"][row["model_version"]] = {"tokens": int(row["tokens"] or 0),
                                                           "retired": int(row["retired"] or 0)}
            return out

        return self._run(read, write=False)

    # ------------------------------------------------------------------------------------------------ writing

    def prune_demonstrations(self, keep_versions: Iterable[str], project_ids: Iterable[int] | None = None
                             ) -> dict[int, dict[str, int]]:
        """Delete the rows (tokens and retired rows) of every model version but `keep_versions`, in every project or
        in `project_ids`: a promotion leaves the previous version's tokens behind, one row per accepted region.
        An index of a deleted version is not told (no retired row is left for it): prune only versions no worker
        serves. Returns {project: {model version: rows deleted}}."""
        keep = sorted({str(v) for v in keep_versions})
        if not keep:
            raise ValueError("keep_versions is empty: name at least the version the workers serve")
        projects = sorted({int(p) for p in project_ids}) if project_ids is not None else None
        not_kept = f"model_version NOT IN ({', '.join('?' * len(keep))})"

        def write(tx: _Cursorish) -> dict[int, dict[str, int]]:
            found = sorted(int(row["project_id"]) for row in tx.all(
                f"SELECT DISTINCT project_id FROM demonstrations WHERE {not_kept}", keep))
            out: dict[int, dict[str, int]] = {}
            for pid in found:  # in order, like every writer of a project's rows (ids commit in order)
                if projects is not None and pid not in projects:
                    continue
                self._lock_project(tx, pid)
                counts = {row["model_version"]: int(row["n"]) for row in tx.all(
                    f"SELECT model_version, COUNT(*) AS n FROM demonstrations WHERE project_id = ? AND {not_kept} "
                    "GROUP BY model_version", [pid, *keep])}
                tx.execute(f"DELETE FROM demonstrations WHERE project_id = ? AND {not_kept}", [pid, *keep])
                if counts:
                    out[pid] = counts
            return out

        return self._run(write)

    def write_demonstrations(self, project_id: int, model_version: str,
                             items: list[DemonstrationInput]) -> dict[str, int]:
        """Write the tokens a worker computed with `model_version`, in one transaction. A token whose region is no
        longer accepted, no longer the newest answer for its task and region id, or no longer has the content it
        was computed for is skipped (the change that made it so has queued its own computation). Returns
        {"written": n, "skipped": m}."""
        pid, version = int(project_id), str(model_version)

        def write(tx: _Cursorish) -> dict[str, int]:
            self._lock_project(tx, pid)
            now = time.time()
            written = skipped = 0
            for item in items:
                if tx.scalar(
                        "SELECT 1 FROM regions r JOIN annotations a ON a.annotation_id = r.annotation_id WHERE "
                        "r.task_id = ? AND r.region_id = ? AND r.project_id = ? AND r.annotation_id = ? AND "
                        f"r.content_digest = ? AND {_ACCEPTED} AND {_NEWEST}",
                        (int(item.task_id), item.region_id, pid, int(item.annotation_id), item.content_digest)) is None:
                    skipped += 1
                    continue
                self._replace_row(tx, pid, int(item.task_id), item.region_id, version, int(item.annotation_id),
                                  item.content_digest, item.token, item.caption, item.attributes, now)
                written += 1
            return {"written": written, "skipped": skipped}

        return self._run(write)

    def retire_stale_demonstrations(self, project_id: int, model_version: str) -> int:
        """Retire the project's rows for `model_version` that no accepted region backs any more (a safety net: the
        writes that change regions retire their rows themselves). Returns how many were retired."""
        pid, version = int(project_id), str(model_version)

        def write(tx: _Cursorish) -> int:
            self._lock_project(tx, pid)
            stale = tx.all(
                "SELECT d.id, d.task_id, d.region_id, d.model_version, d.annotation_id, d.content_digest FROM "
                "demonstrations d WHERE d.project_id = ? AND d.model_version = ? AND d.token IS NOT NULL AND NOT "
                "EXISTS (SELECT 1 FROM regions r JOIN annotations a ON a.annotation_id = r.annotation_id WHERE "
                "r.annotation_id = d.annotation_id AND r.region_id = d.region_id AND r.content_digest = "
                f"d.content_digest AND r.task_id = d.task_id AND {_ACCEPTED} AND {_NEWEST})", (pid, version))
            self._retire_rows(tx, pid, stale)
            return len(stale)

        return self._run(write)

    # ---------------------------------------------------- inside the transactions that change regions

    def _lock_project(self, tx: _Cursorish, project_id: int) -> None:
        """Serialise the writers of a project's demonstration rows (PostgreSQL; SQLite has one writer anyway), so
        that their ids commit in order within the project."""
        if tx.dialect == "postgresql":
            tx.execute("SELECT project_id FROM projects WHERE project_id = ? FOR UPDATE", (project_id,))

    def _retire_answered(self, tx: _Cursorish, project_id: int, task_id: int, annotation_id: int,
                         digests: dict[str, str | None]) -> int:
        """`record_annotation` applied a version of `annotation_id` whose regions are `digests` (region id → its
        content digest now, None for a region it removed): retire every row of those (task, region id) keys that
        is not this annotation's region with that very content. The caller holds the project's lock."""
        if not digests:
            return 0
        rows = tx.all("SELECT id, task_id, region_id, model_version, annotation_id, content_digest FROM "
                      "demonstrations WHERE project_id = ? AND task_id = ? AND token IS NOT NULL",
                      (project_id, task_id))
        stale = [row for row in rows if row["region_id"] in digests and not (
            int(row["annotation_id"]) == annotation_id and row["content_digest"] == digests[row["region_id"]])]
        self._retire_rows(tx, project_id, stale)
        return len(stale)

    def _retire_annotations(self, tx: _Cursorish, annotation_ids: list[int]) -> int:
        """`delete_annotations` removed these annotations: retire their regions' rows (locking their projects first,
        in order)."""
        if not annotation_ids:
            return 0
        select = ("SELECT id, project_id, task_id, region_id, model_version, annotation_id, content_digest FROM "
                  f"demonstrations WHERE annotation_id IN ({', '.join('?' * len(annotation_ids))}) AND token IS NOT "
                  "NULL")
        rows = tx.all(select, annotation_ids)
        projects = sorted({int(row["project_id"]) for row in rows})
        for pid in projects:
            self._lock_project(tx, pid)
        if tx.dialect == "postgresql" and projects:  # re-read under the locks: a worker may have written meanwhile
            rows = tx.all(select, annotation_ids)
        for pid in projects:
            self._retire_rows(tx, pid, [row for row in rows if int(row["project_id"]) == pid])
        return len(rows)

    def _retire_rows(self, tx: _Cursorish, project_id: int, rows: list[dict]) -> None:
        now = time.time()
        for row in rows:
            self._replace_row(tx, project_id, int(row["task_id"]), row["region_id"], row["model_version"],
                              int(row["annotation_id"]), row["content_digest"], None, None, {}, now)

    @staticmethod
    def _replace_row(tx: _Cursorish, project_id: int, task_id: int, region_id: str, model_version: str,
                     annotation_id: int, content_digest: str, token: bytes | None, caption: str | None,
                     attributes: dict, now: float) -> None:
        """The key's row, replaced by a new one (a new id: readers catching up by id see the change)."""
        tx.execute("DELETE FROM demonstrations WHERE project_id = ? AND task_id = ? AND region_id = ? AND "
                   "model_version = ?", (project_id, task_id, region_id, model_version))
        tx.execute("INSERT INTO demonstrations (project_id, task_id, region_id, annotation_id, model_version, "
                   "content_digest, token, caption, attributes, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (project_id, task_id, region_id, annotation_id, model_version, content_digest, token, caption,
                    canonical_json(attributes), now))
