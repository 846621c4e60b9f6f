"""`regionscribe serve`: the HTTP app under gunicorn, through gunicorn's Python API.

No `--preload` and no model in the web processes: they only talk to Redis, so forking them is safe (CUDA never
starts in a forked process; the model lives in the workers).

Logging (regionscribe.backend.core.logs): the app's lines go through the root logger in LOG_FORMAT. With
LOG_FORMAT=json, gunicorn's own error and access lines are JSON objects too, and each access line carries the request
id the app answered with (X-Request-Id); with "text", gunicorn keeps its usual formats.
"""
from __future__ import annotations

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from regionscribe.backend.core.logs import capture_process_output, configure_logging, make_formatter, request_context
from regionscribe.backend.core.settings import Settings, get_settings


def _json_logger_class(settings: Settings) -> type[Logger]:
    formatter = make_formatter(settings)

    class JsonGunicornLogger(Logger):
        """gunicorn's logger, its lines formatted by regionscribe.backend.core.logs; access lines with the answer's
        request id."""

        def setup(self, cfg):
            super().setup(cfg)
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.setFormatter(formatter)

        def access(self, resp, req, environ, request_time):
            headers = getattr(resp, "headers", None) or []
            request_id = next((v for k, v in headers if str(k).lower() == "x-request-id"), None)
            with request_context(request_id):
                super().access(resp, req, environ, request_time)

    return JsonGunicornLogger


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict, settings: Settings):
        self.options = options
        self.settings = settings
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self):
        from regionscribe.backend.web.app import create_app

        return create_app(self.settings)


def serve(host: str | None = None, port: int | None = None, workers: int | None = None,
          settings: Settings | None = None, threads: int | None = None) -> None:
    """Run the web server in the foreground until SIGINT/SIGTERM."""
    settings = settings or get_settings()
    # the app's lines (forked gunicorn workers inherit the handler), and under json whatever else is printed
    capture_process_output(settings, configure_logging(settings))
    options = {
        "bind": f"{host or settings.host}:{port or settings.port}",
        "workers": workers or settings.web_workers,
        "threads": threads or settings.web_threads,
        "worker_class": "gthread",
        # a /predict waits at most PREDICT_TIMEOUT for the workers; give gunicorn a margin above it
        "timeout": int(settings.predict_timeout) + 30,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "proc_name": "regionscribe-web",
        "logger_class": _json_logger_class(settings) if settings.log_format == "json" else None,
    }
    _Gunicorn(options, settings).run()
