"""What a doctor check reports: a `Check` (name, status, what it saw, what to do), the four statuses, and the one-line
form of an exception the checks quote."""
from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    seconds: float = 0.0


def short_error(exc: BaseException) -> str:
    """`Type: first line of the message`."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
