"""Every Redis key regionscribe reads or writes, in one place. Redis holds only what can be lost or rebuilt: liveness,
announcements, the retraining policy's pointers, the sync clock, the webhook's bookkeeping and the counters; the
feedback store (regionscribe.backend.store) holds everything that must survive."""

# the inference workers (regionscribe.backend.core.liveness)
WORKER_KEY = "regionscribe:workers:{name}"  # liveness: JSON of pid/host/state/model_version, expires if not beaten
MODEL_VERSION_KEY = "regionscribe:model_version"  # the model version the latest started worker serves
CURRENT_KEY = "regionscribe:model:current"  # JSON {"version", "path"}: the registry's current version (training job)

# the web process (regionscribe.backend.web.app)
PROJECT_CONFIG_KEY = "regionscribe:project:{project}:label_config"  # the config /setup saw, for /predict without one

# demonstrations (regionscribe.backend.inference.demonstration_jobs): set while a refresh of a project's tokens for a
# model version is queued or running, so the triggers (a worker starting, a new model version, a worker noticing new
# regions) queue one at a time; it expires on its own if the worker running it dies
DEMONSTRATIONS_REFRESH_KEY = "regionscribe:demonstrations:{project}:{version}:refresh"

# the retraining policy (regionscribe.backend.feedback.policy)
TRAINING_JOB_KEY = "regionscribe:training:{project}:job"  # id of the project's current (or last) training job
TRAINING_MUTEX_KEY = "regionscribe:training:{project}:mutex"  # serialises the check-then-enqueue of a run

# reconciliation with Label Studio (regionscribe.backend.feedback.sync)
SYNC_JOB_KEY = "regionscribe:sync:{queue}:job"  # id of the last sync job queued on that queue
SYNC_TICK_KEY = "regionscribe:sync:tick"  # set for SYNC_INTERVAL seconds by the worker that queued the last sync
SYNC_LAST_KEY = "regionscribe:sync:last"  # JSON of the last periodic sync: {"at", "projects": {id: counts or error}}

# the webhook Label Studio sends events through (regionscribe.backend.labelstudio.webhooks)
CONNECTED_KEY = "regionscribe:connected_projects"  # hash: project id -> {"url": backend URL LS uses, "seen_at"}
WEBHOOK_CHECK_KEY = "regionscribe:webhook_check:{project}"  # set while a check of the project is recent
REFUSED_KEY = "regionscribe:webhook_refused:{hour}"  # 401s on /webhook per UTC hour
REFUSED_LAST_KEY = "regionscribe:webhook_refused:last"

# Prometheus counters (regionscribe.backend.core.prometheus): one hash per metric family under this prefix
METRICS_PREFIX = "regionscribe:metrics"
