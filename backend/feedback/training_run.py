"""The training job of the feedback loop, run by `regionscribe worker --queue training`.

    run_training(project_id)
      0. take the project's training lease in the store (renewed while the run goes; a run that finds another run's
         live lease does nothing: regionscribe.backend.feedback.policy)
      1. fetch any image not cached yet, snapshot the project's live region records, mark the run started
      2. split the annotated images (by image) into train and held-out corrections
      3. two-stage tuning from the current version: corrections mixed with replayed synthetic data (old skills) for
         a model that learned the synthetic corpus; the project's regions alone for one that did not. A model with
         a pretrained LM (converted GPT4RoI, `train --vision --lm`) trains LoRA adapters and is published as an
         adapter version over its base (model/adapters.py); the tiny default trains in full (feedback_plan)
      4. evaluate candidate and current on the base test split (synthetic-trained models only) and on the held-out
         corrections
      5. promotion gate (regionscribe.backend.feedback.promotion), metric by metric: no attribute or relation axis
         more than PROMOTION_TOLERANCE points worse on the base split (where there is one), caption CIDEr-D not more
         than PROMOTION_CIDER_TOLERANCE worse, and at least as good on the held-out corrections; otherwise the candidate
         is kept as "rejected" with its metrics and the metrics that failed (manifest `gate`)
      6. publish atomically into the registry; if accepted, announce the new current version in Redis so inference
         workers reload it between jobs (regionscribe.backend.core.liveness.announce)

Step 0 is here; steps 1 to 6 are regionscribe.backend.feedback.retrain, imported when the job runs: the retraining
policy enqueues `run_training` itself (a rename fails at import), and the web process, which evaluates the policy,
imports this module but never torch.

A crash at any step leaves the current version serving: the candidate lives in a staging folder until published.
A run that does not get to publish (killed, or raising) is closed as failed by the policy (`store.training_failed`),
which gives its regions back to the pending count, so the next run takes them.
"""
from __future__ import annotations

import logging
import threading
import uuid

log = logging.getLogger(__name__)


class LeaseKeeper(threading.Thread):
    """Renews a training run's lease in the store every third of its length while the run goes (the store, not
    Redis, says a run is going: regionscribe.backend.feedback.policy). `lost` is set when the lease is no longer this
    run's (another holder took it after it expired, or the run was closed as failed); the run then must not publish."""

    def __init__(self, store, project_id: int, holder: str, seconds: float):
        super().__init__(name="regionscribe-training-lease", daemon=True)
        self.store, self.project_id, self.holder, self.seconds = store, int(project_id), holder, float(seconds)
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.seconds / 3):
            try:
                if not self.store.renew_training_lease(self.project_id, self.holder, self.seconds):
                    log.error("training run %s of project %s lost its lease", self.holder, self.project_id)
                    self.lost.set()
                    return
            except Exception as exc:  # the store is briefly down: try again at the next beat, the lease has margin
                log.warning("training lease of project %s not renewed: %s", self.project_id, exc)

    def stop(self) -> None:
        self.stopped.set()


def run_training(project_id, settings=None) -> dict:
    """One feedback training run for a project. Returns a summary (also stored in the version's manifest).

    The run first takes the project's training lease in the store (TRAINING_LEASE_SECONDS, renewed while it runs):
    when another run holds a live one (it was enqueued after Redis lost the first run's job), this one does nothing
    and returns {"skipped": True, ...}."""
    from rq import get_current_job

    from regionscribe.backend.core.settings import get_settings
    from regionscribe.backend.store import Store

    settings = settings or get_settings()
    store = Store.shared(settings)
    job = get_current_job()  # None when called outside a worker
    holder = job.id if job is not None else f"local-{uuid.uuid4().hex[:12]}"
    if store.acquire_training_lease(project_id, holder, settings.training_lease_seconds) is None:
        lease = store.training_lease(project_id) or {}
        log.warning("training run %s of project %s not started: run %s holds the project's lease until %s", holder,
                    project_id, lease.get("holder"), lease.get("expires_at"))
        return {"project": str(project_id), "skipped": True, "holder": lease.get("holder"),
                "reason": "another training run of the project holds its lease"}
    keeper = LeaseKeeper(store, project_id, holder, settings.training_lease_seconds)
    keeper.start()
    try:
        from regionscribe.backend.feedback.retrain import train_and_publish

        return train_and_publish(project_id, settings, store, job, keeper)
    finally:
        keeper.stop()
        try:
            store.release_training_lease(project_id, holder)
        except Exception as exc:  # it expires by itself
            log.warning("training lease of project %s not released: %s", project_id, exc)
