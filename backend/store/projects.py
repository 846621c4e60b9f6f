"""Store methods for a project's row: its labeling config and a pending training request.
"""
from __future__ import annotations

import time

from regionscribe.backend.store.database import _Cursorish


class ProjectsMixin:
    """Projects (uses `Database._run`, `AnnotationsMixin._event` and `_set_outcome`)."""

    def _project(self, tx: _Cursorish, project_id: int, label_config: str | None = None) -> None:
        """Make sure the project's row exists (and holds `label_config`, when given). A plain read first: on
        PostgreSQL an INSERT .. ON CONFLICT waits for any transaction that is updating the row (every applied
        annotation moves the project's change counter), so a webhook would queue behind the project's writers
        even when the row is there, which it nearly always is."""
        if tx.one("SELECT 1 AS found FROM projects WHERE project_id = ?", (project_id,)) is None:
            tx.execute("INSERT INTO projects (project_id, created_at) VALUES (?, ?) ON CONFLICT (project_id) DO "
                       "NOTHING", (project_id, time.time()))
        if label_config:
            tx.execute("UPDATE projects SET label_config = ?, label_config_at = ? WHERE project_id = ? AND "
                       "(label_config IS NULL OR label_config <> ?)", (label_config, time.time(), project_id,
                                                                         label_config))

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

    def change_seq(self, project_id: int) -> int:
        """The project's change counter: it moves whenever a region of the project gets new content (0 for a project
        the store does not know)."""
        return int(self._run(lambda tx: tx.scalar("SELECT change_seq FROM projects WHERE project_id = ?",
                                                  (int(project_id),)), write=False) or 0)

    def projects(self) -> list[int]:
        return [int(r["project_id"]) for r in self._run(lambda tx: tx.all(
            "SELECT project_id FROM projects ORDER BY project_id"), write=False)]
