"""The image fetcher: a task's image reference → the image's bytes, under the deployment's safety rules.

Where an image may come from:
- Label Studio URLs (`/data/upload/...`, `/data/local-files/?d=...`, `/storage-data/...`, or absolute URLs on
  LABEL_STUDIO_URL's host): fetched from LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY. A legacy token is sent as
  `Token <key>`; a personal access token (a JWT refresh token) is first exchanged at `/api/token/refresh/` and the
  short-lived access token is sent as `Bearer <access>`. The key is only ever sent to LABEL_STUDIO_URL's host.
  `/data/local-files/?d=<path>` is read straight from IMAGE_ROOT when the file is there.
- Cloud URIs (`s3://`, `gs://`, `azure-blob://`): resolved through Label Studio's presign endpoint for the task.
- Local paths (absolute, relative or `file://`): only under IMAGE_ROOT, after resolving symlinks; `..` is refused.
- Other http(s) URLs: only when the host is in ALLOWED_HOSTS. Hosts named exactly there (and Label Studio's host)
  are trusted wherever they live. Hosts admitted by a wildcard (`*`, or `*.example.com`) must resolve only to public
  addresses: loopback, private, link-local, CGNAT, multicast, reserved, IPv6 unique-local/site-local and
  IPv4-mapped forms of those are refused, for every resolved address and again for the address actually connected
  to (a DNS answer that changes between the check and the connection is caught).
- Redirects are followed by hand (at most MAX_REDIRECTS) and every hop goes through the same rules.
- Downloads stop at MAX_IMAGE_BYTES while streaming. Decoding (non-images, decompression bombs, EXIF rotation) is
  regionscribe.model.images.load_image's job; `fetch_image` does both.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from regionscribe.backend.core.settings import Settings

log = logging.getLogger(__name__)

LS_PATH_PREFIXES = ("/data/upload/", "/data/local-files", "/storage-data/", "/tasks/")
CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://")
USER_AGENT = "regionscribe-image-fetcher/0.1"


class FetchError(ValueError):
    """The image reference cannot be fetched under the configured rules (message says why, without secrets)."""


class ForbiddenSource(FetchError):
    """The reference points somewhere the rules do not allow (host, address, path)."""


# --------------------------------------------------------------------------------------------- address checks


def is_public_address(address: str) -> bool:
    """True when `address` (an IPv4/IPv6 literal) is a globally routable unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return is_public_address(str(mapped))
        if ip.teredo:
            return False
    return bool(ip.is_global) and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback
                                       or ip.is_link_local or ip.is_private)


def resolve_addresses(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve image host {host!r}: {exc.strerror or exc}") from None
    return sorted({info[4][0] for info in infos})


def check_public_host(host: str, port: int) -> None:
    """Refuse a host when any address it resolves to is not public."""
    for address in resolve_addresses(host, port):
        if not is_public_address(address):
            raise ForbiddenSource(
                f"image host {host!r} resolves to the non-public address {address}; add the host to ALLOWED_HOSTS "
                "by its exact name if it is meant to be reachable")


# A connection that re-checks the address it actually connected to: catches DNS answers that change between the
# check above and the connection (rebinding).
class _PublicOnlyMixin:
    def _new_conn(self):  # type: ignore[override]
        sock = super()._new_conn()
        peer = sock.getpeername()[0]
        if not is_public_address(peer):
            sock.close()
            raise ForbiddenSource(f"image host {self.host!r} connected to the non-public address {peer}")
        return sock


class _PublicHTTPConnection(_PublicOnlyMixin, HTTPConnection):
    pass


class _PublicHTTPSConnection(_PublicOnlyMixin, HTTPSConnection):
    pass


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class _PublicOnlyAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


# ------------------------------------------------------------------------------------------------ tokens


def _jwt_claims(token: str) -> dict | None:
    """The unverified claims of a JWT, or None when `token` is not one (a legacy token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, TypeError):
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudioAuth:
    """The Authorization header for Label Studio: `Token <legacy>` or `Bearer <access>` from a personal access token."""

    def __init__(self, base_url: str, api_key: str | None, session: requests.Session, timeout: float):
        self.base_url = base_url
        self.api_key = api_key
        self.session = session
        self.timeout = timeout
        self._access: str | None = None
        self._access_expires = 0.0
        self._lock = threading.Lock()

    def header(self) -> dict[str, str]:
        if not self.api_key:
            return {}
        claims = _jwt_claims(self.api_key)
        if claims is None:
            return {"Authorization": f"Token {self.api_key}"}
        if claims.get("token_type") != "refresh":  # already an access token
            return {"Authorization": f"Bearer {self.api_key}"}
        with self._lock:
            if self._access is None or time.time() > self._access_expires - 30:
                self._refresh()
            return {"Authorization": f"Bearer {self._access}"}

    def invalidate(self) -> None:
        with self._lock:
            self._access = None

    def _refresh(self) -> None:
        url = f"{self.base_url}/api/token/refresh/"
        try:
            response = self.session.post(url, json={"refresh": self.api_key}, timeout=self.timeout,
                                         allow_redirects=False)
        except requests.RequestException as exc:
            raise FetchError(f"cannot reach Label Studio at {self.base_url} to exchange the personal access token: "
                             f"{type(exc).__name__}") from None
        if response.status_code != 200:
            raise FetchError(f"Label Studio refused the personal access token in LABEL_STUDIO_API_KEY "
                             f"(POST /api/token/refresh/ → HTTP {response.status_code})")
        access = response.json().get("access") if response.headers.get("content-type", "").startswith(
            "application/json") else None
        if not isinstance(access, str) or not access:
            raise FetchError("Label Studio's /api/token/refresh/ answered without an access token")
        claims = _jwt_claims(access) or {}
        self._access = access
        self._access_expires = float(claims.get("exp", time.time() + 240))


# ----------------------------------------------------------------------------------------------- the fetcher


@dataclass(frozen=True)
class _Target:
    url: str
    trusted: bool  # Label Studio's host or a host named exactly in ALLOWED_HOSTS: no address check
    send_token: bool


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return host, port


class ImageFetcher:
    """Turns the image references found in task data into bytes; one per process, thread-safe."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.max_bytes = settings.max_image_bytes
        self.timeout = settings.fetch_timeout
        self.root = Path(settings.image_root).resolve() if settings.image_root else None
        self.ls_url = settings.label_studio_url.rstrip("/") if settings.label_studio_url else None
        self._trusted = requests.Session()
        self._trusted.trust_env = False  # no proxies or .netrc from the environment
        self._public = requests.Session()
        self._public.trust_env = False
        adapter = _PublicOnlyAdapter()
        self._public.mount("http://", adapter)
        self._public.mount("https://", adapter)
        self.auth = (LabelStudioAuth(self.ls_url, settings.label_studio_api_key, self._trusted, self.timeout)
                     if self.ls_url else None)
        exact, suffixes, anything = set(), [], False
        for entry in settings.allowed_hosts:
            entry = entry.strip().lower()
            if entry == "*":
                anything = True
            elif entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                exact.add(entry)
        self._exact_hosts, self._host_suffixes, self._any_host = exact, tuple(suffixes), anything

    # -- public API

    def fetch(self, ref: str, task_id: int | str | None = None) -> bytes:
        """The bytes behind an image reference from task data. Raises FetchError with a clear message."""
        if not isinstance(ref, str) or not ref.strip():
            raise FetchError("the task has no image reference")
        ref = ref.strip()
        if ref.startswith("data:"):
            return self._data_uri(ref)
        if ref.startswith(CLOUD_SCHEMES):
            return self._cloud(ref, task_id)
        if ref.startswith(LS_PATH_PREFIXES):
            return self._label_studio_path(ref)
        parts = urlsplit(ref)
        if parts.scheme in ("http", "https"):
            return self._download(ref)
        if parts.scheme == "file":
            return self._local(unquote(parts.path))
        if parts.scheme and len(parts.scheme) > 1:  # not a Windows drive letter
            raise ForbiddenSource(f"unsupported image URL scheme {parts.scheme!r}")
        return self._local(ref)

    # -- sources

    def _data_uri(self, ref: str) -> bytes:
        header, _, payload = ref.partition(",")
        if ";base64" not in header:
            raise FetchError("only base64 data: URIs are supported for images")
        if len(payload) * 3 // 4 > self.max_bytes:
            raise FetchError(f"image is larger than MAX_IMAGE_BYTES ({self.max_bytes} bytes)")
        try:
            return base64.b64decode(payload, validate=False)
        except ValueError:
            raise FetchError("the data: URI is not valid base64") from None

    def _cloud(self, ref: str, task_id) -> bytes:
        if not self.ls_url:
            raise FetchError(f"cloud image {ref.split('?')[0]!r} needs LABEL_STUDIO_URL to presign it")
        if task_id is None:
            raise FetchError("cloud image URIs need the task id to be presigned by Label Studio")
        fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
        return self._download(f"{self.ls_url}/tasks/{int(task_id)}/presign/?fileuri={fileuri}")

    def _label_studio_path(self, ref: str) -> bytes:
        if ref.startswith("/data/local-files") and self.root is not None:
            d = parse_qs(urlsplit(ref).query).get("d", [None])[0]
            if d:
                try:
                    return self._local(d)
                except FileNotFoundError:
                    pass  # not under our IMAGE_ROOT: ask Label Studio
        if not self.ls_url:
            raise FetchError(f"image {ref.split('?')[0]!r} lives in Label Studio: set LABEL_STUDIO_URL (and "
                             "LABEL_STUDIO_API_KEY) so the backend can download it")
        return self._download(self.ls_url + ref)

    def _local(self, path: str) -> bytes:
        if self.root is None:
            raise ForbiddenSource("local image paths are refused: set IMAGE_ROOT to the folder they live under")
        if ".." in Path(path).parts:
            raise ForbiddenSource(f"image path {path!r} contains '..'")
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = self.root / candidate
        try:
            resolved = candidate.resolve(strict=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"image file {path!r} does not exist under IMAGE_ROOT") from None
        except (OSError, RuntimeError) as exc:
            raise FetchError(f"cannot resolve image path {path!r}: {exc}") from None
        if not resolved.is_relative_to(self.root):
            raise ForbiddenSource(f"image path {path!r} is outside IMAGE_ROOT (symlinks are followed before checking)")
        if not resolved.is_file():
            raise FetchError(f"image path {path!r} is not a regular file")
        size = resolved.stat().st_size
        if size > self.max_bytes:
            raise FetchError(f"image file is {size} bytes, more than MAX_IMAGE_BYTES ({self.max_bytes})")
        with open(resolved, "rb") as handle:
            data = handle.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise FetchError(f"image file is larger than MAX_IMAGE_BYTES ({self.max_bytes})")
        return data

    # -- http(s)

    def _classify(self, url: str) -> _Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ForbiddenSource(f"refusing image URL scheme {parts.scheme!r}")
        if parts.username or parts.password:
            raise ForbiddenSource("refusing image URLs with credentials in them")
        host, port = _host_port(url)
        if not host:
            raise ForbiddenSource("image URL has no host")
        if self.ls_url:
            ls = urlsplit(self.ls_url)
            if (parts.scheme, host, port) == (ls.scheme, *_host_port(self.ls_url)):
                return _Target(url, trusted=True, send_token=True)
            if (host, port) == _host_port(self.ls_url):
                return _Target(url, trusted=True, send_token=False)  # same host, other scheme: no token
        if host in self._exact_hosts or f"{host}:{port}" in self._exact_hosts:
            return _Target(url, trusted=True, send_token=False)
        if self._any_host or any(host.endswith(suffix) for suffix in self._host_suffixes):
            return _Target(url, trusted=False, send_token=False)
        raise ForbiddenSource(f"image host {host!r} is not allowed: add it to ALLOWED_HOSTS (comma-separated) to "
                              "fetch images from it")

    def _download(self, url: str) -> bytes:
        for _hop in range(self.settings.max_redirects + 1):
            target = self._classify(url)
            if not target.trusted:
                check_public_host(*_host_port(url))
            response = self._get(target)
            try:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise FetchError(f"redirect without a location from {_safe(url)}")
                    url = urljoin(url, location)
                    continue
                if response.status_code in (401, 403) and target.send_token:
                    if self.auth is not None:
                        self.auth.invalidate()
                    raise FetchError(f"Label Studio refused the image download (HTTP {response.status_code}): check "
                                     "LABEL_STUDIO_API_KEY (a legacy token needs legacy tokens enabled in the "
                                     "organisation; a personal access token works by default)")
                if response.status_code != 200:
                    raise FetchError(f"image download failed: HTTP {response.status_code} from {_safe(url)}")
                return self._read_body(response, url)
            finally:
                response.close()
        raise FetchError(f"too many redirects (more than MAX_REDIRECTS={self.settings.max_redirects}) for the image")

    def _get(self, target: _Target) -> requests.Response:
        headers = {"User-Agent": USER_AGENT, "Accept": "image/*, */*;q=0.8"}  # LS answers 406 to image/* alone
        if target.send_token and self.auth is not None:
            headers.update(self.auth.header())
        session = self._trusted if target.trusted else self._public
        try:
            return session.get(target.url, headers=headers, timeout=self.timeout, stream=True, allow_redirects=False)
        except ForbiddenSource:
            raise
        except requests.RequestException as exc:
            raise FetchError(f"cannot download the image from {_safe(target.url)}: {type(exc).__name__}") from None

    def _read_body(self, response: requests.Response, url: str) -> bytes:
        length = response.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise FetchError(f"image is {length} bytes, more than MAX_IMAGE_BYTES ({self.max_bytes})")
        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype.startswith("text/") or ctype in ("application/json", "application/xhtml+xml"):
            raise FetchError(f"{_safe(url)} answered {ctype!r}, not an image")
        chunks, total = [], 0
        for chunk in response.iter_content(chunk_size=64 * 1024):
            total += len(chunk)
            if total > self.max_bytes:
                raise FetchError(f"image is larger than MAX_IMAGE_BYTES ({self.max_bytes} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)


def _safe(url: str) -> str:
    """A URL for messages: no query string (presigned URLs carry credentials there), no user info."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def fetch_image(fetcher: ImageFetcher, ref: str, task_id=None, max_pixels: int | None = None):
    """Fetch and decode: a PIL image, RGB and EXIF-transposed (regionscribe.model.images.load_image's checks apply: non-images
    and images over MAX_IMAGE_PIXELS raise regionscribe.model.errors.ImageError)."""
    from regionscribe.model.images import load_image

    return load_image(fetcher.fetch(ref, task_id), max_pixels=max_pixels or fetcher.settings.max_image_pixels)
