"""A describe job's answer, computed in an inference worker with the describer it loaded once
(regionscribe.backend.inference.state).

A payload (regionscribe.backend.inference.submit.make_payload) carries one task: its id, its image reference, every
region on it (Label Studio percent geometry of its bounding box with its region id and labels, and for a polygon,
ellipse, brush or keypoint its `shape`, see regionscribe.backend.labelstudio.shapes) and the `Asks`. The worker
fetches and decodes the image, turns the regions into pixel boxes and masks of the decoded (EXIF-rotated) image,
describes all of them in one batched pass (or, when the payload lists which to `describe`, only those, every region
still counting as a relation partner), and returns a JSON-able dict. Several payloads are answered together
(`describe_payloads`: one `describe_many` pass), each with its own dict. Regions travel in percent, not pixels,
because only the worker knows the decoded image's true size (Label Studio's original_width/height may be missing, or
refer to the un-rotated file). A region whose shape cannot be described there (an empty mask, a brush RLE of another
size) comes back as {"id", "error"}; the others are described.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from regionscribe.model.asks import Asks
from regionscribe.model.errors import RegionScribeError

from regionscribe.backend.core.logs import request_context
from regionscribe.backend.inference.state import current, refresh_model
from regionscribe.backend.labelstudio.fetcher import FetchError
from regionscribe.backend.labelstudio.shapes import Shape, ShapeError, percent_box_to_pixels

log = logging.getLogger(__name__)

_BYTES_CACHE: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
_BYTES_CACHE_SECONDS = 60.0  # an annotator drawing box after box on one image: fetch it once a minute
_BYTES_CACHE_ITEMS = 8


def _fetch_bytes(state, ref: str, task_id) -> bytes:
    now = time.monotonic()
    key = f"{task_id}|{ref}"
    hit = _BYTES_CACHE.get(key)
    if hit is not None and now - hit[0] < _BYTES_CACHE_SECONDS:
        _BYTES_CACHE.move_to_end(key)
        return hit[1]
    data = state.fetcher.fetch(ref, task_id)
    _BYTES_CACHE[key] = (now, data)
    while len(_BYTES_CACHE) > _BYTES_CACHE_ITEMS:
        _BYTES_CACHE.popitem(last=False)
    return data


def describe_payloads(payloads: list[dict]) -> list[dict]:
    """Describe every payload's task in one batched pass (`RegionDescriber.describe_many`): the vision tower over
    the images not cached yet together, then every box's questions together. Each payload gets its own answer or
    its own {"error": ...}."""
    state = current()
    refresh_model(state, state.metrics.connection)
    started = time.perf_counter()
    answers: list[dict | None] = [None] * len(payloads)
    requests, owners = [], []
    for i, payload in enumerate(payloads):
        with request_context(payload.get("request_id")):
            prepared = _prepare(state, payload)
        if isinstance(prepared, dict):
            answers[i] = prepared
            continue
        requests.append(prepared.request)
        owners.append((i, prepared))
    if state.settings.demonstrations > 0 and owners:
        # a lookup needs each box's region token, so the images go through the tower first, all together
        state.describer.encode_images([(r.image, r.image_key) for r in requests])
        for i, prepared in owners:
            with request_context(payloads[i].get("request_id")):
                _demonstrate(state, payloads[i], prepared)
    described = state.describer.describe_many(requests) if requests else []
    for (i, prepared), description in zip(owners, described):
        payload = payloads[i]
        with request_context(payload.get("request_id")):  # its lines carry its request id, in a batch too
            if isinstance(description, RegionScribeError):
                answers[i] = _error(state, "input", str(description))
            else:
                answers[i] = _answer(state, payload, prepared, description, started, len(payloads))
    return answers


@dataclass
class _Prepared:
    """A payload made ready for the describer: its request, the image size, and which payload regions it holds
    (`kept`: the payload index of each box given to the describer; `region_errors`: payload index -> error)."""

    request: object  # regionscribe.model.describer.DescribeRequest
    size: tuple[int, int]
    kept: list[int]
    region_errors: dict[int, str]
    demonstrations: dict[int, list] = field(default_factory=dict)  # box index -> the demonstrations it was shown
    demonstration_seconds: float = 0.0


def _prepare(state, payload: dict) -> "_Prepared | dict":
    """The payload's describe request, or an error answer (image unreachable or not an image, `describe` not a list
    of region indices, no region left to describe). Each region's pixel box and, for a polygon, ellipse or brush,
    its mask on the decoded (EXIF-corrected) image; a region whose shape cannot be described there (an empty mask,
    an RLE of another size) is reported on its own."""
    from regionscribe.model.describer import DescribeRequest
    from regionscribe.model.images import load_image

    try:
        data = _fetch_bytes(state, payload["image"], payload.get("task_id"))
        image = load_image(data, max_pixels=state.settings.max_image_pixels)
    except (FileNotFoundError, FetchError, RegionScribeError) as exc:
        log.info("request %s task %s: image error: %s", payload.get("request_id"), payload.get("task_id"), exc)
        return _error(state, "image", str(exc))
    width, height = image.size
    kept: list[int] = []
    boxes, masks, region_errors = [], [], {}
    for k, region in enumerate(payload["regions"]):
        try:
            box, mask = region_pixels(region, width, height)
        except ShapeError as exc:
            region_errors[k] = f"region {region.get('id')}: {exc}"
            continue
        kept.append(k)
        boxes.append(box)
        masks.append(mask)
    if region_errors:
        state.metrics.count("region_errors", len(region_errors))
        log.info("request %s task %s: %s", payload.get("request_id"), payload.get("task_id"),
                 "; ".join(region_errors.values()))
    only = payload.get("describe")
    count = len(payload["regions"])
    if only is not None and not isinstance(only, list):
        return _error(state, "input", f"`describe` must be a list of box indices, not {type(only).__name__}")
    if only is not None and any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < count for k in only):
        return _error(state, "input", f"`describe` names boxes {only!r}; there are {count} boxes "
                                      f"(indices 0..{count - 1})")
    position = {k: i for i, k in enumerate(kept)}
    wanted = range(count) if only is None else only
    targets = [position[k] for k in wanted if k in position]
    if not targets:
        if region_errors:  # nothing left to describe: the task's error is its regions' errors
            return _error(state, "input", "; ".join(region_errors.values()))
        return _error(state, "input", "no region to describe")
    request = DescribeRequest(image, boxes, Asks(**payload["asks"]), image_key=hashlib.sha256(data).hexdigest(),
                              only=None if only is None and not region_errors else targets,
                              masks=masks if any(m is not None for m in masks) else None)
    return _Prepared(request, (width, height), kept, region_errors)


def _demonstrate(state, payload: dict, prepared: _Prepared) -> None:
    """DEMONSTRATIONS=k: give the request's boxes the k accepted regions of the payload's project (other tasks) most
    like each (regionscribe.backend.inference.demonstrations). A project with none, a payload without a project, or a
    lookup that fails (the store unreachable) leaves the request as it is: the prediction is made without them."""
    project_id = payload.get("project_id")
    if isinstance(project_id, bool) or not isinstance(project_id, int):
        return
    from regionscribe.backend.inference.demonstration_index import DemonstrationIndexError
    from regionscribe.backend.inference.demonstrations import for_request
    from regionscribe.backend.store import Store, StoreError

    started = time.perf_counter()
    try:
        shown, used = for_request(state.settings, state.describer, Store.shared(state.settings),
                                  state.metrics.connection, project_id, payload.get("task_id"), prepared.request)
    except Exception as exc:  # demonstrations steer a prediction; without them it is still made
        state.metrics.count("demonstration_errors")
        expected = (RegionScribeError, StoreError, DemonstrationIndexError)  # the rest is a bug: with its traceback
        log.warning("request %s task %s: predicted without demonstrations: %s: %s", payload.get("request_id"),
                    payload.get("task_id"), type(exc).__name__, exc, exc_info=not isinstance(exc, expected))
        return
    if shown is not None:
        prepared.demonstration_seconds = time.perf_counter() - started
        prepared.request.demonstrations = shown
        prepared.demonstrations = used
        state.metrics.count("demonstrations", sum(len(v) for v in used.values()))
        log.info("request %s task %s: %d box(es) shown demonstrations (%s)", payload.get("request_id"),
                 payload.get("task_id"), len(used), "; ".join(
                     f"box {i}: " + ", ".join(f"task {d['task_id']} region {d['region_id']}" for d in demos)
                     for i, demos in sorted(used.items())))


def _answer(state, payload: dict, prepared: _Prepared, description, started: float, batch: int) -> dict:
    kept, region_errors = prepared.kept, prepared.region_errors
    boxes, only = prepared.request.boxes, prepared.request.only
    described = len(boxes) if only is None else len(set(only))
    log.info("request %s task %s: %s region(s) in %.3f s (cache %s, %d job(s) in the pass)",
             payload.get("request_id"), payload.get("task_id"),
             described if only is None else f"{described} of {len(boxes)}", time.perf_counter() - started,
             "hit" if description.cache_hit else "miss", batch)
    state.metrics.count("worker_jobs", outcome="ok")
    state.metrics.count("cache", result="hit" if description.cache_hit else "miss")
    state.metrics.count("regions", described)
    width, height = prepared.size
    position = {k: i for i, k in enumerate(kept)}
    out_regions = []
    for k, region in enumerate(payload["regions"]):
        if k in region_errors:
            out_regions.append({"id": region["id"], "error": region_errors[k]})
            continue
        d = description.regions[position[k]]
        out_regions.append(
            {"id": region["id"], "box": list(d.box), "caption": d.caption, "caption_confidence": d.caption_confidence,
             "detailed": d.detailed, "attributes": {k: [[v, p] for v, p in ranked] for k, ranked in d.attributes.items()},
             "relation_text": d.relation_text,
             "relation_partner": None if d.relation_partner is None else kept[d.relation_partner],
             "confidence": d.confidence})
        if position[k] in prepared.demonstrations:
            out_regions[-1]["demonstrations"] = prepared.demonstrations[position[k]]
    return {
        "task_id": payload.get("task_id"),
        "width": width,
        "height": height,
        "model_version": description.model_version,
        "cache_hit": description.cache_hit,
        "timings": {**description.timings, "job": time.perf_counter() - started,
                    **({"demonstrations": prepared.demonstration_seconds} if prepared.demonstration_seconds else {})},
        "worker": state.name,
        "worker_loads": state.loads,
        "regions": out_regions,
        "relations": [{"subject": kept[r.subject], "object": kept[r.object], "label": r.label, "score": r.score}
                      for r in description.relations],
    }


def region_pixels(region: dict, width: int, height: int) -> tuple[tuple[float, float, float, float], object]:
    """A payload region on a `width`×`height` image → (pixel xyxy box, boolean mask or None). A rectangle (no
    `shape` in the payload) is its bounding box, at least one pixel, inside the image, as it always was; a polygon,
    ellipse or brush its mask and the mask's bounding box; a keypoint a small box round it. Raises ShapeError."""
    shape = region.get("shape")
    if shape is None:
        x1, y1, x2, y2 = percent_box_to_pixels(region, width, height)
        # at least one pixel, inside the image: a sliver or a box dragged past the edge is still a region
        x1, y1 = min(x1, width - 1.0), min(y1, height - 1.0)
        return (x1, y1, max(x2, x1 + 1.0), max(y2, y1 + 1.0)), None
    shape = Shape.from_json(shape)
    mask = shape.mask(width, height)
    return shape.pixel_box(width, height, mask), mask


def _error(state, kind: str, message: str) -> dict:
    state.metrics.count("worker_jobs", outcome=f"{kind}_error")
    return {"error": message, "error_kind": kind}
