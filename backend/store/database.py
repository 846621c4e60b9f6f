"""The database adapter under the store: the store URL (SQLite or PostgreSQL), a small pool of connections per
process (fork-aware), the cursor shim that lets one `?`-placeholder SQL text run on both, and `_run`, which runs a
function in one transaction and retries transient conflicts.

Backends. SQLite by default (`STORE_URL`, default `sqlite:///<DATA_DIR>/store.sqlite3`; `sqlite:///rel/path` or
`sqlite:////abs/path`), PostgreSQL when the URL is `postgresql://...` (`STORE_URL`, else `DATABASE_URL`), through
psycopg 3.

Durability. SQLite runs in WAL mode with `synchronous=FULL`: every commit fsyncs the WAL, so a record the webhook
acknowledged survives a power loss, not only a process crash (NORMAL would only lose the last commits on power loss,
but the webhook promises "durable before the 2xx", and a commit costs about a millisecond more). Writers take the
write lock at BEGIN (`BEGIN IMMEDIATE`) and wait up to 30 s for it (busy_timeout); readers never block writers.
PostgreSQL commits are durable by its own settings. Transient conflicts (SQLite busy, PostgreSQL deadlock or
serialization failure, a dropped connection) are retried.
"""
from __future__ import annotations

import logging
import os
import queue
import random
import sqlite3
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from regionscribe.backend.core.settings import redacted_url
from regionscribe.backend.store.records import StoreError

log = logging.getLogger(__name__)

_NO_LOCK = nullcontext()


def default_url(settings) -> str:
    """The store URL the settings name: STORE_URL, else DATABASE_URL, else SQLite under DATA_DIR."""
    if getattr(settings, "store_url", None):
        return settings.store_url
    return f"sqlite:///{Path(settings.data_dir) / 'store.sqlite3'}"


class _Cursorish:
    """The few things the store needs from a connection inside one transaction, for both databases."""

    def __init__(self, conn, dialect: str):
        self.conn = conn
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def execute(self, sql: str, params: Iterable = ()) -> Any:
        return self.conn.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        if not rows:
            return
        if self.dialect == "postgresql":
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(sql), rows)
        else:
            self.conn.executemany(sql, rows)

    def all(self, sql: str, params: Iterable = ()) -> list[dict]:
        cur = self.execute(sql, params)
        if cur.description is None:
            return []
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def one(self, sql: str, params: Iterable = ()) -> dict | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: Iterable = ()):
        cur = self.execute(sql, params)
        row = cur.fetchone()
        return row[0] if row else None

    @property
    def for_update(self) -> str:
        return " FOR UPDATE" if self.dialect == "postgresql" else ""


class Database:
    """The connection side of a Store: its URL and dialect, the connection pool, transactions with retry."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            path = url[len("sqlite:///"):].split("?", 1)[0]
            if not path:
                raise StoreError(f"no file in the SQLite URL {url!r} (sqlite:///relative or sqlite:////absolute)")
            self.path: Path | None = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            self.dialect = "postgresql"
            self.path = None
            self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        else:
            raise StoreError(f"unsupported store URL {redacted_url(url)!r}: use sqlite:///path or postgresql://...")
        self._pool: queue.LifoQueue = queue.LifoQueue()
        self._pid = os.getpid()
        self._closed = False
        # SQLite has one writer at a time; threads of one process queue on this lock instead of polling the file
        # lock (SQLite's busy handler sleeps in growing steps, which starves some waiters for seconds under load)
        self._write_lock = threading.Lock()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                break
            try:
                conn.close()
            except Exception:
                pass

    # ---------------------------------------------------------------------------------------- connections

    def _connect(self):
        if self.dialect == "sqlite":
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            return conn
        try:
            import psycopg
        except ImportError:  # pragma: no cover - depends on the install
            raise StoreError("a postgresql:// store needs psycopg 3: pip install 'psycopg[binary]'") from None
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to {redacted_url(self.url)}: {str(exc).strip().splitlines()[0]}") from None

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        if self._closed:
            raise StoreError("the store is closed")
        if os.getpid() != self._pid:  # forked: never use the parent's connections
            self._pool = queue.LifoQueue()
            self._pid = os.getpid()
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            conn = self._connect()
        ok = False
        try:
            yield conn
            ok = True
        finally:
            if ok and not self._closed and self._pool.qsize() < 16:
                self._pool.put(conn)
            else:
                try:
                    conn.close()
                except Exception:
                    pass

    def _transient(self, exc: Exception) -> bool:
        if isinstance(exc, sqlite3.OperationalError):
            text = str(exc).lower()
            return "locked" in text or "busy" in text
        if self.dialect == "postgresql":
            import psycopg

            if isinstance(exc, (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
                                psycopg.errors.LockNotAvailable)):
                return True
            return isinstance(exc, psycopg.OperationalError)
        return False

    def _run(self, fn: Callable[[_Cursorish], Any], write: bool = True, attempts: int = 8) -> Any:
        """Run `fn` in one transaction (write: the SQLite write lock is taken at BEGIN), retrying transient
        conflicts with a short jittered back-off."""
        for attempt in range(attempts):
            try:
                with self._connection() as conn:
                    tx = _Cursorish(conn, self.dialect)
                    if self.dialect == "sqlite":
                        with self._write_lock if write else _NO_LOCK:
                            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                            try:
                                result = fn(tx)
                                conn.execute("COMMIT")
                            except BaseException:
                                if conn.in_transaction:
                                    conn.execute("ROLLBACK")
                                raise
                        return result
                    with conn.transaction():
                        return fn(tx)
            except Exception as exc:
                if attempt + 1 < attempts and self._transient(exc):
                    log.info("store: transient %s, retrying (%d)", type(exc).__name__, attempt + 1)
                    time.sleep(min(0.5, 0.01 * (2 ** attempt)) * (0.5 + random.random()))
                    continue
                raise
