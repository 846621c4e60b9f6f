"""Ingest: Label Studio webhook events → region-text records in the store, and the images they need, cached by
content hash.

    /webhook  →  handle_event(settings, payload)           (web process; answers well under Label Studio's 1 s)
                   1. validate the payload (BadEvent → 400, nothing written)
                   2. one store transaction (durable before the answer)
                   3. enqueue `fetch_image_job(image_ref, task_id)` on INGEST_QUEUE for images not cached yet
                   4. ask the retraining policy whether the project is due
    ingest worker (`regionscribe worker --queue ingest`, or any worker that also listens to it)
                   fetch_image_job → ImageFetcher → <DATA_DIR>/images/<sha256>.<ext>; fills every record using it
    trainer       fetch_missing_images(store) sweeps what the jobs did not get (Redis was down, LS was down)

Steps 3 and 4 need Redis; when it is down the records are still written and the answer is still 201. The image is
fetched later by the sweep, and the policy evaluates again on the next event (the pending count and a START_TRAINING
request live in the store).

How a region is read from an annotation's `result` (labelstudio.md §2): results sharing an `id` are one region. The
shape is its rectangle, polygon, ellipse, brush or keypoint result (a rectangle's geometry may also come from a
per-region result repeating it; other shapes are kept whole, regionscribe.backend.labelstudio.shapes); the caption, detailed
caption and relation text are the TextAreas the project's labeling config names for them (`ProjectConfig`: from the
payload's `project.label_config`, else the config last saved in the store, else the one /setup saved in Redis);
without a config, a TextArea whose name says "relation"/"detail" takes that role and the first other TextArea of
the region is the caption. Every Choices/Taxonomy result of the region is an attribute (control name → values;
Taxonomy values are paths). Relations `{"type": "relation", "from_id", "to_id", "labels"}` are kept on the
`from_id` region as `{"to", "labels", "direction"}`.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os

import redis

from regionscribe.backend.core.connections import fast_redis
from regionscribe.backend.core.keys import PROJECT_CONFIG_KEY
from regionscribe.model.files import write_atomic

from regionscribe.backend.labelstudio.config import ProjectConfig, parsed_config
from regionscribe.backend.labelstudio.results import read_regions
from regionscribe.backend.core.logs import current_request_id
from regionscribe.backend.core.settings import Settings, get_settings
from regionscribe.backend.store import AnnotationInput, RegionInput, Store, _canonical

log = logging.getLogger(__name__)

CREATED, UPDATED, DELETED, START_TRAINING = (
    "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING")
KNOWN_ACTIONS = (CREATED, UPDATED, DELETED, START_TRAINING)
IMAGE_JOB = "regionscribe.backend.feedback.ingest.fetch_image_job"
MAX_ID = 2 ** 63 - 1  # ids are stored as 64-bit signed integers (BIGINT)
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif",
               "MPO": "jpg", "ICO": "ico", "PPM": "ppm"}


class BadEvent(ValueError):
    """The webhook payload does not have the shape Label Studio sends (→ HTTP 400, nothing written)."""


# ------------------------------------------------------------------------------------------ payload → inputs


def _int(value, what: str) -> int:
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or value is None:
        raise BadEvent(f"{what} is missing")
    try:
        number = int(str(value).split(".", 1)[0]) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise BadEvent(f"{what} must be an integer id, got {value!r}") from None
    if isinstance(value, float) and not value.is_integer():
        raise BadEvent(f"{what} must be an integer id, got {value!r}")
    if not -MAX_ID - 1 <= number <= MAX_ID:
        raise BadEvent(f"{what} is out of range (64-bit integer ids), got {value!r}")
    return number


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def project_id_of(payload: dict) -> int:
    """The project id of an event: `project.id` (Label Studio sends the project object), else the annotation's or
    the task's `project`."""
    project = payload.get("project")
    for candidate in (project, (payload.get("annotation") or {}).get("project") if isinstance(
            payload.get("annotation"), dict) else None, (payload.get("task") or {}).get("project") if isinstance(
            payload.get("task"), dict) else None):
        if candidate is None:
            continue
        return _int(candidate, "project.id")
    raise BadEvent("'project' is missing (expected {\"project\": {\"id\": ...}})")


def parse_results(results: list, config: ProjectConfig | None) -> list[RegionInput]:
    """Label Studio results (an annotation's or a prediction's) → one RegionInput per region id with a shape: a box,
    or a polygon, ellipse, brush mask or keypoint (kept in RegionInput.shape, its bounding box in x..height), as
    regionscribe.backend.labelstudio.results.read_regions reads them. A shape that cannot be described (a polygon with
    2 points...) is skipped with a log line; the event itself is stored whole, so nothing is lost."""
    return [RegionInput(region_id=r.region_id, x=r.x, y=r.y, width=r.width, height=r.height, rotation=r.rotation,
                        labels=r.content.labels, caption=r.content.caption,
                        detailed_caption=r.content.detailed_caption, relation_text=r.content.relation_text,
                        attributes=r.content.attributes, original_width=r.content.original_width,
                        original_height=r.content.original_height, shape=r.shape, relations=r.relations)
            for r in read_regions(results, config)]


def _image_ref(task: dict, config: ProjectConfig | None) -> str | None:
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    if config is not None and isinstance(data.get(config.image_key), str):
        return data[config.image_key] or None
    if isinstance(data.get("image"), str):
        return data["image"] or None
    return next((v for v in data.values() if isinstance(v, str) and v), None)


def _annotator(annotation: dict) -> tuple[int | None, str | None]:
    who = annotation.get("completed_by")
    user_id, email = None, None
    if isinstance(who, dict):
        user_id = who.get("id")
        email = who.get("email")
    elif who is not None:
        user_id = who
    try:
        user_id = int(user_id) if user_id is not None else None
    except (TypeError, ValueError, OverflowError):
        user_id = None
    if user_id is not None and not -MAX_ID - 1 <= user_id <= MAX_ID:
        user_id = None
    if email is None and isinstance(annotation.get("created_username"), str) and "@" in annotation["created_username"]:
        email = annotation["created_username"].split(",", 1)[0].strip()  # "email, id" in Label Studio's serializer
    return user_id, (email.replace("\x00", "") or None) if isinstance(email, str) else None


def parse_annotation(payload: dict, config: ProjectConfig | None) -> AnnotationInput:
    """An ANNOTATION_CREATED/UPDATED payload → AnnotationInput. Raises BadEvent on a malformed payload."""
    annotation = payload.get("annotation")
    if not isinstance(annotation, dict):
        raise BadEvent("'annotation' must be an object")
    annotation_id = _int(annotation.get("id"), "annotation.id")
    task = payload.get("task") if isinstance(payload.get("task"), dict) else {}
    if payload.get("task") is not None and not isinstance(payload.get("task"), dict):
        raise BadEvent("'task' must be an object")
    task_id = _int(task.get("id") if task.get("id") is not None else annotation.get("task"), "task.id")
    project_id = project_id_of(payload)
    result = annotation.get("result")
    if result is None:
        result = []
    if not isinstance(result, list):
        raise BadEvent("'annotation.result' must be a list")
    # identifiers are stored as they are, and PostgreSQL text cannot hold NUL (free text has it removed instead)
    if any(isinstance(item, dict) and "\x00" in str(item.get("id", "")) for item in result):
        raise BadEvent("a result id contains a NUL character")
    image_ref = _image_ref(task, config)
    if image_ref is not None and "\x00" in image_ref:
        raise BadEvent("the task's image reference contains a NUL character")
    user_id, email = _annotator(annotation)
    lead_time = _float(annotation.get("lead_time"))
    was_cancelled = bool(annotation.get("was_cancelled"))
    ground_truth = bool(annotation.get("ground_truth"))
    digest = hashlib.sha256(_canonical({
        "result": result, "was_cancelled": was_cancelled, "ground_truth": ground_truth, "lead_time": lead_time,
        "completed_by": user_id, "task": task_id, "image": image_ref}).encode()).hexdigest()[:32]
    return AnnotationInput(
        project_id=project_id, task_id=task_id, annotation_id=annotation_id, image_ref=image_ref,
        regions=tuple(parse_results(result, config)), completed_by=user_id, completed_by_email=email,
        created_at=_str_or_none(annotation.get("created_at")), updated_at=_str_or_none(annotation.get("updated_at")),
        lead_time=lead_time, was_cancelled=was_cancelled, ground_truth=ground_truth, digest=digest)


def _str_or_none(value) -> str | None:
    text = str(value).replace("\x00", "") if value is not None else ""
    return text or None


# ------------------------------------------------------------------------------------------------ label config


def resolve_config(payload: dict, project_id: int, store: Store, connection: redis.Redis | None
                   ) -> tuple[ProjectConfig | None, str | None, bool]:
    """(parsed config, XML to save in the store or None, whether Redis failed): the payload's project.label_config,
    else the store's, else the one /setup saved in Redis."""
    project = payload.get("project")
    xml = project.get("label_config") if isinstance(project, dict) else None
    if isinstance(xml, str) and xml.strip() and "\x00" not in xml:  # XML never holds NUL
        return parsed_config(xml), xml, False
    saved = store.label_config(project_id)
    if saved:
        return parsed_config(saved), None, False
    if connection is not None:
        try:
            raw = connection.get(PROJECT_CONFIG_KEY.format(project=project_id))
        except redis.RedisError as exc:
            log.warning("labeling config of project %s not read from Redis: %s", project_id, exc)
            return None, None, True
        if raw:
            xml = raw.decode()
            return parsed_config(xml), xml, False
    return None, None, False


def enqueue_image_fetch(connection: redis.Redis, settings: Settings, image_ref: str, task_id: int) -> str | None:
    """Put `fetch_image_job(image_ref, task_id)` on INGEST_QUEUE, once per image while it waits (unique job id).
    Returns the job id, or None when it was already queued."""
    from rq import Queue
    from rq.exceptions import DuplicateJobError
    from rq.serializers import JSONSerializer

    job_id = "regionscribe-image-" + hashlib.sha256(image_ref.encode()).hexdigest()[:24]
    queue = Queue(settings.ingest_queue, connection=connection, serializer=JSONSerializer)
    try:
        queue.enqueue_call(IMAGE_JOB, args=(image_ref, task_id), job_id=job_id, unique=True,
                           timeout=max(60, int(settings.fetch_timeout * 6)), result_ttl=0, failure_ttl=300,
                           description=f"cache the image of task {task_id}",
                           meta={"request_id": current_request_id()})
    except DuplicateJobError:
        return None
    return job_id


# ------------------------------------------------------------------------------------------------- events


def handle_event(settings: Settings, payload: dict, store: Store | None = None,
                 connection: redis.Redis | None = None) -> dict:
    """One webhook event. Returns the answer body; raises BadEvent (→ 400) before writing anything when the payload
    is malformed, StoreError (→ 503) when the store cannot be reached."""
    if not isinstance(payload, dict):
        raise BadEvent("the body must be a JSON object")
    action = payload.get("action")
    if not isinstance(action, str) or not action:
        raise BadEvent("'action' is missing")
    if action not in KNOWN_ACTIONS:
        return {"status": "Unknown event", "action": action}
    if action == DELETED:
        items = payload.get("annotations")
        if not isinstance(items, list):
            raise BadEvent("'annotations' must be a list of {\"id\": ...}")
        ids = [_int(item, "annotations[].id") for item in items]
        project_id = None
        try:
            project_id = project_id_of(payload)
        except BadEvent:
            pass  # deletes are keyed by annotation id; the project is informative
        store = store or Store.shared(settings)
        outcome = store.delete_annotations(ids, payload, project_id=project_id)
        return {"status": "ok", "action": action, "result": outcome}

    project_id = project_id_of(payload)
    if connection is None:
        connection = fast_redis(settings.redis_url)
    if action == START_TRAINING:
        store = store or Store.shared(settings)
        store.request_training(project_id, payload=payload)
        return {"status": "ok", "action": action, "training": evaluate_policy(settings, store, connection, project_id)}

    # ANNOTATION_CREATED / ANNOTATION_UPDATED: validate the shape before touching anything
    parse_annotation(payload, None)
    store = store or Store.shared(settings)
    config, xml_to_save, redis_failed = resolve_config(payload, project_id, store, connection)
    if redis_failed:
        connection = None
    annotation = parse_annotation(payload, config)
    outcome = store.record_annotation(annotation, action, payload, label_config=xml_to_save)
    answer = {"status": "ok", "action": action, "result": {k: v for k, v in outcome.items() if k != "images_missing"}}
    # durable from here on; what follows needs Redis and is skipped after its first failure (stay under 1 s)
    image, connection = queue_missing_images(settings, connection, outcome.get("images_missing") or [])
    if image:
        answer["image"] = image
    if outcome.get("outcome") == "applied":
        answer["training"] = evaluate_policy(settings, store, connection, project_id)
    return answer


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


def evaluate_policy(settings: Settings, store: Store, connection: redis.Redis | None, project_id: int) -> dict:
    """Ask the retraining policy whether the project is due (needs Redis; without it the count waits in the store
    for the next evaluation)."""
    from regionscribe.backend.feedback.policy import Policy, PolicyBusy

    if connection is None:
        return {"evaluated": False, "detail": "no queue (REDIS_URL unset or Redis unreachable); kept for the next "
                                              "event"}
    try:
        return Policy(settings, store, connection).evaluate(project_id)
    except (redis.RedisError, PolicyBusy) as exc:
        log.warning("training policy not evaluated for project %s: %s", project_id, exc)
        return {"evaluated": False, "detail": f"queue unavailable ({type(exc).__name__}); kept for the next event"}


def replay(origin: Store, target: Store, after_id: int = 0) -> int:
    """Apply the raw events kept in `origin` to `target`, in arrival order, each with the source it came by (both
    stores may be the same: a no-op by idempotency). Returns how many events were applied. Images are not fetched
    (run the sweep)."""
    count = 0
    while True:
        events = origin.events(after_id=after_id, limit=500)
        if not events:
            return count
        for event in events:
            after_id = event["id"]
            payload = event["payload"]
            source = event.get("source") or "webhook"
            action = payload.get("action") if isinstance(payload, dict) else None
            try:
                if action in (CREATED, UPDATED):
                    pid = project_id_of(payload)
                    config, xml, _ = resolve_config(payload, pid, target, None)
                    target.record_annotation(parse_annotation(payload, config), action, payload, label_config=xml,
                                             source=source)
                elif action == DELETED:
                    ids = [_int(item, "annotations[].id") for item in payload.get("annotations") or []]
                    target.delete_annotations(ids, payload, source=source)
                elif action == START_TRAINING:
                    target.record_event(action, payload, project_id_of(payload), source=source)
                count += 1
            except BadEvent as exc:
                log.warning("event %s not replayed: %s", event["id"], exc)


# -------------------------------------------------------------------------------------------------- images


_FETCHERS: dict[tuple[int, Settings], object] = {}


def _fetcher(settings: Settings):
    """One ImageFetcher per process and settings (it keeps HTTP sessions and Label Studio's access token)."""
    from regionscribe.backend.labelstudio.fetcher import ImageFetcher

    key = (os.getpid(), settings)
    if key not in _FETCHERS:
        _FETCHERS[key] = ImageFetcher(settings)
    return _FETCHERS[key]


def decoded_size(data: bytes, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) of an image as the model sees it (EXIF rotation applied, as regionscribe.model.images.load_image
    does), after decoding it fully: junk, truncated files and decompression bombs raise ValueError/OSError. PIL
    only, so an ingest worker never imports torch."""
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

