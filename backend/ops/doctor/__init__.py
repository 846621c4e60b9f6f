"""`regionscribe doctor`: is this deployment able to work? Each check prints OK, WARN, FAIL or SKIP with what it saw
and, when something is wrong, what to do about it in plain words. Exit status 1 when any check FAILs.

    regionscribe doctor            # text
    regionscribe doctor --json     # {"ok": bool, "checks": [{"name", "status", "detail", "fix", "seconds"}]}
    regionscribe doctor --load     # also load the model the workers would serve, time it, describe one box

Checks, with the settings of this process's environment (run it where the service runs, e.g.
`docker compose exec backend regionscribe doctor`):
- settings: every variable parses;
- redis: REDIS_URL answers PING; server version at least 6.0.6 (rq's requirement for its queue commands); the
  eviction policy keeps rq's keys (noeviction);
- store: the feedback store opens and its schema is current (SQLite file under DATA_DIR, or PostgreSQL from
  STORE_URL); opening a SQLite store creates it when it is missing;
- registry: REGISTRY_DIR's current version is complete and the folder is writable (the trainer writes it);
- model: the checkpoint the inference workers would load (the version the training job announced in Redis, else
  MODEL_DIR, else the embedded default) is on this machine with a readable config; `--load` loads it;
- workers: live inference, training and ingest workers (their Redis heartbeats) and the queue depths;
- label_studio: LABEL_STUDIO_URL answers /health, and LABEL_STUDIO_API_KEY is accepted
  (/api/current-user/whoami; a personal access token is first exchanged for an access token, as the image fetcher
  does);
- webhooks: for every connected project (its /setup reached this deployment), Label Studio's webhook to this
  backend's /webhook is there, carries the Basic auth header when BASIC_AUTH_USER/BASIC_AUTH_PASS are set, is not
  duplicated and is active; and how many requests to /webhook were refused with 401 in the last hour and day;
- sync: the periodic sync with Label Studio (SYNC_INTERVAL) is on and ran recently, and how many live regions
  arrived only through it (events the webhook lost);
- backend (only with --backend URL): the web server's /health.

The checks: infrastructure.py (redis, store, registry), processes.py (model, workers, backend), label_studio.py
(label_studio, webhooks, sync); diagnose.py runs them in order and prints them; checks.py holds what a check reports.
This `__init__` keeps every name importable from regionscribe.backend.ops.doctor.

No secret is ever printed: the API key, BASIC_AUTH_PASS and passwords inside REDIS_URL/STORE_URL are scrubbed from
every line, whatever a library put into an error message.
"""
from __future__ import annotations

from regionscribe.backend.ops.doctor.checks import FAIL, OK, SKIP, WARN, Check
from regionscribe.backend.ops.doctor.diagnose import main, render, run_checks
from regionscribe.backend.ops.doctor.infrastructure import MIN_REDIS, check_redis, check_registry, check_store
from regionscribe.backend.ops.doctor.label_studio import check_label_studio, check_sync, check_webhooks
from regionscribe.backend.ops.doctor.processes import check_backend, check_model, check_workers

__all__ = ["FAIL", "MIN_REDIS", "OK", "SKIP", "WARN", "Check", "check_backend", "check_label_studio", "check_model",
           "check_redis", "check_registry", "check_store", "check_sync", "check_webhooks", "check_workers", "main",
           "render", "run_checks"]
