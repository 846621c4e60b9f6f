"""The doctor's checks of the way to Label Studio and back: its API and the key, each connected project's webhook
(present, authenticated, not duplicated, active) with the 401s on /webhook, and the periodic sync."""
from __future__ import annotations

import json
import time
from pathlib import Path

from regionscribe.backend.core.keys import SYNC_LAST_KEY
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.ops.doctor.checks import FAIL, OK, SKIP, WARN, Check, short_error


def check_label_studio(settings: Settings, timeout: float) -> list[Check]:
    import requests

    from regionscribe.backend.labelstudio.fetcher import FetchError, LabelStudioAuth, _jwt_claims

    url = settings.label_studio_url
    if not url:
        return [Check("label_studio", WARN, "not configured: LABEL_STUDIO_URL is unset",
                      "set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) so that workers can fetch images uploaded to "
                      "Label Studio (/data/upload/...); images from other sources do not need it")]
    session = requests.Session()
    session.headers["User-Agent"] = "regionscribe-doctor"
    try:
        response = session.get(f"{url}/health", timeout=timeout)
    except requests.RequestException as exc:
        return [Check("label_studio", FAIL, f"cannot reach Label Studio at {url}: {type(exc).__name__}",
                      "is Label Studio running, and is LABEL_STUDIO_URL right as seen from this machine? (in "
                      "docker-compose.yml it is http://labelstudio:8080)")]
    if response.status_code != 200:
        return [Check("label_studio", FAIL, f"{url}/health answered HTTP {response.status_code}",
                      "LABEL_STUDIO_URL must be Label Studio's base URL (scheme, host, port, no path)")]
    checks = [Check("label_studio", OK, f"{url} is up")]
    key = settings.label_studio_api_key
    if not key:
        checks.append(Check("label_studio.auth", WARN, "LABEL_STUDIO_API_KEY is unset",
                            "set it to a personal access token (Label Studio: Account & Settings → Personal Access "
                            "Token) so that workers can download uploaded images"))
        return checks
    claims = _jwt_claims(key)
    kind = "legacy token" if claims is None else (
        "personal access token" if claims.get("token_type") == "refresh" else "access token")
    auth = LabelStudioAuth(url, key, session, timeout)
    try:
        header = auth.header()
    except FetchError as exc:
        checks.append(Check("label_studio.auth", FAIL, str(exc),
                            "create a new personal access token in Label Studio (Account & Settings) and put it in "
                            "LABEL_STUDIO_API_KEY; an expired or revoked one cannot be exchanged"))
        return checks
    try:
        response = session.get(f"{url}/api/current-user/whoami", headers=header, timeout=timeout,
                               allow_redirects=False)
    except requests.RequestException as exc:
        checks.append(Check("label_studio.auth", FAIL, f"cannot ask {url} who the key belongs to: "
                            f"{type(exc).__name__}", "retry; if it persists, check Label Studio's logs"))
        return checks
    if response.status_code == 200:
        try:
            who = response.json()
            user = who.get("email") or who.get("username") or f"user {who.get('id')}"
        except ValueError:
            user = "a user"
        checks.append(Check("label_studio.auth", OK, f"the {kind} is accepted (as {user})"))
    elif response.status_code in (301, 302, 401, 403):
        fix = ("copy a personal access token from Label Studio (Account & Settings → Personal Access Token) into "
               "LABEL_STUDIO_API_KEY")
        if kind == "legacy token":
            fix = ("check the token (Account & Settings → Legacy Token). Label Studio 1.23 refuses legacy tokens "
                   "unless the organisation allows them (its access-token settings; an organisation created while "
                   "Label Studio ran with --enable-legacy-api-token or LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true "
                   "allows them); a personal access token works either way")
        checks.append(Check("label_studio.auth", FAIL,
                            f"Label Studio refused the {kind} in LABEL_STUDIO_API_KEY (HTTP {response.status_code})",
                            fix))
    else:
        checks.append(Check("label_studio.auth", FAIL, f"/api/current-user/whoami answered HTTP "
                            f"{response.status_code}", "check Label Studio's logs"))
    return checks


def check_webhooks(settings: Settings, connection, timeout: float) -> list[Check]:
    from regionscribe.backend.labelstudio.webhooks import basic_auth_header, connected_projects, refusals

    checks = []
    if connection is None:
        return [Check("webhooks", SKIP, "needs Redis (the connected projects and the refusals are kept there)")]
    try:
        refused = refusals(connection)
        projects = connected_projects(connection)
    except Exception as exc:
        return [Check("webhooks", FAIL, f"cannot read Redis: {short_error(exc)}", "check Redis (see the redis check)")]
    recover = ("the events refused so far are recovered by the sync (`regionscribe sync`, or the ingest worker every "
               "SYNC_INTERVAL seconds)")
    if refused["last_day"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(refused["last_at"])) if refused["last_at"] else "?"
        detail = (f"{refused['last_hour']} request(s) to /webhook refused with 401 in the last hour, "
                  f"{refused['last_day']} in the last 24 h (last at {when})")
        fix = ("Label Studio's webhook carries no or wrong Basic auth credentials (see the webhooks.project-N checks); "
               + recover)
        checks.append(Check("webhooks.401", FAIL if refused["last_hour"] else WARN, detail, fix))
    else:
        checks.append(Check("webhooks.401", OK, "no request to /webhook refused with 401 in the last 24 h"))
    if not projects:
        checks.append(Check("webhooks", SKIP, "no connected project yet (Label Studio calls /setup when a project "
                                              "connects the model)"))
        return checks
    if not settings.label_studio_api_enabled:
        status = FAIL if settings.basic_auth_enabled else WARN
        checks.append(Check("webhooks", status, f"{len(projects)} connected project(s), but LABEL_STUDIO_URL and "
                            "LABEL_STUDIO_API_KEY are not both set: their webhooks cannot be checked"
                            + (" or given the Basic auth header, so Label Studio's events get 401" if
                               settings.basic_auth_enabled else ""),
                            "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (a personal access token) for the web "
                            "server and the workers"))
        return checks
    from regionscribe.backend.labelstudio.api import LabelStudioError, client
    from regionscribe.backend.labelstudio.webhooks import inspect

    c = client(settings, timeout=timeout)
    header = basic_auth_header(settings)
    for pid, info in sorted(projects.items()):
        name = f"webhooks.project-{pid}"
        try:
            state = inspect(settings, c, pid, info.get("url") or "")
        except LabelStudioError as exc:
            gone = exc.status == 404
            checks.append(Check(name, WARN if gone else FAIL, str(exc),
                                "the project is gone from Label Studio; nothing to do" if gone else
                                "see the label_studio checks"))
            continue
        if "missing" in state.problems:
            checks.append(Check(name, WARN if settings.sync_interval > 0 else FAIL,
                                f"no webhook to {state.url}: annotations reach the store only through the sync"
                                + (f" (every {settings.sync_interval} s)" if settings.sync_interval > 0 else
                                   ", and SYNC_INTERVAL=0 turns that off: they do not reach it at all"),
                                f"in Label Studio, remove the model from project {pid}'s settings and connect it again "
                                f"(Label Studio then creates the webhook), or POST /api/webhooks with "
                                f"{{\"project\": {pid}, \"url\": \"{state.url}\", \"send_payload\": true, "
                                "\"send_for_all_actions\": true}"))
            continue
        hook = state.keep
        parts = [f"webhook {hook.get('id')} to {state.url}"]
        if header is not None:
            parts.append("carries the Basic auth header" if state.authenticated else
                         "carries " + ("other credentials" if "wrong credentials" in state.problems else
                                       "no credentials") + ": every event gets 401")
        if state.duplicates:
            ids = ", ".join(str(h.get("id")) for h in state.duplicates)
            parts.append(f"{len(state.duplicates)} more to the same URL ({ids}): each event arrives more than once")
        if "inactive" in state.problems:
            parts.append("inactive: Label Studio sends nothing through it")
        fix = ""
        if state.authenticated is False or state.duplicates:
            fix = (f"open project {pid}'s model settings in Label Studio (it calls /setup, and the ingest worker then "
                   "sets the header and removes duplicates), or PATCH /api/webhooks/<id> with {\"headers\": "
                   "{\"Authorization\": \"Basic <base64 of BASIC_AUTH_USER:BASIC_AUTH_PASS>\"}} and DELETE the "
                   "duplicates; " + recover)
        elif "inactive" in state.problems:
            fix = f"activate webhook {hook.get('id')} in project {pid}'s settings (Webhooks); " + recover
        status = FAIL if state.authenticated is False else WARN if state.problems else OK
        checks.append(Check(name, status, "; ".join(parts), fix))
    return checks


def check_sync(settings: Settings, connection) -> Check:
    if settings.sync_interval <= 0:
        return Check("sync", WARN, "SYNC_INTERVAL=0: no periodic sync with Label Studio",
                     "set SYNC_INTERVAL (seconds, default 300) so that events the webhook loses (backend down, 401, "
                     "timeout) still reach the store; `regionscribe sync` does it by hand")
    if not settings.label_studio_api_enabled:
        return Check("sync", WARN, "the periodic sync is off: LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not both "
                                   "set", "set both for the ingest worker (a personal access token)")
    notes = []
    try:
        from regionscribe.backend.store import Store, default_url

        store = Store.open(default_url(settings), Path(settings.data_dir) / "images")
        try:
            by_source = store.regions_by_source()
        finally:
            store.close()
        only = sum(c["sync"] for c in by_source.values())
        total = sum(c["regions"] for c in by_source.values())
        notes.append(f"{only} of {total} live regions arrived only through the sync")
    except Exception as exc:
        notes.append(f"store not read ({short_error(exc)})")
    last = None
    if connection is not None:
        try:

            raw = connection.get(SYNC_LAST_KEY)
            last = json.loads(raw) if raw else None
        except Exception:
            last = None
    if last is None:
        return Check("sync", WARN, "; ".join(["no periodic sync has run yet", *notes]),
                     "the ingest worker (`regionscribe worker --queue ingest`) runs it every SYNC_INTERVAL seconds; "
                     "is one running with LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY set?")
    age = time.time() - float(last.get("at", 0))
    errors = {p: r["error"] for p, r in (last.get("projects") or {}).items() if isinstance(r, dict) and "error" in r}
    detail = "; ".join([f"last sync {age:.0f} s ago over {len(last.get('projects') or {})} project(s)", *notes])
    if errors:
        return Check("sync", WARN, detail + f"; failed for {', '.join(sorted(errors))}: "
                     + "; ".join(sorted(errors.values()))[:300], "see the ingest worker's log")
    if age > 3 * settings.sync_interval + 60:
        return Check("sync", WARN, detail + f" (SYNC_INTERVAL is {settings.sync_interval} s)",
                     "is the ingest worker running? (`regionscribe worker --queue ingest`)")
    return Check("sync", OK, detail)
