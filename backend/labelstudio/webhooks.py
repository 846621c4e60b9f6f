"""The webhook Label Studio sends annotation events through, made right for this backend, and what the web process
remembers about the projects connected to it.

Label Studio creates one webhook per project when the ML backend is connected: `<backend URL>/webhook`, sending
every action with its payload, and no headers. With BASIC_AUTH_USER/BASIC_AUTH_PASS set, every ANNOTATION_* event it
sends then gets 401, silently: Label Studio saves the annotation, shows the backend as connected and never resends.

    /setup (web)     remember_connection(): the project and the URL Label Studio reached this backend at (Redis);
                     schedule_check(): queue `ensure_webhook_job(project, url)` on INGEST_QUEUE, at most once per
                     project every CHECK_EVERY seconds. Nothing waits: /setup answers at once, the job runs after.
                     Without LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY nothing can be fixed: one warning per process
                     says exactly how to fix it (warn_unfixable).
    ingest worker    ensure_webhook(): of the project's webhooks to <URL>/webhook (with or without credentials in the
                     URL) one is kept, the one Label Studio made when there is one; with Basic auth on it gets
                     `Authorization: Basic ...` (its other headers stay); the others are deleted, so each event
                     arrives once. A missing webhook is not created: the user may have removed it on purpose, the
                     sync (regionscribe.backend.feedback.sync) covers the project either way, and `regionscribe
                     doctor` says how to add it.
    doctor           inspect(): present, authenticated, not duplicated, active; refusals(): 401s on /webhook in the
                     last hour and day (record_refusal, called by the web process for every 401 on /webhook).

Label Studio (labelstudio.md §1, ml/models.py create_ml_webhook) makes the webhook with the ML backend's URL plus
"/webhook" and does not make a second one while one with exactly that URL exists: a header survives reconnecting, a
URL with credentials in it does not (reconnecting then adds a second webhook, which this module removes).
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis

from regionscribe.backend.core.keys import CONNECTED_KEY, REFUSED_KEY, REFUSED_LAST_KEY, WEBHOOK_CHECK_KEY
from regionscribe.backend.labelstudio.api import (
    LabelStudioError, calling, client, ml_backends, normalized_url, webhooks, without_credentials,
)
from regionscribe.backend.core.logs import current_request_id
from regionscribe.backend.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)

CHECK_EVERY = 60  # seconds: /setup runs often (every model list, every prediction batch); check a project this often
REFUSED_KEEP = 48 * 3600
WAIT_FOR_WEBHOOK = (1.0, 2.0, 4.0, 8.0)  # seconds between looks when Label Studio has not saved the webhook yet

_warned = False
_warned_lock = threading.Lock()


# ------------------------------------------------------------------------------------- the web process's part


def webhook_url(backend_url: str) -> str:
    """The webhook Label Studio makes for an ML backend at `backend_url`."""
    return backend_url.rstrip("/") + "/webhook"


def basic_auth_header(settings: Settings) -> str | None:
    """`Basic <base64 user:password>` when Basic auth is on, else None."""
    if not settings.basic_auth_enabled:
        return None
    token = base64.b64encode(f"{settings.basic_auth_user}:{settings.basic_auth_pass}".encode()).decode()
    return f"Basic {token}"


def remember_connection(connection: redis.Redis, project_id: int, backend_url: str) -> None:
    """/setup saw `project_id` reach this backend at `backend_url` (its URL as Label Studio uses it)."""
    connection.hset(CONNECTED_KEY, str(int(project_id)),
                    json.dumps({"url": normalized_url(backend_url), "seen_at": time.time()}))


def connected_projects(connection: redis.Redis | None) -> dict[int, dict]:
    """Projects whose /setup reached this deployment: {project_id: {"url", "seen_at"}} (empty without Redis)."""
    if connection is None:
        return {}
    out = {}
    for key, value in connection.hgetall(CONNECTED_KEY).items():
        try:
            out[int(key)] = json.loads(value)
        except (TypeError, ValueError):
            continue
    return out


def schedule_check(connection: redis.Redis, settings: Settings, project_id: int, backend_url: str) -> bool:
    """Queue `ensure_webhook_job` for the project unless one was queued in the last CHECK_EVERY seconds. Returns
    whether a job was queued."""
    from rq import Queue
    from rq.exceptions import DuplicateJobError
    from rq.serializers import JSONSerializer

    if not connection.set(WEBHOOK_CHECK_KEY.format(project=int(project_id)), "1", nx=True, ex=CHECK_EVERY):
        return False
    queue = Queue(settings.ingest_queue, connection=connection, serializer=JSONSerializer)
    try:
        queue.enqueue_call(ensure_webhook_job, args=(int(project_id), normalized_url(backend_url)),
                           job_id=f"regionscribe-webhook-{settings.ingest_queue}-{int(project_id)}", unique=True,
                           timeout=120, result_ttl=0, failure_ttl=60,
                           description=f"make project {project_id}'s webhook right",
                           meta={"request_id": current_request_id()})
    except DuplicateJobError:
        return False
    return True


def warn_unfixable(settings: Settings, project_id: int | None, backend_url: str) -> bool:
    """Basic auth is on but the backend cannot reach Label Studio's API: log, once per process, why annotation
    events will be refused and how to fix it. Returns whether it logged now."""
    global _warned
    with _warned_lock:
        if _warned:
            return False
        _warned = True
    missing = " and ".join(name for name, value in (("LABEL_STUDIO_URL", settings.label_studio_url),
                                                    ("LABEL_STUDIO_API_KEY", settings.label_studio_api_key))
                           if not value)
    ls = settings.label_studio_url or "<Label Studio URL>"
    project = project_id if project_id is not None else "<project id>"
    log.warning(
        "BASIC_AUTH_USER/BASIC_AUTH_PASS are set but %s %s not, so the backend cannot give Label Studio's webhook "
        "%s (project %s) its credentials: Label Studio sends annotation events without them, each gets 401 and the "
        "feedback loop never sees it. Fix: set LABEL_STUDIO_URL (Label Studio's base URL as seen from the backend) and "
        "LABEL_STUDIO_API_KEY (Label Studio: Account & Settings -> Personal Access Token) for the web server and the "
        "workers, and restart them; the next /setup adds the header and the sync recovers the annotations missed so "
        "far. Or add the header by hand: find the webhook's id with `curl -H 'Authorization: Token <your token>' "
        "%s/api/webhooks?project=%s`, then `curl -X PATCH -H 'Authorization: Token <your token>' -H 'Content-Type: "
        "application/json' %s/api/webhooks/<id>/ -d '{\"headers\": {\"Authorization\": \"Basic '$(printf %%s "
        "\"$BASIC_AUTH_USER:$BASIC_AUTH_PASS\" | base64)'\"}}'`",
        missing, "is" if " and " not in missing else "are", webhook_url(backend_url), project, ls, project, ls)
    return True


def record_refusal(connection: redis.Redis, now: float | None = None) -> None:
    """A request to /webhook was refused with 401 (counted per hour for `regionscribe doctor`)."""
    now = time.time() if now is None else now
    key = REFUSED_KEY.format(hour=int(now // 3600))
    pipe = connection.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, REFUSED_KEEP)
    pipe.set(REFUSED_LAST_KEY, repr(now), ex=REFUSED_KEEP)
    pipe.execute()


def refusals(connection: redis.Redis, now: float | None = None) -> dict:
    """401s on /webhook: {"last_hour": n (this and the previous UTC hour), "last_day": n (24 hours), "last_at":
    epoch seconds or None}."""
    now = time.time() if now is None else now
    hour = int(now // 3600)
    counts = connection.mget([REFUSED_KEY.format(hour=h) for h in range(hour - 23, hour + 1)])
    values = [int(c or 0) for c in counts]
    last = connection.get(REFUSED_LAST_KEY)
    return {"last_hour": sum(values[-2:]), "last_day": sum(values), "last_at": float(last) if last else None}


# ------------------------------------------------------------------------------- the worker's part: the repair


@dataclass
class WebhookState:
    """What a project's webhooks to this backend look like."""

    project_id: int
    url: str  # the webhook URL expected (no credentials)
    hooks: list[dict] = field(default_factory=list)  # the project's webhooks to that URL (any credentials in it)
    keep: dict | None = None  # the one to keep
    authenticated: bool | None = None  # with Basic auth on: does `keep` carry our Authorization header
    problems: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> list[dict]:
        return [h for h in self.hooks if self.keep is None or h.get("id") != self.keep.get("id")]


def _has_credentials(hook: dict) -> bool:
    return "@" in str(hook.get("url", "")).split("//", 1)[-1].split("/", 1)[0]


def inspect(settings: Settings, c: "LabelStudio", project_id: int, backend_url: str) -> WebhookState:
    """The project's webhooks to `<backend_url>/webhook`, the one to keep, and what is wrong with them."""
    expected = webhook_url(normalized_url(backend_url))
    hooks = [h for h in webhooks(c, project_id) if normalized_url(str(h.get("url", ""))) == normalized_url(expected)]
    state = WebhookState(project_id=int(project_id), url=expected, hooks=sorted(hooks, key=lambda h: h.get("id", 0)))
    if not hooks:
        state.problems.append("missing")
        return state
    plain = [h for h in state.hooks if not _has_credentials(h)]
    state.keep = (plain or state.hooks)[0]  # Label Studio's own webhook (no credentials in its URL), else the oldest
    if len(hooks) > 1:
        state.problems.append("duplicated")
    header = basic_auth_header(settings)
    if header is not None:
        headers = state.keep.get("headers") if isinstance(state.keep.get("headers"), dict) else {}
        sent = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        state.authenticated = sent == header
        if not state.authenticated:
            state.problems.append("wrong credentials" if sent else "no credentials")
    if state.keep.get("is_active") is False:
        state.problems.append("inactive")
    return state


def ensure_webhook(settings: Settings, project_id: int, backend_url: str, c: "LabelStudio | None" = None,
                   waits: tuple[float, ...] = WAIT_FOR_WEBHOOK) -> dict:
    """Make the project's webhook to `<backend_url>/webhook` right: with Basic auth on it carries
    `Authorization: Basic ...` (other headers kept; credentials in its URL removed, the header replaces them);
    other webhooks to the same URL are deleted. When none is found yet (Label Studio saves it while it calls
    /setup), looks again after each of `waits` seconds, then asks Label Studio for the project's ML backends in case
    it reaches this backend by another URL (a proxy). Returns a report: {"project", "url", "status": "ok" | "fixed" |
    "missing", "webhook", "updated": [...], "deleted": [...]}. Raises LabelStudioError when Label Studio cannot be
    asked."""
    c = c or client(settings)
    pid = int(project_id)
    state = inspect(settings, c, pid, backend_url)
    for seconds in waits:
        if state.hooks:
            break
        time.sleep(seconds)
        state = inspect(settings, c, pid, backend_url)
    if not state.hooks:
        for other in _other_urls(c, pid, backend_url):
            state = inspect(settings, c, pid, other)
            if state.hooks:
                break
    report = {"project": pid, "url": state.url, "status": "ok", "webhook": None, "updated": [], "deleted": []}
    if not state.hooks:
        report["status"] = "missing"
        log.warning("project %s has no webhook to %s: its annotations reach the store only through the sync (every "
                    "SYNC_INTERVAL s; `regionscribe doctor` says how to add the webhook)", pid, state.url)
        return report
    keep = state.keep
    report["webhook"] = keep.get("id")
    changes: dict = {}
    header = basic_auth_header(settings)
    if header is not None:
        current = dict(keep.get("headers")) if isinstance(keep.get("headers"), dict) else {}
        headers = {k: v for k, v in current.items() if k.lower() != "authorization"}
        headers["Authorization"] = header
        if headers != current:
            changes["headers"] = headers
        if _has_credentials(keep):
            changes["url"] = without_credentials(str(keep["url"]))
    if changes:
        with calling(f"updating webhook {keep.get('id')} of project {pid}"):
            c.webhooks.update(id=int(keep["id"]), **changes)
        report["updated"].append(keep.get("id"))
    for hook in state.duplicates:
        with calling(f"deleting the duplicate webhook {hook.get('id')} of project {pid}"):
            c.webhooks.delete(id=int(hook["id"]))
        report["deleted"].append(hook.get("id"))
    if report["updated"] or report["deleted"]:
        report["status"] = "fixed"
        log.info("project %s: webhook %s %s%s", pid, keep.get("id"),
                 "given the Basic auth header" if "headers" in changes else "kept",
                 f"; deleted duplicates {report['deleted']}" if report["deleted"] else "")
    return report


def _other_urls(c: "LabelStudio", project_id: int, backend_url: str) -> list[str]:
    """URLs Label Studio has for this project's ML backends other than `backend_url`, when that tells which one is
    this backend: the only ML backend of the project."""
    try:
        backends = ml_backends(c, project_id)
    except LabelStudioError as exc:
        log.info("ML backends of project %s not listed: %s", project_id, exc)
        return []
    urls = [str(b.get("url", "")) for b in backends if b.get("url")]
    if len(urls) == 1 and normalized_url(urls[0]) != normalized_url(backend_url):
        return urls
    return []


def ensure_webhook_job(project_id: int, backend_url: str) -> dict:
    """RQ job (INGEST_QUEUE), queued by /setup: `ensure_webhook` with this worker's settings. A failure is logged and
    returned, not raised (the next /setup, at most CHECK_EVERY seconds later, tries again)."""
    settings = get_settings()
    try:
        return ensure_webhook(settings, project_id, backend_url)
    except LabelStudioError as exc:
        log.warning("webhook of project %s not checked: %s", project_id, exc)
        return {"project": int(project_id), "status": "error", "detail": str(exc)}

