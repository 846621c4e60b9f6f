"""Webhook events into the store: Label Studio's ANNOTATION_CREATED / ANNOTATION_UPDATED / ANNOTATIONS_DELETED /
START_TRAINING payloads checked, turned into store inputs (`parse_annotation`: AnnotationInput, RegionInput) and
written, then the retraining policy asked.

    /webhook  →  handle_event(settings, payload)           (web process; answers well under Label Studio's 1 s)
                   1. validate the payload (BadEvent → 400, nothing written)
                   2. one store transaction (durable before the answer)
                   3. queue the image job for images not cached yet (regionscribe.backend.feedback.image_cache)
                   4. ask the retraining policy whether the project is due
    replay(origin, target)  applies the raw events a store kept to another store (or the same: a no-op)

Steps 3 and 4 need Redis; when it is down the records are still written and the answer is still 201. The image is
fetched later by the sweep, and the policy evaluates again on the next event (the pending count and a START_TRAINING
request live in the store). After a Redis call fails, the answer says `"queue": "unavailable"`, and the web process
skips its own Redis work for that event (the demonstrations' refresh): a Redis that hangs costs its short timeout
once, not once per step.

An annotation's `result` is read by regionscribe.backend.labelstudio.results (read_annotation_regions) with the project's labeling
config (`resolve_config`: the payload's `project.label_config`, else the config last saved in the store, else the one
/setup saved in Redis); without a config, results are read by their types.
"""
from __future__ import annotations

import hashlib
import logging

import redis

from regionscribe.backend.core.connections import fast_redis
from regionscribe.backend.core.keys import PROJECT_CONFIG_KEY
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.feedback.image_cache import queue_missing_images
from regionscribe.backend.labelstudio.labeling_config import ProjectConfig, parsed_config
from regionscribe.backend.labelstudio.results import finite_float, read_annotation_regions
from regionscribe.backend.store import AnnotationInput, RegionInput, Store
from regionscribe.backend.store.records import canonical_json

log = logging.getLogger(__name__)

CREATED, UPDATED, DELETED, START_TRAINING = (
    "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING")
KNOWN_ACTIONS = (CREATED, UPDATED, DELETED, START_TRAINING)
MAX_ID = 2 ** 63 - 1  # ids are stored as 64-bit signed integers (BIGINT)
UNAVAILABLE = "unavailable"  # an answer's "queue" when a Redis call failed during the event


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
    regionscribe.backend.labelstudio.results.read_annotation_regions reads them. A shape that cannot be described (a polygon with
    2 points...) is skipped with a log line; the event itself is stored whole, so nothing is lost."""
    return [RegionInput(region_id=r.region_id, x=r.x, y=r.y, width=r.width, height=r.height, rotation=r.rotation,
                        labels=r.content.labels, caption=r.content.caption,
                        detailed_caption=r.content.detailed_caption, relation_text=r.content.relation_text,
                        attributes=r.content.attributes, original_width=r.content.original_width,
                        original_height=r.content.original_height, shape=r.shape, relations=r.relations)
            for r in read_annotation_regions(results, config)]


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
    lead_time = finite_float(annotation.get("lead_time"))
    was_cancelled = bool(annotation.get("was_cancelled"))
    ground_truth = bool(annotation.get("ground_truth"))
    digest = hashlib.sha256(canonical_json({
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
    had_queue = connection is not None
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
    if had_queue and (connection is None or answer.get("training", {}).get("queue") == UNAVAILABLE):
        answer["queue"] = UNAVAILABLE  # the caller's own Redis work is skipped too (regionscribe.backend.web)
    return answer


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
        return {"evaluated": False, "detail": f"queue unavailable ({type(exc).__name__}); kept for the next event",
                **({"queue": UNAVAILABLE} if isinstance(exc, redis.RedisError) else {})}


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
