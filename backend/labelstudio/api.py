"""Label Studio's REST API as regionscribe uses it, through label-studio-sdk: a client made from the settings, a
project and its tasks with their annotations page by page, whether one annotation still exists, and the project's
webhooks and ML backends. Every failure comes out as `LabelStudioError`, with the HTTP status when there was one.

Only workers and the command line call Label Studio (regionscribe.backend.labelstudio.webhooks, regionscribe.backend.feedback.sync, regionscribe.backend.ops.doctor): the web process
never waits on it. A personal access token is exchanged for an access token by the SDK itself; the key is only ever
sent to LABEL_STUDIO_URL.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urlsplit, urlunsplit

from regionscribe.backend.core.settings import Settings

if TYPE_CHECKING:  # label_studio_sdk takes seconds to import: only where it is used
    from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # tasks per page when reading a project


class LabelStudioError(RuntimeError):
    """Label Studio could not be asked, or answered an error (`status`: the HTTP status, None when there was no
    answer)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def client(settings: Settings, timeout: float = 30.0) -> "LabelStudio":
    """A label-studio-sdk client for LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY (a legacy token or a personal access
    token). Raises LabelStudioError when either is unset."""
    if not settings.label_studio_api_enabled:
        raise LabelStudioError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must both be set to use Label Studio's API")
    from label_studio_sdk import LabelStudio

    with calling("Label Studio's API key"):  # an expired personal access token is refused right here
        return LabelStudio(base_url=settings.label_studio_url, api_key=settings.label_studio_api_key,
                           timeout=timeout)


@contextmanager
def calling(what: str) -> Iterator[None]:
    """Turn the SDK's errors (an HTTP error status, a connection failure, a refused token exchange) into
    LabelStudioError("<what>: ...")."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except ApiError as exc:
        detail = exc.body.get("detail") if isinstance(exc.body, dict) else exc.body
        text = str(detail or "")[:300]
        raise LabelStudioError(f"{what}: Label Studio answered HTTP {exc.status_code}" + (f" ({text})" if text else ""),
                               status=exc.status_code) from None
    except httpx.HTTPError as exc:
        raise LabelStudioError(f"{what}: Label Studio unreachable ({type(exc).__name__}: {exc})") from None


def _plain(item) -> dict:
    """A model the SDK returned, as the JSON Label Studio sent (times as ISO strings)."""
    if isinstance(item, dict):
        return item
    return item.model_dump(mode="json", exclude_unset=True)


def project(c: "LabelStudio", project_id: int) -> dict:
    """The project (id, title, label_config, created_at, ...); LabelStudioError with status 404 when it is gone."""
    with calling(f"project {project_id}"):
        return _plain(c.projects.get(id=int(project_id)))


def tasks(c: "LabelStudio", project_id: int, page_size: int | None = None, query: str | None = None
          ) -> Iterator[dict]:
    """Every task of the project with its annotations (`fields=all`), page by page, as dicts. Each annotation holds
    its full `result`: when Label Studio lists only stubs (its lazy-loading flag), the task's annotations are read
    one task at a time. `query`: a Data Manager query (JSON text: filters, ordering)."""
    page, page_size = 1, page_size or PAGE_SIZE
    while True:
        with calling(f"tasks of project {project_id} (page {page})"):
            from label_studio_sdk.core.api_error import ApiError

            try:
                pager = c.tasks.list(project=int(project_id), fields="all", page=page, page_size=page_size,
                                     query=query)
            except ApiError as exc:
                if exc.status_code == 404 and page > 1:  # Label Studio's answer to a page past the end
                    return
                raise
        items = [_plain(t) for t in (pager.items or [])]
        for task in items:
            annotations = task.get("annotations")
            if isinstance(annotations, list) and any(isinstance(a, dict) and "result" not in a for a in annotations):
                task["annotations"] = task_annotations(c, int(task["id"]))
            yield task
        total = getattr(pager.response, "total", None)
        if not items or (isinstance(total, int) and page * page_size >= total):
            return
        page += 1


def task_annotations(c: "LabelStudio", task_id: int) -> list[dict]:
    with calling(f"annotations of task {task_id}"):
        return [_plain(a) for a in c.annotations.list(id=int(task_id))]


def annotation_exists(c: "LabelStudio", annotation_id: int) -> bool:
    """Whether Label Studio still has this annotation (404: it was deleted)."""
    from label_studio_sdk.core.api_error import ApiError

    with calling(f"annotation {annotation_id}"):
        try:
            c.annotations.get(id=int(annotation_id))
        except ApiError as exc:
            if exc.status_code == 404:
                return False
            raise
    return True


def webhooks(c: "LabelStudio", project_id: int) -> list[dict]:
    """The project's webhooks (id, url, headers, is_active, send_payload, send_for_all_actions, actions, ...)."""
    with calling(f"webhooks of project {project_id}"):
        return [_plain(w) for w in c.webhooks.list(project=str(int(project_id)))]


def ml_backends(c: "LabelStudio", project_id: int) -> list[dict]:
    """The project's ML backends. Label Studio calls each backend's /health and /setup while answering this, so it
    is slow and is only asked when the webhook cannot be found by URL."""
    with calling(f"ML backends of project {project_id}"):
        return [_plain(m) for m in c.ml.list(project=int(project_id))]


def normalized_url(url: str) -> str:
    """A URL for comparison: lower-case scheme and host, no user:password@, no default port, no trailing slash."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path.rstrip("/"), parts.query, ""))


def without_credentials(url: str) -> str:
    """The URL with any user:password@ removed (for comparing and for logs)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, parts.fragment))
