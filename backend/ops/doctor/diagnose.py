"""The doctor's run: every check in order with the settings of this process's environment, the secrets scrubbed from
every line (regionscribe.backend.core.logs), and the result as text or JSON."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict

from regionscribe.backend.core.logs import Redactor, secrets_of
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.ops.doctor.checks import FAIL, OK, WARN, Check, short_error
from regionscribe.backend.ops.doctor.infrastructure import check_redis, check_registry, check_store
from regionscribe.backend.ops.doctor.label_studio import check_label_studio, check_sync, check_webhooks
from regionscribe.backend.ops.doctor.processes import check_backend, check_model, check_workers


def run_checks(settings: Settings | None = None, load: bool = False, timeout: float = 5.0,
               backend_url: str | None = None, env=None) -> list[Check]:
    """Every check, in order. Settings default to the environment's (a parse error is itself a FAIL)."""
    env = os.environ if env is None else env
    checks: list[Check] = []

    def timed(fn, *args):
        started = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as exc:  # a check must never crash the doctor
            result = Check(getattr(fn, "__name__", "check").removeprefix("check_"), FAIL,
                           f"the check itself failed: {short_error(exc)}", "please report this")
        items = result if isinstance(result, list) else [result]
        for c in items:
            c.seconds = round(time.perf_counter() - started, 3)
        checks.extend(items)
        return result

    if settings is None:
        try:
            settings = Settings.from_env(env)
        except ValueError as exc:
            return [Check("settings", FAIL, str(exc), "fix that environment variable (README, Settings)")]
    checks.append(Check("settings", OK, "every variable parses"))
    started = time.perf_counter()
    redis_check, connection = check_redis(settings, timeout)
    redis_check.seconds = round(time.perf_counter() - started, 3)
    checks.append(redis_check)
    timed(check_store, settings)
    timed(check_registry, settings)
    timed(check_model, settings, connection, load)
    timed(check_workers, settings, connection)
    timed(check_label_studio, settings, timeout)
    timed(check_webhooks, settings, connection, timeout)
    timed(check_sync, settings, connection)
    if backend_url:
        timed(check_backend, backend_url, timeout)
    redact = Redactor(secrets_of(settings, env), min_length=3)  # values of 3 characters too: few lines, all read
    for c in checks:
        c.detail, c.fix = redact(c.detail), redact(c.fix)
    return checks


def render(checks: list[Check]) -> str:
    lines = ["regionscribe doctor"]
    width = max(len(c.name) for c in checks)
    for c in checks:
        lines.append(f"  {c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in (FAIL, WARN):
            lines.append(f"  {'':<4}  {'':<{width}}  fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    lines.append(f"{failed} problem(s), {warned} warning(s)" if failed or warned else "all checks passed")
    return "\n".join(lines)


def main(json_output: bool = False, load: bool = False, timeout: float = 5.0, backend_url: str | None = None,
         settings: Settings | None = None, out=None) -> int:
    """Run the checks, print them (text or JSON), return the exit status: 1 when any check failed."""
    out = out or sys.stdout
    checks = run_checks(settings, load=load, timeout=timeout, backend_url=backend_url)
    ok = not any(c.status == FAIL for c in checks)
    if json_output:
        print(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}, indent=2), file=out)
    else:
        print(render(checks), file=out)
    return 0 if ok else 1
