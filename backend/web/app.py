"""The HTTP app Label Studio talks to (Flask 3; served by gunicorn, see regionscribe.backend.web.server).

    GET  /health   under 1 s, no model work: Redis reachable? how many inference workers are up?
    POST /setup    under 3 s: {"model_version": ...} (read from Redis or the checkpoint's config.json, never by
                   loading); remembers the project as connected and queues the check of its webhook
                   (regionscribe.backend.labelstudio.webhooks), which runs on the ingest worker after the answer
    POST /predict  batch (context null) or interactive (params.context.result holds the drawn boxes)
    POST /webhook  annotation events; answers 201 at once (the feedback loop builds on it)
    POST /export   a curated dataset from the store, written under <DATA_DIR>/exports/<name>
                   (regionscribe.backend.export)
    GET  /metrics  Prometheus text exposition

With BASIC_AUTH_USER and BASIC_AUTH_PASS set, every route but /health needs HTTP Basic auth (Label Studio's only
auth method towards ML backends). Request bodies above MAX_REQUEST_BYTES get 413. POST bodies are standard JSON objects
(Content-Type: application/json; no NaN or Infinity, no unpaired \\ud800-style surrogates): anything else gets 400.

Every request has an id: its X-Request-Id header when that is a plain token (letters, digits, ._:-, at most 128),
else a fresh one. It is echoed in the answer's X-Request-Id, is on every log line written while the request is
handled (regionscribe.backend.core.logs) and travels with the jobs the request queues, so the worker's lines for them
carry it too.
"""
from __future__ import annotations

import hmac
import json
import logging
import math
import re
import time
import uuid

import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

from regionscribe.backend.core.connections import fast_redis, redis_connection
from regionscribe.backend.core.keys import PROJECT_CONFIG_KEY, SYNC_LAST_KEY
from regionscribe.backend.core.liveness import live_workers, read_model_version, serving
from regionscribe.backend.core.logs import REQUEST_ID
from regionscribe.backend.core.prometheus import Metrics
from regionscribe.backend.core.settings import Settings, get_settings
from regionscribe.backend.inference.submit import inference_queue
from regionscribe.backend.labelstudio.webhooks import (
    record_refusal, remember_connection, schedule_check, warn_unfixable,
)
from regionscribe.backend.web.ml_backend import QueueUnavailable, RegionScribeBackend

log = logging.getLogger(__name__)

_REQUEST_ID_FORMAT = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # X-Request-Id values taken as they are


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    # the jobs' connection, with a short connect timeout: an unreachable Redis costs a request 0.5 s, not 2
    connection = redis_connection(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=5) \
        if settings.redis_url else None
    probe = fast_redis(settings.redis_url)  # /health's: answers within Label Studio's 1 s even when Redis hangs
    # the counters every request and webhook adds to: fire-and-forget, so on the short timeouts too (with the jobs'
    # 5 s, a Redis that hangs held each /webhook for seconds); GET /metrics reads them on the jobs' connection
    metrics = Metrics(probe)
    app.extensions["regionscribe"] = {"settings": settings, "redis": connection, "metrics": metrics}

    def model(label_config: str | None, project: str | None = None, redis_client=connection) -> RegionScribeBackend:
        return RegionScribeBackend(settings, redis_client, label_config, project=project, metrics=metrics,
                                   request_id=g.get("request_id"))

    # ------------------------------------------------------------------------------------------- around requests

    @app.before_request
    def _before():
        g.started = time.perf_counter()
        g.request_id = _request_id(request.headers.get("X-Request-Id"))
        g.request_id_token = REQUEST_ID.set(g.request_id)
        if settings.basic_auth_enabled and request.endpoint != "health":
            if not _authorized(settings):
                return Response("authentication required\n", 401,
                                {"WWW-Authenticate": 'Basic realm="regionscribe"', "Content-Type": "text/plain"})
        return None

    @app.after_request
    def _after(response):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        if not g.get("redis_down"):  # counters live in Redis: do not spend a second timeout on one found down
            metrics.observe_request(route, request.method, response.status_code, seconds)
            if route == "/webhook" and response.status_code == 401 and connection is not None:
                try:  # `regionscribe doctor` reports recent refusals: Label Studio itself never shows them
                    record_refusal(connection)
                except redis.RedisError:
                    pass
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response

    @app.teardown_request
    def _teardown(_exc):
        token = g.pop("request_id_token", None)
        if token is not None:
            REQUEST_ID.reset(token)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return jsonify({"error": exc.name, "detail": exc.description}), exc.code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify({"error": "internal error", "request_id": g.get("request_id")}), 500

    # ------------------------------------------------------------------------------------------------ routes

    @app.get("/health")
    def health():
        body = {"status": "UP", "model_class": RegionScribeBackend.__name__, "redis": False, "workers": 0}
        if probe is None:
            body.update(status="DOWN", detail="REDIS_URL is not set")
            return jsonify(body), 503
        try:
            # few round trips (one SCAN and one MGET for every worker, one GET): under load each one waits on Redis
            everyone = live_workers(probe)
            body["redis"] = True
            workers = serving(everyone, settings.inference_queue)  # the ones that can answer /predict
            body["workers"] = len(workers)
            body["workers_ready"] = sum(1 for w in workers if w.get("state") == "ready")
            body["training_workers"] = len(serving(everyone, settings.training_queue))
            body["model_version"] = read_model_version(probe, settings)
        except redis.RedisError as exc:
            g.redis_down = True
            body.update(status="DOWN", redis=False, detail=f"Redis unreachable: {type(exc).__name__}")
            return jsonify(body), 503
        return jsonify(body)

    @app.post("/setup")
    def setup():
        data = _json_body()
        project = _project_id(data.get("project"))
        schema = data.get("schema") if isinstance(data.get("schema"), str) else None
        # on the short timeouts, and nothing more asked of Redis once a call failed: Label Studio gives /setup 3 s
        if schema and project and probe is not None:
            try:
                probe.set(PROJECT_CONFIG_KEY.format(project=project), schema, ex=30 * 24 * 3600)
            except redis.RedisError as exc:
                g.redis_down = True
                log.warning("project %s: labeling config not saved in Redis (%s)", project, type(exc).__name__)
        answer = model(schema, project, redis_client=None if g.get("redis_down") else probe).setup()
        if project:
            _connected(int(project), request.url_root)
        return jsonify(answer)

    def _connected(project: int, backend_url: str) -> None:
        """The project reached this backend at `backend_url`: remember it (the sync and the doctor go through the
        connected projects) and queue the check of its webhook; nothing here waits on Label Studio."""
        if settings.basic_auth_enabled and not settings.label_studio_api_enabled:
            warn_unfixable(settings, project, backend_url)
        client = fast_redis(settings.redis_url)  # short timeouts: /setup stays well inside Label Studio's 3 s
        if client is None or g.get("redis_down"):
            return
        try:
            remember_connection(client, project, backend_url)
            if settings.label_studio_api_enabled:
                schedule_check(client, settings, project, backend_url)
        except redis.RedisError as exc:
            g.redis_down = True
            log.warning("project %s: connection not remembered, webhook not checked (Redis: %s)", project,
                        type(exc).__name__)

    @app.post("/predict")
    def predict():
        data = _json_body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            return jsonify({"error": "bad request", "detail": "'tasks' must be a non-empty list"}), 400
        params = data.get("params") if isinstance(data.get("params"), dict) else {}
        context = params.get("context", data.get("context"))
        if context is not None and not isinstance(context, dict):
            return jsonify({"error": "bad request", "detail": "'params.context' must be an object or null"}), 400
        if context is not None and context.get("result") is not None and not isinstance(context.get("result"), list):
            return jsonify({"error": "bad request", "detail": "'params.context.result' must be a list"}), 400
        project = _project_id(data.get("project"))
        label_config = data.get("label_config") if isinstance(data.get("label_config"), str) else None
        if not label_config and project and connection is not None:
            try:
                stored = connection.get(PROJECT_CONFIG_KEY.format(project=project))
                label_config = stored.decode() if stored else None
            except redis.RedisError as exc:  # not "no label_config": without Redis no prediction can be made
                g.redis_down = True
                return jsonify({"error": "service unavailable",
                                "detail": f"the job queue (Redis) is unreachable: {type(exc).__name__}"}), 503
        if not label_config:
            return jsonify({"error": "bad request", "detail": "no 'label_config' in the request and none saved by "
                                                              "/setup for this project"}), 400
        try:
            results = model(label_config, project).predict(tasks, context)
        except QueueUnavailable as exc:
            g.redis_down = True
            return jsonify({"error": "service unavailable", "detail": str(exc)}), 503
        return jsonify({"results": results})

    @app.post("/webhook")
    def webhook():
        """Annotation events → the feedback store, written before the answer (201); START_TRAINING → the
        retraining policy; other actions → 200 "Unknown event". A malformed payload gets 400 and writes nothing;
        a store that cannot be reached gets 503 (Label Studio logs the failure)."""
        from regionscribe.backend.feedback.events import UNAVAILABLE, BadEvent
        from regionscribe.backend.store import StoreError

        data = _json_body()
        action = data.get("action")
        if not isinstance(action, str) or not action:
            return jsonify({"error": "bad request", "detail": "'action' is missing"}), 400
        try:
            body = model(None).fit(action, data)
            g.redis_down = body.get("queue") == UNAVAILABLE  # a Redis call failed: no more of them for this request
        except BadEvent as exc:
            return jsonify({"error": "bad request", "detail": str(exc)}), 400
        except StoreError as exc:
            log.error("webhook %s not stored: %s", action, exc)
            return jsonify({"error": "service unavailable", "detail": f"the feedback store is unavailable: {exc}"}), 503
        return jsonify(body), 200 if body.get("status") == "Unknown event" else 201

    @app.post("/export")
    def export_route():
        """A dataset export (regionscribe.backend.export) written server-side under <DATA_DIR>/exports/<name>, never
        returned in the answer: 201 with its name, counts and selection id; 400 for bad options or an empty selection
        (nothing written), 409 for an existing name, 503 when the store is unavailable."""
        from regionscribe.backend.export import ExportError, ExportExists, export_to_data_dir
        from regionscribe.backend.store import StoreError

        try:
            body = export_to_data_dir(settings, _json_body())
        except ExportExists as exc:
            return jsonify({"error": "conflict", "detail": str(exc)}), 409
        except ExportError as exc:
            return jsonify({"error": "bad request", "detail": str(exc)}), 400
        except StoreError as exc:
            return jsonify({"error": "service unavailable", "detail": f"the feedback store is unavailable: {exc}"}), 503
        return jsonify(body), 201

    @app.get("/metrics")
    def metrics_route():
        if connection is None:
            return Response("# REDIS_URL is not set: no metrics\n", 503, mimetype="text/plain")
        try:
            gauges = _gauges(connection, settings)
            text = Metrics(connection).render(gauges)
        except redis.RedisError as exc:
            return Response(f"# Redis unreachable: {type(exc).__name__}\n", 503, mimetype="text/plain")
        return Response(text, 200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    return app


def _authorized(settings: Settings) -> bool:
    auth = request.authorization
    user = (auth.username or "") if auth is not None and auth.type == "basic" else ""
    password = (auth.password or "") if auth is not None and auth.type == "basic" else ""
    # compare both, always: no early exit that tells a right user name from a wrong one
    ok_user = hmac.compare_digest(user.encode(), (settings.basic_auth_user or "").encode())
    ok_pass = hmac.compare_digest(password.encode(), (settings.basic_auth_pass or "").encode())
    return ok_user and ok_pass


def _request_id(header: str | None) -> str:
    """The request's id: the X-Request-Id header when it is a plain token, else a fresh one (an id goes into every
    log line, so a header carrying anything else is not trusted)."""
    if header and _REQUEST_ID_FORMAT.fullmatch(header):
        return header
    return uuid.uuid4().hex[:12]


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{text} is out of range")
    return value


def _json_body() -> dict:
    """The body as a JSON object, or 400. Standard JSON only: Python's parser also takes NaN, Infinity, numbers that
    overflow to infinity and unpaired surrogates (\\ud800), none of which Label Studio sends, and each of which
    would fail later (int(inf), an id that cannot be stored, a string that cannot be encoded or hashed)."""
    if not request.is_json:
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    try:
        data = json.loads(request.get_data(cache=True), parse_constant=_refuse_constant, parse_float=_finite_float)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # raises on an unpaired surrogate
    except (ValueError, RecursionError) as exc:  # UnicodeError is a ValueError
        raise BadRequest(f"the body must be a JSON object; it is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _project_id(value) -> str | None:
    """Label Studio sends "<id>.<created_at timestamp>"; keep the id."""
    if value is None:
        return None
    text = str(value).split(".", 1)[0]
    return text if text.isascii() and text.isdigit() else None


def _gauges(connection: redis.Redis, settings: Settings) -> dict:
    from rq.registry import FailedJobRegistry

    queue = inference_queue(connection, settings)
    workers = live_workers(connection)
    version = read_model_version(connection, settings)
    gauges = {
        "regionscribe_queue_depth": ("Jobs waiting in the queue.", [({"queue": queue.name}, queue.count)]),
        "regionscribe_queue_failed_jobs": ("Jobs in rq's FailedJobRegistry (includes abandoned ones).",
                                           [({"queue": queue.name}, FailedJobRegistry(queue=queue).count)]),
        "regionscribe_workers_up": ("Inference workers whose heartbeat is fresh.", [({}, len(workers))]),
        "regionscribe_model_info": ("The model version the workers serve.", [({"version": version}, 1)]),
    }
    try:
        from regionscribe.backend.store import Store

        rates = Store.shared(settings).edit_rate()
        gauges["regionscribe_edit_rate"] = (
            "Share of model-prefilled regions the annotators changed (caption or an attribute), by model version.",
            [({"model_version": v}, round(r["rate"], 6)) for v, r in rates.items()])
        gauges["regionscribe_prefilled_regions"] = (
            "Live annotated regions a model version had pre-filled.",
            [({"model_version": v}, r["regions"]) for v, r in rates.items()])
        by_source = Store.shared(settings).regions_by_source()
        gauges["regionscribe_regions_live"] = (
            "Live (not deleted) annotated regions in the store, by project.",
            [({"project": str(p)}, c["regions"]) for p, c in sorted(by_source.items())])
        gauges["regionscribe_regions_sync_only"] = (
            "Live regions whose current content arrived only through a sync with Label Studio (no webhook delivered "
            "it), by project: a rising count means the webhook path is broken (regionscribe doctor says why).",
            [({"project": str(p)}, c["sync"]) for p, c in sorted(by_source.items())])
    except Exception as exc:  # the store is optional for /metrics
        log.warning("store figures not available for /metrics: %s", exc)
    last = _last_sync(connection)
    if last is not None:
        gauges["regionscribe_sync_last_run_timestamp_seconds"] = (
            "When the last periodic sync with Label Studio finished (epoch seconds).", [({}, last)])
    return gauges


def _last_sync(connection: redis.Redis) -> float | None:

    raw = connection.get(SYNC_LAST_KEY)
    try:
        return float(json.loads(raw)["at"]) if raw else None
    except (ValueError, KeyError, TypeError):
        return None
