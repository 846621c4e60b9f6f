"""Store methods for training: the snapshot a run trains on, the pending count, the runs themselves and their leases.

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
import time

from regionscribe.backend.store.database import _Cursorish
from regionscribe.backend.store.records import Snapshot


class TrainingRunsMixin:
    """Snapshots, training runs and leases (uses `Database._run`, `ProjectsMixin._project` and
    `RegionsMixin.record_from_row`)."""

    def snapshot(self, project_id: int) -> Snapshot:
        """Every live trainable region of the project (not deleted, not cancelled, with a caption, detailed caption,
        relation text or attribute), and an id that is a hash of their (annotation id, region id, updated_at): the
        same data gives the same id. Records whose image is not cached yet have image_path None (call
        `image_cache.fetch_missing_images(store)` first)."""
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
