"""Logging for the web server, the workers and the runner: one format for all of them (LOG_FORMAT), the request id on
every line written while a request or the job it queued is handled, and no secret in any line.

    LOG_FORMAT=text   2024-05-01 12:00:00,123 INFO regionscribe.backend.web.app [3f2a9c1b0d4e]: message
    LOG_FORMAT=json   {"time": "2024-05-01T12:00:00.123Z", "level": "INFO", "logger": "regionscribe.backend.web.app",
                       "message": "message", "request_id": "3f2a9c1b0d4e", "exc_info": "Traceback (most recent..."}

One JSON object per line; `request_id` and `exc_info` only when there is one. The request id lives in a context
variable: the web app sets it around each request (the X-Request-Id header, else a fresh id), a worker around each job
(the id the request that queued the job put in `job.meta["request_id"]`). `request_context(request_id)` sets it
anywhere else; a record with its own `request_id` attribute (`extra={"request_id": ...}`) keeps that one.

With LOG_FORMAT=json a long-running process (`serve`, `worker`, `run`) also calls `capture_process_output`: its
stdout and stderr file descriptors become pipes, and every line anything writes there (a library's bare print, C code,
a traceback, a forked child's output) reaches the log as a JSON object of logger "stdout" or "stderr"; a line that is
already one of our JSON objects (a child process's, gunicorn's) passes through unchanged.

Secrets never reach a line: BASIC_AUTH_PASS, LABEL_STUDIO_API_KEY and the passwords in REDIS_URL and STORE_URL are
replaced by *** wherever they appear in a message or traceback (values shorter than 4 characters are not looked for),
and so is the password part of any URL (scheme://user:password@host). `secrets_of` and `Redactor` are the one place
for this: `regionscribe doctor` scrubs its output with them too.
"""
from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import threading
from datetime import datetime, timezone
from typing import Iterable, Iterator, Mapping, TextIO
from urllib.parse import unquote, urlsplit

from regionscribe.backend.core.settings import LOG_FORMATS

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_id_tag)s: %(message)s"
MIN_SECRET_LENGTH = 4  # shorter values would mask fragments of ordinary words
SECRET_VARIABLES = ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN", "BASIC_AUTH_PASS")  # secrets by name in env

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("regionscribe_request_id", default=None)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")


def current_request_id() -> str | None:
    """The request id of the request or job being handled in this thread, if any."""
    return REQUEST_ID.get()


@contextlib.contextmanager
def request_context(request_id: str | None) -> Iterator[None]:
    """Every line logged inside the block carries `request_id` (None: no request id)."""
    token = REQUEST_ID.set(request_id or None)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


def secrets_of(settings, env: Mapping[str, str] | None = None) -> list[str]:
    """The secret values in `settings` that must never appear in a log line; with `env`, also the values of
    SECRET_VARIABLES there (the doctor's environment may hold others than the settings it checks)."""
    values = [settings.basic_auth_pass, settings.label_studio_api_key]
    for url in (settings.redis_url, settings.store_url):
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:
                continue
            if password:
                values += [password, unquote(password)]  # as written in the URL, and decoded
    if env is not None:
        values += [env.get(name) for name in SECRET_VARIABLES]
    return [v for v in values if v]


class Redactor:
    """`redactor(text)`: `text` with every value of `secrets` at least `min_length` long, and the password part of
    any URL, replaced by ***."""

    def __init__(self, secrets: Iterable[str] = (), min_length: int = MIN_SECRET_LENGTH):
        # longest first: a secret containing another one is masked whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= min_length}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _URL_PASSWORD.sub(r"\g<head>***@", text)


class _Redacting(logging.Formatter):
    def __init__(self, fmt: str | None = None, secrets: Iterable[str] = ()):
        super().__init__(fmt)
        self.redact = Redactor(secrets)

    @staticmethod
    def request_id(record: logging.LogRecord) -> str | None:
        return getattr(record, "request_id", None) or REQUEST_ID.get()


class TextFormatter(_Redacting):
    """`time LEVEL logger [request id]: message`, the traceback on the lines below."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__(TEXT_FORMAT, secrets)

    def format(self, record: logging.LogRecord) -> str:
        rid = self.request_id(record)
        record.request_id_tag = f" [{rid}]" if rid else ""
        return self.redact(super().format(record))


class JsonFormatter(_Redacting):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id and exc_info when known."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        rid = self.request_id(record)
        if rid:
            entry["request_id"] = str(rid)
        if record.exc_info:
            entry["exc_info"] = self.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc_info"] = self.redact(record.exc_text)
        if record.stack_info:
            entry["stack_info"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str)  # ASCII-only: any message, even one with lone surrogates, is writable


def make_formatter(settings) -> logging.Formatter:
    """The formatter LOG_FORMAT names, masking the secrets of `settings`."""
    kind = (settings.log_format or "text").lower()
    if kind not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT={settings.log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    secrets = secrets_of(settings)
    return JsonFormatter(secrets=secrets) if kind == "json" else TextFormatter(secrets=secrets)


def configure_logging(settings, stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records to `stream` (default: stderr) in LOG_FORMAT at LOG_LEVEL, Python warnings
    included (logger py.warnings). Calling it again replaces the handler it added before (and leaves any other
    handler alone). Returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(settings))
    handler._regionscribe = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_regionscribe", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(str(settings.log_level).upper())
    logging.captureWarnings(False)  # hook again, even if showwarning was replaced since an earlier call hooked it
    logging.captureWarnings(True)
    return handler


# ------------------------------------------------------------------------------ what the process itself writes

_STREAM_LEVELS = {1: ("stdout", logging.INFO), 2: ("stderr", logging.WARNING)}
_CAPTURE: "_OutputCapture | None" = None


def _is_log_line(line: str) -> bool:
    """Whether `line` is already one JSON log object (a child process's or gunicorn's line, formatted by us)."""
    if not (line.startswith("{") and line.endswith("}")):
        return False
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and {"time", "level", "logger", "message"} <= entry.keys()


class _OutputCapture:
    """fd 1 and fd 2 replaced by pipes; one thread a pipe turns their lines into records of `handler`, which writes to
    a duplicate of the original stderr."""

    def __init__(self, handler: logging.StreamHandler):
        self.pid = os.getpid()
        self.handler = handler
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self.saved = {fd: os.dup(fd) for fd in _STREAM_LEVELS}
        self.output = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
        handler.setStream(self.output)
        self.threads = []
        for fd, (name, level) in _STREAM_LEVELS.items():
            read, write = os.pipe()
            os.dup2(write, fd)
            os.close(write)
            thread = threading.Thread(target=self._pump, args=(read, name, level), name=f"log-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        for stream in (sys.stdout, sys.stderr):  # a print reaches the log when it is made, not when a buffer fills
            with contextlib.suppress(Exception):
                stream.reconfigure(line_buffering=True)

    def _pump(self, fd: int, name: str, level: int) -> None:
        pending = b""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")  # a progress bar's \r ends a line
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._emit(line, name, level)
        if pending:
            self._emit(pending, name, level)

    def _emit(self, raw: bytes, name: str, level: int) -> None:
        line = raw.decode("utf-8", errors="backslashreplace").rstrip()
        if not line.strip():
            return
        handler = self.handler
        with handler.lock:  # the handler's own lock: one line at a time on the output, from a pipe or a record
            try:
                if _is_log_line(line):
                    self.output.write(line + "\n")
                else:
                    record = logging.LogRecord(name, level, "(output)", 0, line, None, None)
                    self.output.write(handler.format(record) + "\n")
                self.output.flush()
            except Exception:  # noqa: BLE001 - nowhere left to report it; never take the process down
                pass

    def close(self) -> None:
        """Put fd 1 and 2 back and write out what is still in the pipes (at exit)."""
        if os.getpid() != self.pid:  # a forked child: its parent owns the pipes
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)  # the pipes' last write ends in this process close: the pumps read to the end
            os.close(saved)
        for thread in self.threads:
            thread.join(timeout=2.0)
        self.handler.setStream(sys.stderr)
        with contextlib.suppress(Exception):
            self.output.close()


def capture_process_output(settings, handler: logging.StreamHandler) -> bool:
    """With LOG_FORMAT=json, make every line written to this process's stdout or stderr a JSON log line (see the
    module's docstring); `handler` is the one configure_logging returned. Once a process; only for the main function
    of a long-running process, never inside a test runner. Returns whether output is now captured."""
    global _CAPTURE
    if (settings.log_format or "text").lower() != "json":
        return False
    if _CAPTURE is None:
        _CAPTURE = _OutputCapture(handler)
        atexit.register(_CAPTURE.close)
    else:
        _CAPTURE.handler = handler
        handler.setStream(_CAPTURE.output)
    return True
