"""Redis connections: the ordinary client every process uses, and the fast one for the paths Label Studio waits on."""
from __future__ import annotations

import os
import threading

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def redis_connection(url: str, **kwargs) -> redis.Redis:
    """A client with the defaults of jobs and workers (2 s to connect, 10 s per command); `kwargs` override them."""
    options = {"socket_connect_timeout": 2, "socket_timeout": 10, "health_check_interval": 30}
    options.update(kwargs)
    return redis.Redis.from_url(url, **options)


_FAST: dict[tuple[int, str], redis.Redis] = {}
_FAST_LOCK = threading.Lock()


def fast_redis(url: str | None) -> redis.Redis | None:
    """A Redis client for the paths Label Studio waits on (/webhook 1 s, /setup 3 s, /health 1 s): short timeouts and
    one immediate retry, so a Redis that is down or slow costs a fraction of a second, never Label Studio's whole
    budget. One client per process and URL."""
    if not url:
        return None
    key = (os.getpid(), url)
    with _FAST_LOCK:
        client = _FAST.get(key)
        if client is None:
            # one immediate retry: a connection Redis closed (restart) is replaced; a refused one fails in ms
            client = redis_connection(url, socket_connect_timeout=0.2, socket_timeout=0.25,
                                      retry=Retry(NoBackoff(), 1), health_check_interval=0)
            _FAST[key] = client
        return client
