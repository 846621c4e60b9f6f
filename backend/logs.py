"""Logging for the web server, the workers and the runner: one format for all of them (LOG_FORMAT), the request id on
every line written while a request or the job it queued is handled, and no secret in any line.

    LOG_FORMAT=text   2024-05-01 12:00:00,123 INFO backend.app [3f2a9c1b0d4e]: message
    LOG_FORMAT=json   {"time": "2024-05-01T12:00:00.123Z", "level": "INFO", "logger": "backend.app",
                       "message": "message", "request_id": "3f2a9c1b0d4e", "exc_info": "Traceback (most recent..."}

One JSON object per line; `request_id` and `exc_info` only when there is one. The request id lives in a context
variable: the web app sets it around each request (the X-Request-Id header, else a fresh id), a worker around each job
(the id the request that queued the job put in `job.meta["request_id"]`). `request_context(request_id)` sets it
anywhere else; a record with its own `request_id` attribute (`extra={"request_id": ...}`) keeps that one.

Secrets never reach a line: BASIC_AUTH_PASS, LABEL_STUDIO_API_KEY and the passwords in REDIS_URL and STORE_URL are
replaced by *** wherever they appear in a message or traceback (values shorter than 4 characters are not looked for),
and so is the password part of any URL (scheme://user:password@host).
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Iterable, Iterator, TextIO
from urllib.parse import unquote, urlsplit

from .settings import LOG_FORMATS

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_id_tag)s: %(message)s"
MIN_SECRET_LENGTH = 4  # shorter values would mask fragments of ordinary words

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


def secrets_of(settings) -> list[str]:
    """The secret values in `settings` that must never appear in a log line."""
    values = [settings.basic_auth_pass, settings.label_studio_api_key]
    for url in (settings.redis_url, settings.store_url):
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:
                continue
            if password:
                values += [password, unquote(password)]  # as written in the URL, and decoded
    return [v for v in values if v]


class _Redacting(logging.Formatter):
    def __init__(self, fmt: str | None = None, secrets: Iterable[str] = ()):
        super().__init__(fmt)
        # longest first: a secret containing another one is masked whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _URL_PASSWORD.sub(r"\g<head>***@", text)

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
