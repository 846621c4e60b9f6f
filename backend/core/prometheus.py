"""Prometheus metrics kept in Redis, so that every gunicorn process and every worker adds to the same numbers and
`GET /metrics` on any web process shows the whole deployment. Hand-written text exposition (format 0.0.4).

Writes are fire-and-forget: a metrics failure (Redis down) never fails the request or the job that records it.
"""
from __future__ import annotations

import logging

import redis
from regionscribe.backend.core.keys import METRICS_PREFIX

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.4, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 100.0)
COUNTERS = {  # hash field → (metric name, help); fields may carry labels as "name|k=v,k=v"
    "jobs": ("regionscribe_jobs_total", "Describe jobs as seen by the web process, by outcome."),
    "worker_jobs": ("regionscribe_worker_jobs_total", "Describe jobs run by inference workers, by outcome."),
    "cache": ("regionscribe_image_feature_cache_total", "Image-feature cache lookups in the workers, by result."),
    "regions": ("regionscribe_regions_described_total", "Regions described by the workers."),
    "region_errors": ("regionscribe_region_errors_total",
                      "Regions not described because their shape cannot be (a polygon with < 3 points or "
                      "self-intersecting, an empty mask, a brush RLE of another size); the task's other regions are."),
    "model_loads": ("regionscribe_model_loads_total", "Times an inference worker loaded the model."),
    "demonstrations": ("regionscribe_demonstrations_shown_total",
                       "Accepted regions shown the model as demonstrations before it described a box "
                       "(DEMONSTRATIONS)."),
    "demonstration_errors": ("regionscribe_demonstration_errors_total",
                             "Describe jobs predicted without demonstrations because their lookup failed (the store "
                             "unreachable...; the worker's log says why)."),
    "predictions_invalid": ("regionscribe_predictions_invalid_total",
                            "Predictions refused by LabelInterface validation (never sent)."),
    "webhooks": ("regionscribe_webhooks_total", "Webhook events received, by action."),
    "sync_runs": ("regionscribe_sync_runs_total",
                  "Projects synced with Label Studio (regionscribe.backend.feedback.sync), by project."),
    "sync_annotations": ("regionscribe_sync_annotations_total",
                         "Annotations a sync with Label Studio found, by outcome (new, changed, unchanged, deleted, "
                         "skipped); new, changed and deleted ones are events the webhook did not deliver."),
}


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self, connection: redis.Redis | None):
        self.connection = connection

    def _safe(self, fn) -> None:
        if self.connection is None:
            return
        try:
            fn()
        except redis.RedisError as exc:
            log.debug("metrics not recorded: %s", exc)

    def count(self, counter: str, amount: float = 1, **labels: str) -> None:
        field = counter + ("|" + _labels(labels) if labels else "")
        self._safe(lambda: self.connection.hincrbyfloat(f"{METRICS_PREFIX}:counters", field, amount))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        def write():
            pipe = self.connection.pipeline(transaction=False)
            pipe.hincrby(f"{METRICS_PREFIX}:requests", _labels({"route": route, "method": method, "status": str(status)}), 1)
            key = f"{METRICS_PREFIX}:latency:{route}"
            for bound in LATENCY_BUCKETS:
                if seconds <= bound:
                    pipe.hincrby(key, repr(bound), 1)
            pipe.hincrby(key, "+Inf", 1)
            pipe.hincrbyfloat(key, "sum", seconds)
            pipe.sadd(f"{METRICS_PREFIX}:routes", route)
            pipe.execute()

        self._safe(write)

    def render(self, gauges: dict[str, tuple[str, list[tuple[dict, float]]]] | None = None) -> str:
        """The Prometheus text exposition; `gauges` adds name → (help, [(labels, value)]) read live by the caller."""
        lines: list[str] = []
        c = self.connection
        requests = c.hgetall(f"{METRICS_PREFIX}:requests")
        lines += ["# HELP regionscribe_http_requests_total HTTP requests by route, method and status.",
                  "# TYPE regionscribe_http_requests_total counter"]
        for labels, value in sorted(requests.items()):
            lines.append(f"regionscribe_http_requests_total{{{labels.decode()}}} {int(value)}")
        lines += ["# HELP regionscribe_http_request_duration_seconds HTTP request latency by route.",
                  "# TYPE regionscribe_http_request_duration_seconds histogram"]
        for route in sorted(r.decode() for r in c.smembers(f"{METRICS_PREFIX}:routes")):
            hist = {k.decode(): float(v) for k, v in c.hgetall(f"{METRICS_PREFIX}:latency:{route}").items()}
            for bound in LATENCY_BUCKETS:
                lines.append(f'regionscribe_http_request_duration_seconds_bucket{{route="{_escape(route)}",'
                             f'le="{bound}"}} {int(hist.get(repr(bound), 0))}')
            total = int(hist.get("+Inf", 0))
            lines.append(f'regionscribe_http_request_duration_seconds_bucket{{route="{_escape(route)}",le="+Inf"}} '
                         f"{total}")
            lines.append(f'regionscribe_http_request_duration_seconds_sum{{route="{_escape(route)}"}} '
                         f"{hist.get('sum', 0.0)}")
            lines.append(f'regionscribe_http_request_duration_seconds_count{{route="{_escape(route)}"}} {total}')
        counters: dict[str, list[tuple[str, float]]] = {}
        for field, value in c.hgetall(f"{METRICS_PREFIX}:counters").items():
            name, _, labels = field.decode().partition("|")
            counters.setdefault(name, []).append((labels, float(value)))
        for key, (metric, help_) in COUNTERS.items():
            lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} counter"]
            for labels, value in sorted(counters.get(key, [])):
                lines.append(f"{metric}{{{labels}}} {_number(value)}" if labels else f"{metric} {_number(value)}")
        for metric, (help_, samples) in (gauges or {}).items():
            lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} gauge"]
            for labels, value in samples:
                lines.append(f"{metric}{{{_labels(labels)}}} {_number(value)}" if labels else
                             f"{metric} {_number(value)}")
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
