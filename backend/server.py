"""`regionscribe serve`: the HTTP app under gunicorn, through gunicorn's Python API.

No `--preload` and no model in the web processes: they only talk to Redis, so forking them is safe (CUDA never
starts in a forked process; the model lives in the workers).
"""
from __future__ import annotations

from gunicorn.app.base import BaseApplication

from .settings import Settings, get_settings


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
        from .app import create_app

        return create_app(self.settings)


def serve(host: str | None = None, port: int | None = None, workers: int | None = None,
          settings: Settings | None = None, threads: int | None = None) -> None:
    """Run the web server in the foreground until SIGINT/SIGTERM."""
    settings = settings or get_settings()
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
    }
    _Gunicorn(options, settings).run()
