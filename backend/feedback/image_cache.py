"""The image cache: every annotated image fetched once and kept by content hash, <DATA_DIR>/images/<sha256>.<ext>,
and the records that use it filled with its sha256 and decoded size.

    web process    queue_missing_images / enqueue_image_fetch: one `fetch_image_job(image_ref, task_id)` per image
                   on INGEST_QUEUE (unique job id while it waits)
    ingest worker  (`regionscribe worker --queue ingest`, or any worker that also listens to it)
                   fetch_image_job → ImageFetcher → cache_image
    trainer        fetch_missing_images(store) sweeps what the jobs did not get (Redis was down, LS was down)
"""
from __future__ import annotations

import hashlib
import io
import logging
import os

import redis

from regionscribe.backend.core.logs import current_request_id
from regionscribe.backend.core.settings import Settings, get_settings
from regionscribe.backend.store import Store
from regionscribe.model.files import write_atomic

log = logging.getLogger(__name__)

_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif",
               "MPO": "jpg", "ICO": "ico", "PPM": "ppm"}


def enqueue_image_fetch(connection: redis.Redis, settings: Settings, image_ref: str, task_id: int) -> str | None:
    """Put `fetch_image_job(image_ref, task_id)` on INGEST_QUEUE, once per image while it waits (unique job id).
    Returns the job id, or None when it was already queued."""
    from rq import Queue
    from rq.exceptions import DuplicateJobError
    from rq.serializers import JSONSerializer

    job_id = "regionscribe-image-" + hashlib.sha256(image_ref.encode()).hexdigest()[:24]
    queue = Queue(settings.ingest_queue, connection=connection, serializer=JSONSerializer)
    try:
        queue.enqueue_call(fetch_image_job, args=(image_ref, task_id), job_id=job_id, unique=True,
                           timeout=max(60, int(settings.fetch_timeout * 6)), result_ttl=0, failure_ttl=300,
                           description=f"cache the image of task {task_id}",
                           meta={"request_id": current_request_id()})
    except DuplicateJobError:
        return None
    return job_id


def queue_missing_images(settings: Settings, connection: redis.Redis | None, missing: list
                         ) -> tuple[str | None, redis.Redis | None]:
    """Queue the ingest job of each (image_ref, task_id) a write found uncached. Returns ("queued" | "deferred" |
    None, the connection, or None once Redis failed: callers skip further Redis work)."""
    status = None
    for image_ref, task_id in missing:
        if connection is None:
            status = "deferred"
            continue
        try:
            enqueue_image_fetch(connection, settings, image_ref, task_id)
            status = "queued"
        except redis.RedisError as exc:
            log.warning("image of task %s not queued (%s); the training sweep will fetch it", task_id, exc)
            status = "deferred"
            connection = None
    return status, connection


_FETCHERS: dict[tuple[int, Settings], object] = {}


def _fetcher(settings: Settings):
    """One ImageFetcher per process and settings (it keeps HTTP sessions and Label Studio's access token)."""
    from regionscribe.backend.labelstudio.fetcher import ImageFetcher

    key = (os.getpid(), settings)
    if key not in _FETCHERS:
        _FETCHERS[key] = ImageFetcher(settings)
    return _FETCHERS[key]


def decoded_size(data: bytes, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) of an image as the model sees it (EXIF rotation applied, as
    regionscribe.model.images.load_image does), after decoding it fully: junk, truncated files and decompression
    bombs raise ValueError/OSError. PIL only, so an ingest worker never imports torch."""
    from PIL import Image, ImageOps

    if not data:
        raise ValueError("empty image data")
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format or ""
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise ValueError(f"image refused: {width}x{height} pixels (limit MAX_IMAGE_PIXELS={max_pixels})")
            image.load()
            return fmt, ImageOps.exif_transpose(image).size
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image refused as a decompression bomb: {exc}") from None
    except (Image.UnidentifiedImageError, SyntaxError) as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from None


def cache_image(store: Store, fetcher, image_ref: str, task_id, max_pixels: int) -> dict:
    """Fetch one image, write it as <images_dir>/<sha256>.<ext> (atomically) and fill the records that use it.
    Errors are recorded in the store and returned, not raised."""
    from regionscribe.backend.labelstudio.fetcher import FetchError

    known = store.cached_image(image_ref)
    if known and known.get("sha256") and store.image_path(known["sha256"]) is not None:
        filled = store.set_image(image_ref, known["sha256"], known["ext"], known["width"], known["height"],
                                 known["bytes"] or 0)
        return {"sha256": known["sha256"], "records": filled, "cached": True}
    try:
        data = fetcher.fetch(image_ref, task_id)
        fmt, (width, height) = decoded_size(data, max_pixels)
    except (FetchError, ValueError, OSError) as exc:
        message = f"{type(exc).__name__}: {exc}"
        log.warning("image of task %s not cached: %s", task_id, message)
        store.image_failed(image_ref, message)
        return {"error": message}
    sha = hashlib.sha256(data).hexdigest()
    ext = _EXTENSIONS.get(fmt.upper(), fmt.lower() or "bin")
    store.images_dir.mkdir(parents=True, exist_ok=True)
    path = store.images_dir / f"{sha}.{ext}"
    if not path.is_file():
        write_atomic(path, data)
    filled = store.set_image(image_ref, sha, ext, width, height, len(data))
    return {"sha256": sha, "path": str(path), "width": width, "height": height, "records": filled, "cached": False}


def fetch_image_job(image_ref: str, task_id=None) -> dict:
    """RQ job (queue INGEST_QUEUE): cache one annotated image by content hash. Runs in any regionscribe worker
    started with the same STORE_URL/DATA_DIR and image settings as the web server."""
    settings = get_settings()
    return cache_image(Store.shared(settings), _fetcher(settings), image_ref, task_id, settings.max_image_pixels)


def fetch_missing_images(store: Store, settings: Settings | None = None, fetcher=None,
                         limit: int | None = None) -> dict:
    """The sweep: cache every image that live records need and the cache lacks (the jobs could not run: Redis or
    Label Studio was down). Call it before `store.snapshot()` in a training run. Returns
    {"fetched": n, "failed": {image_ref: error}}."""
    settings = settings or get_settings()
    fetcher = fetcher or _fetcher(settings)
    fetched, failed = 0, {}
    for image_ref, task_id in store.missing_images(limit=limit):
        outcome = cache_image(store, fetcher, image_ref, task_id, settings.max_image_pixels)
        if "error" in outcome:
            failed[image_ref] = outcome["error"]
        else:
            fetched += 1
    return {"fetched": fetched, "failed": failed}
