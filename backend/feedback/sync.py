"""Reconciliation with Label Studio, the source of truth: `regionscribe sync [--project N] [--since T]`, and the
ingest worker every SYNC_INTERVAL seconds for every connected project.

Label Studio never resends a webhook. An event is lost when the backend is down or restarting, slower than Label
Studio's 1 s webhook timeout, refuses it (401: a webhook without the Basic auth header), or when the project has no
webhook at all. The sync reads what Label Studio holds and brings the store in line:

- every task of the project with its annotations (label-studio-sdk, `fields=all`, page by page);
- each annotation the store does not have, or holds an older version of, goes through the webhook's own path
  (`Store.record_annotation`, source "sync"): newest wins by (updated_at, content digest), and a region's change
  counter only moves when its content changes, so a sync and a webhook delivering the same annotation, in either
  order or at once, store it once and count each region once toward retraining;
- each annotation the store holds live that Label Studio no longer lists, and that the store had before the listing
  began, is asked for on its own: only a 404 tombstones it (`Store.delete_annotations`, source "sync"), so a page
  that shifted while it was read deletes nothing. Tombstones stay (an annotation id never comes back);
- then, as after a webhook, the images of new regions are queued for caching and the retraining policy is asked.

`--since T` reads only the tasks Label Studio changed at or after T (the Data Manager's `tasks:updated_at` filter:
saving or deleting an annotation touches its task); deletions are then looked for among the store's annotations of
those tasks and those updated at or after T. The Data Manager's bulk "Delete annotations" does not touch the tasks,
so only a sync without `--since` (the periodic one) is sure to see those. Without it every task is read.

Counts per project: new (the store did not have the annotation), changed (it had an older version), unchanged,
deleted, and skipped (malformed, kept out with a log line). Regions whose content only a sync delivered keep the
source "sync" in the store: /metrics, `report` and `doctor` show how many, and a rising count means the webhook path
is broken.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterable

import redis

from regionscribe.backend.core.connections import redis_connection
from regionscribe.backend.core.keys import SYNC_JOB_KEY, SYNC_LAST_KEY, SYNC_TICK_KEY
from regionscribe.backend.core.liveness import is_alive
from regionscribe.backend.feedback.events import (
    CREATED, DELETED, UPDATED, BadEvent, evaluate_policy, parse_annotation,
)
from regionscribe.backend.feedback.image_cache import queue_missing_images
from regionscribe.backend.labelstudio.labeling_config import parsed_config
from regionscribe.backend.labelstudio.api import (
    LabelStudioError, annotation_exists, client, project as ls_project, tasks,
)
from regionscribe.backend.core.prometheus import Metrics
from regionscribe.backend.core.settings import Settings, get_settings
from regionscribe.backend.store import Store, parse_time_us
from regionscribe.backend.labelstudio.webhooks import connected_projects

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)

COUNTS = ("new", "changed", "unchanged", "deleted", "skipped")


class SyncError(RuntimeError):
    """A project could not be synced; nothing was deleted."""


@dataclass
class SyncReport:
    project: int
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: int = 0
    tasks: int = 0
    regions_changed: int = 0  # regions whose content the sync brought (new or changed content)
    seconds: float = 0.0
    training: dict | None = None  # what the retraining policy answered, when the sync changed regions

    def counts(self) -> dict:
        return {k: getattr(self, k) for k in COUNTS}

    def as_dict(self) -> dict:
        return asdict(self)


def parse_since(text: str | None) -> int | None:
    """`--since`: an ISO 8601 date or time (UTC unless it says otherwise), as microseconds since the epoch."""
    if text is None or text == "":
        return None
    us = parse_time_us(text.strip())
    if us is None:
        raise ValueError(f"--since {text!r}: use an ISO 8601 date or time, e.g. 2024-05-01 or 2024-05-01T12:00:00Z")
    return us


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _since_query(since_us: int) -> str:
    """Data Manager query: tasks updated at or after `since_us` (Label Studio touches a task's updated_at when one of
    its annotations is saved or deleted, just before it stamps the annotation: a second of slack keeps the task of an
    annotation saved at exactly `since_us`)."""
    return json.dumps({"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
         "value": _iso(since_us - 1_000_000)}]}})


def sync_project(settings: Settings, project_id: int, *, since: int | None = None, store: Store | None = None,
                 c: "LabelStudio | None" = None, connection: redis.Redis | None = None,
                 on_task: Callable[[int], object] | None = None) -> SyncReport:
    """Bring the store in line with Label Studio for one project (see the module's docstring). Raises SyncError when
    the project cannot be read (nothing deleted then); an annotation that cannot be parsed is skipped and counted.
    `on_task(1)` is called for every task read (a progress bar)."""
    started_at = time.time()
    pid = int(project_id)
    store = store or Store.shared(settings)
    report = SyncReport(project=pid)
    try:
        c = c or client(settings)
        info = ls_project(c, pid)
    except LabelStudioError as exc:
        if exc.status == 404:
            raise SyncError(f"project {pid} is not in Label Studio at {settings.label_studio_url} (deleted, or "
                            "another Label Studio): nothing changed") from None
        raise SyncError(f"project {pid}: {exc}") from None
    xml = info.get("label_config") if isinstance(info.get("label_config"), str) else None
    if xml and "\x00" not in xml and store.label_config(pid) != xml:
        store.set_label_config(pid, xml)
    config = parsed_config(xml)
    known = store.annotation_versions(pid)
    seen: set[int] = set()
    listed_tasks: set[int] = set()
    missing_images: list = []
    query = _since_query(since) if since is not None else None
    try:
        for task in tasks(c, pid, query=query):
            report.tasks += 1
            if on_task is not None:
                on_task(1)
            try:
                task_id = int(task["id"])
            except (KeyError, TypeError, ValueError):
                report.skipped += 1
                continue
            listed_tasks.add(task_id)
            task_body = {"id": task_id, "data": task.get("data") if isinstance(task.get("data"), dict) else {},
                         "project": pid}
            for annotation in task.get("annotations") or []:
                outcome = _one(store, pid, task_body, annotation, config, known, seen, report)
                if outcome is not None:
                    missing_images += outcome
    except LabelStudioError as exc:
        raise SyncError(f"project {pid}: {exc} (after {report.tasks} tasks; nothing deleted)") from None

    gone = _confirmed_gone(c, known, seen, listed_tasks, since, started_at)
    if gone:
        store.delete_annotations(gone, {"action": DELETED, "annotations": [{"id": i} for i in gone],
                                        "project": {"id": pid}}, project_id=pid, source="sync")
        report.deleted = len(gone)
    if report.new or report.changed or report.deleted:
        log.info("sync of project %s: %s", pid, report.counts())
    _, connection = queue_missing_images(settings, connection, missing_images)
    if report.regions_changed:
        report.training = evaluate_policy(settings, store, connection, pid)
    report.seconds = round(time.time() - started_at, 3)
    metrics = Metrics(connection)
    metrics.count("sync_runs", project=str(pid))
    for name in COUNTS:
        if getattr(report, name):
            metrics.count("sync_annotations", getattr(report, name), outcome=name)
    return report


def _one(store: Store, pid: int, task: dict, annotation, config, known: dict, seen: set,
         report: SyncReport) -> list | None:
    """One annotation Label Studio lists: compared with the store's version, recorded when newer. Returns the images
    the write found uncached, or None."""
    try:
        aid = int(annotation["id"]) if isinstance(annotation, dict) else None
    except (KeyError, TypeError, ValueError):
        aid = None
    if aid is None:
        report.skipped += 1
        log.warning("sync of project %s: an annotation of task %s has no usable id; skipped", pid, task["id"])
        return None
    seen.add(aid)  # listed, so not deleted, even when it cannot be read
    state = known.get(aid)
    action = UPDATED if state is not None and state.get("version_us") is not None else CREATED
    payload = {"action": action, "annotation": annotation, "task": task, "project": {"id": pid}}
    try:
        parsed = parse_annotation(payload, config)
    except BadEvent as exc:
        report.skipped += 1
        log.warning("sync of project %s: annotation %s skipped: %s", pid, aid, exc)
        return None
    if state is not None:
        if state.get("deleted_at") is not None:
            report.unchanged += 1  # tombstoned here; ids are never reused, so this is the annotation deleted before
            return None
        if state.get("version_us") is not None and \
                (parsed.version_us, parsed.digest) <= (int(state["version_us"]), state.get("version_digest") or ""):
            report.unchanged += 1
            return None
    outcome = store.record_annotation(parsed, action, payload, source="sync")
    if outcome.get("outcome") != "applied":  # a webhook stored it meanwhile
        report.unchanged += 1
        return None
    if state is None or state.get("version_us") is None:
        report.new += 1
    else:
        report.changed += 1
    report.regions_changed += int(outcome.get("changed_regions") or 0)
    return outcome.get("images_missing") or []


def _confirmed_gone(c: "LabelStudio", known: dict, seen: set, listed_tasks: set, since: int | None,
                    started_at: float) -> list[int]:
    """Annotations the store holds live that the listing did not show, that the store had before the listing began,
    and that Label Studio answers 404 for."""
    candidates = []
    for aid, state in known.items():
        if aid in seen or state.get("deleted_at") is not None or state.get("version_us") is None:
            continue
        if state.get("stored_at") is not None and float(state["stored_at"]) >= started_at:
            continue  # written while the listing ran (a webhook): the listing may have passed its task already
        if since is not None and state.get("task_id") not in listed_tasks and int(state["version_us"]) < since:
            continue  # outside what --since read
        candidates.append(aid)
    gone = []
    for aid in sorted(candidates):
        try:
            if not annotation_exists(c, aid):
                gone.append(aid)
        except LabelStudioError as exc:
            log.warning("annotation %s not confirmed deleted (%s); left as it is", aid, exc)
    return gone


def projects_to_sync(settings: Settings, store: Store, connection: redis.Redis | None) -> list[int]:
    """Every project connected to this deployment (its /setup reached it: Redis) or already in the store."""
    found = set(store.projects())
    try:
        found |= set(connected_projects(connection))
    except redis.RedisError as exc:
        log.warning("connected projects not read from Redis (%s); syncing the store's projects", exc)
    return sorted(found)


def sync_all(settings: Settings, projects: Iterable[int] | None = None, since: int | None = None,
             store: Store | None = None, connection: redis.Redis | None = None,
             on_task: Callable[[int], object] | None = None) -> dict[int, SyncReport | str]:
    """`sync_project` for each project (default: `projects_to_sync`): {project: report, or the error text}. One
    project failing does not stop the others."""
    store = store or Store.shared(settings)
    c = client(settings)
    chosen = list(projects) if projects is not None else projects_to_sync(settings, store, connection)
    out: dict[int, SyncReport | str] = {}
    for pid in chosen:
        try:
            out[pid] = sync_project(settings, pid, since=since, store=store, c=c, connection=connection,
                                    on_task=on_task)
        except SyncError as exc:
            log.warning("sync: %s", exc)
            out[pid] = str(exc)
    return out


def sync_job() -> dict:
    """RQ job (INGEST_QUEUE), queued every SYNC_INTERVAL seconds by an ingest worker: every connected project."""

    settings = get_settings()
    connection = redis_connection(settings.redis_url) if settings.redis_url else None
    try:
        reports = sync_all(settings, connection=connection)
    except LabelStudioError as exc:
        log.warning("sync skipped: %s", exc)
        return {"error": str(exc)}
    summary = {"at": time.time(), "projects": {str(p): (r.as_dict() if isinstance(r, SyncReport) else {"error": r})
                                               for p, r in reports.items()}}
    if connection is not None:
        try:
            connection.set(SYNC_LAST_KEY, json.dumps(summary, default=str))
        except redis.RedisError:
            pass
    return summary


def enqueue_sync(connection: redis.Redis, settings: Settings) -> bool:
    """Queue `sync_job` unless the last one queued still waits, or still runs on a live worker (a sync slower than
    SYNC_INTERVAL does not pile up; one whose worker died does not block the next). Returns whether it queued one."""
    import uuid

    from rq import Queue
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus
    from rq.serializers import JSONSerializer

    key = SYNC_JOB_KEY.format(queue=settings.ingest_queue)
    last = connection.get(key)
    if last:
        try:
            job = Job.fetch(last.decode(), connection=connection, serializer=JSONSerializer)
            status = job.get_status(refresh=False)
            if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
                return False
            if status == JobStatus.STARTED and job.worker_name and is_alive(connection, job.worker_name):
                return False
        except NoSuchJobError:
            pass
    job_id = f"regionscribe-sync-{uuid.uuid4().hex[:12]}"
    queue = Queue(settings.ingest_queue, connection=connection, serializer=JSONSerializer)
    queue.enqueue_call(sync_job, job_id=job_id, timeout=max(3600, 2 * settings.sync_interval), result_ttl=0,
                       failure_ttl=300, description="sync every connected project with Label Studio")
    connection.set(key, job_id, ex=max(3600, 2 * settings.sync_interval) + 600)
    return True


def tick(connection: redis.Redis, settings: Settings) -> bool:
    """The periodic sync's clock, shared by every ingest worker: queue a sync when none was queued in the last
    SYNC_INTERVAL seconds. Returns whether this call queued one."""
    if settings.sync_interval <= 0:
        return False
    if not connection.set(SYNC_TICK_KEY, repr(time.time()), nx=True, ex=max(1, int(settings.sync_interval))):
        return False
    return enqueue_sync(connection, settings)
