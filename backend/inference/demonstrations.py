"""Demonstrations in an inference worker (DEMONSTRATIONS=k): computing the region tokens of a project's accepted
regions with the describer it serves (`refresh`), and finding, for the boxes of a describe request, the k accepted
regions of other tasks of the same project whose tokens are most like theirs (`for_request`).

    webhook (web)  → refresh_demonstrations_job(project, [task])   the annotation's regions, after ingest
    worker start, new model version (`start_serving`), new regions noticed at lookup
                   → queue_refresh(project)                      every accepted region without a token of this version
    describe job   → for_request(...) → DescribeRequest.demonstrations, and the answer records which were used

Tokens are computed from the image as predictions see it: the cached file of the image (the ingest job's, by content
hash) when it is there, else fetched through the worker's ImageFetcher, decoded with EXIF rotation, each region's box
(or mask: polygons, ellipses, brushes) from its stored Label Studio geometry on that decoded image, as a describe job
makes them (regionscribe.backend.inference.answers.region_pixels). The answer a demonstration shows is the region's
caption and its Choices/Taxonomy values as the model is asked them (ProjectConfig.asked_values). A region with neither
shows nothing and gets no token. The store decides what is written (regionscribe.backend.store.demonstrations): a token
for a region that changed meanwhile is refused.

A project with no demonstrations for the served model version predicts as before: no region tokens are computed and
the request goes out unchanged.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from typing import Callable

import numpy as np

from regionscribe.model.errors import RegionScribeError

from regionscribe.backend.inference.demonstration_index import Neighbour, project_index
from regionscribe.backend.labelstudio.fetcher import FetchError
from regionscribe.backend.labelstudio.labeling_config import parsed_config
from regionscribe.backend.labelstudio.shapes import ShapeError
from regionscribe.backend.store import AcceptedRegion, DemonstrationInput

log = logging.getLogger(__name__)

REFRESH_CHUNK = 256  # regions one refresh job computes before it queues the rest (describe jobs run in between)
CHECK_EVERY = 60.0  # seconds between a worker's checks, at lookup, that a project has regions it has not queued


# ------------------------------------------------------------------------------------------- computing tokens


def refresh(describer, fetcher, store, project_id: int, *, max_pixels: int, task_ids: list[int] | None = None,
            limit: int | None = None, after_seq: int = 0, force: bool = False,
            progress: Callable[[int], None] | None = None) -> dict:
    """Compute and write the tokens the project's accepted regions lack for `describer.model_version` (of `task_ids`
    only, when given; every accepted region with `force`), those whose change counter is above `after_seq`, about
    `limit` of them: a chunk ends with the last write it reaches (regions that changed together are taken together).
    Returns counts: {"project_id", "model_version", "missing" (regions taken on), "computed", "written", "skipped"
    (changed meanwhile), "without_answer", "errors", "more" (regions are left: call again with "after_seq"),
    "after_seq", "retired" (stale rows, after a whole project's last chunk)}. A region without an answer to show, or
    whose image failed, is left for the next refresh (a chunk never comes back to it). `progress(n)` is told of each
    region done."""
    version = describer.model_version
    wanted = None if force else version
    todo = store.accepted_regions(project_id, wanted, task_ids, limit=None if limit is None else limit + 1,
                                  after_seq=after_seq)
    more = limit is not None and len(todo) > limit
    if more:  # up to the chunk's last write, whole
        cut = todo[limit - 1].change_seq
        todo = store.accepted_regions(project_id, wanted, task_ids, after_seq=after_seq, until_seq=cut)
    config = parsed_config(store.label_config(project_id))
    counts = {"project_id": int(project_id), "model_version": version, "missing": len(todo), "computed": 0,
              "written": 0, "skipped": 0, "without_answer": 0, "errors": 0, "more": more,
              "after_seq": max([after_seq] + [a.change_seq for a in todo]), "retired": 0}
    groups: OrderedDict[str, list[tuple[AcceptedRegion, str | None, dict]]] = OrderedDict()
    for accepted in todo:
        record = accepted.record
        attributes = config.asked_values(record.attributes) if config is not None else {}
        caption = (record.caption or "").strip() or None
        if caption is None and not attributes or not record.image_ref:
            counts["without_answer"] += 1
            if progress:
                progress(1)
            continue
        groups.setdefault(record.image_sha256 or record.image_ref, []).append((accepted, caption, attributes))
    pending: list[DemonstrationInput] = []
    for regions in groups.values():
        try:
            computed = _tokens(describer, fetcher, [a for a, _, _ in regions], max_pixels)
        except (FetchError, OSError, RegionScribeError) as exc:
            first = regions[0][0].record
            log.warning("demonstrations of project %s: the image of task %s: %s", project_id, first.task_id, exc)
            counts["errors"] += len(regions)
            computed = {}
        for accepted, caption, attributes in regions:
            token = computed.get(id(accepted))
            if token is not None:
                record = accepted.record
                pending.append(DemonstrationInput(
                    task_id=record.task_id, region_id=record.region_id, annotation_id=record.annotation_id,
                    content_digest=accepted.content_digest, token=np.asarray(token, np.float32).tobytes(),
                    caption=caption, attributes=attributes))
                counts["computed"] += 1
            elif id(accepted) in computed:
                counts["errors"] += 1
        if progress:
            progress(len(regions))
        if len(pending) >= 64:
            _write(store, project_id, version, pending, counts)
    _write(store, project_id, version, pending, counts)
    if task_ids is None and not more:
        counts["retired"] = store.retire_stale_demonstrations(project_id, version)
    return counts


def _write(store, project_id: int, version: str, pending: list, counts: dict) -> None:
    if pending:
        done = store.write_demonstrations(project_id, version, pending)
        counts["written"] += done["written"]
        counts["skipped"] += done["skipped"]
        pending.clear()


def _tokens(describer, fetcher, regions: list[AcceptedRegion], max_pixels: int) -> dict[int, np.ndarray | None]:
    """The tokens of regions on one image, by id() of each AcceptedRegion (None for a region whose shape cannot be
    placed on the decoded image)."""
    from regionscribe.model.images import load_image

    from regionscribe.backend.inference.answers import region_pixels

    first = regions[0].record
    if first.image_path is not None:
        data = first.image_path.read_bytes()
    else:
        data = fetcher.fetch(first.image_ref, first.task_id)
    image = load_image(data, max_pixels=max_pixels)
    width, height = image.size
    placed, boxes, masks = [], [], []
    out: dict[int, np.ndarray | None] = {}
    for accepted in regions:
        record = accepted.record
        try:
            box, mask = region_pixels({"x": record.x, "y": record.y, "width": record.width, "height": record.height,
                                       "rotation": record.rotation, "shape": record.shape}, width, height)
        except ShapeError as exc:
            log.info("demonstration of task %s region %s not computed: %s", record.task_id, record.region_id, exc)
            out[id(accepted)] = None
            continue
        placed.append(accepted)
        boxes.append(box)
        masks.append(mask)
    if placed:
        tokens = describer.region_tokens(image, boxes, masks if any(m is not None for m in masks) else None,
                                         image_key=hashlib.sha256(data).hexdigest())
        for accepted, token in zip(placed, tokens):
            out[id(accepted)] = token
    return out


# ----------------------------------------------------------------------------------------- at prediction time


_CHECKED: dict[tuple[str, int, str], tuple[float, int]] = {}  # (store, project, version) -> (when, change_seq seen)


def for_request(settings, describer, store, connection, project_id: int, task_id, request) -> tuple[list | None,
                                                                                                     dict[int, list]]:
    """The demonstrations for a describe request's boxes: (per box of the request the describer's Demonstrations,
    or None when no box has any; {box index: [Neighbour.to_json()]} to record with the answer). Only the boxes the
    request describes are looked up; never the predicted task's own regions."""
    k = settings.demonstrations
    version = describer.model_version
    index = project_index(store, project_id, version)
    _notice_new_regions(settings, store, connection, project_id, version)
    if not len(index):
        return None, {}
    n = len(request.boxes)
    targets = sorted(set(request.only)) if request.only is not None else list(range(n))
    masks = request.masks
    tokens = describer.region_tokens(request.image, [request.boxes[i] for i in targets],
                                     None if masks is None else [masks[i] for i in targets],
                                     image_key=request.image_key)
    try:
        exclude = int(task_id) if task_id is not None else None
    except (TypeError, ValueError):
        exclude = None
    found = index.search(tokens, k, exclude_task=exclude)
    per_box: list[list[Neighbour]] = [[] for _ in range(n)]
    for i, neighbours in zip(targets, found):
        per_box[i] = neighbours
    if not any(per_box):
        return None, {}
    from regionscribe.model.demonstrations import Demonstration

    shown = [[Demonstration(token=n.token, caption=n.caption, attributes=dict(n.attributes), source=n.source)
              for n in neighbours] for neighbours in per_box]
    return shown, {i: [n.to_json() for n in neighbours] for i, neighbours in enumerate(per_box) if neighbours}


def _notice_new_regions(settings, store, connection, project_id: int, version: str) -> None:
    """At most every CHECK_EVERY seconds per project: when the project's regions changed since this worker last
    queued a refresh (its change counter moved), queue one; it computes whatever a webhook's job did not (annotations
    that came through a sync, jobs lost with Redis, a worker started with an empty index)."""
    if connection is None:  # no queue to put a refresh on (a worker always has one)
        return
    key = (store.url, int(project_id), version)
    now = time.monotonic()
    checked = _CHECKED.get(key)
    if checked is not None and now - checked[0] < CHECK_EVERY:
        return
    seq = store.change_seq(project_id)
    if checked is not None and seq <= checked[1]:
        _CHECKED[key] = (now, checked[1])
        return
    from regionscribe.backend.inference.demonstration_jobs import queue_refresh

    try:
        queued = queue_refresh(connection, settings, project_id, version)
    except Exception as exc:  # Redis down: the next check tries again
        log.warning("demonstrations of project %s: refresh not queued: %s", project_id, exc)
        return
    # queued: remembered; already queued by another trigger (it may have read the regions before this change): the
    # next check queues again once that one is done
    _CHECKED[key] = (now, seq if queued is not None else (checked[1] if checked is not None else -1))


def refresh_in_worker(project_id: int, task_ids: list[int] | None = None, after_seq: int = 0) -> dict:
    """The body of the refresh job: with this worker's describer (reloaded first if a new version was announced),
    about REFRESH_CHUNK regions changed after `after_seq`, the rest queued as another job."""
    from regionscribe.backend.inference.demonstration_jobs import (clear_refresh_mark, enqueue_refresh,
                                                                   keep_refresh_mark)
    from regionscribe.backend.inference.state import current, refresh_model
    from regionscribe.backend.store import Store

    state = current()
    connection = state.metrics.connection
    refresh_model(state, connection)
    store = Store.shared(state.settings)
    started = time.perf_counter()
    counts = refresh(state.describer, state.fetcher, store, project_id, max_pixels=state.settings.max_image_pixels,
                     task_ids=task_ids, limit=REFRESH_CHUNK, after_seq=after_seq)
    counts["seconds"] = round(time.perf_counter() - started, 3)
    if counts["more"] and connection is not None:
        enqueue_refresh(connection, state.settings, project_id, task_ids, after_seq=counts["after_seq"])
        if task_ids is None:
            keep_refresh_mark(connection, project_id, counts["model_version"])
    elif task_ids is None and connection is not None:
        clear_refresh_mark(connection, project_id, counts["model_version"])
    if counts["computed"] or counts["errors"]:
        log.info("demonstrations of project %s (%s): %d computed, %d written, %d errors%s, in %.2f s",
                 project_id, counts["model_version"], counts["computed"], counts["written"], counts["errors"],
                 "; more queued" if counts["more"] else "", counts["seconds"])
    return counts


def start_serving(settings, store, connection, model_version: str) -> threading.Thread:
    """A worker starts serving `model_version` (at start, after a reload): queue a refresh of every project with
    accepted regions (their tokens of this version are computed a chunk at a time; a project already queued is not
    queued twice), and build this process's indexes from the store in a background thread, so that the first
    prediction of a large project does not wait for it (faiss releases the GIL; a lookup meanwhile waits for its
    project's index). Returns the thread."""
    from regionscribe.backend.inference.demonstration_jobs import queue_refresh

    def run() -> None:
        try:
            projects = store.demonstration_projects()
        except Exception as exc:  # the store is down: the first lookup of each project builds its index
            log.warning("demonstrations: projects not read (%s); indexes are built at their first lookup", exc)
            return
        queued = []
        for project_id in projects:
            try:
                if connection is not None and queue_refresh(connection, settings, project_id,
                                                            model_version) is not None:
                    queued.append(project_id)
            except Exception as exc:
                log.warning("demonstrations of project %s: refresh not queued: %s", project_id, exc)
        if queued:
            log.info("demonstrations: refresh queued for project(s) %s (model %s)", queued, model_version)
        for project_id in projects:
            try:
                started = time.perf_counter()
                index = project_index(store, project_id, model_version)
                log.info("demonstrations of project %s (%s): %d in the index (%s) after %.1f s", project_id,
                         model_version, len(index), index.kind, time.perf_counter() - started)
            except Exception as exc:
                log.warning("demonstrations of project %s: index not built: %s", project_id, exc)

    thread = threading.Thread(target=run, name="regionscribe-demonstrations", daemon=True)
    thread.start()
    return thread


def rebuild(settings, store, projects: list[int] | None = None, force: bool = False, connection=None,
            progress: Callable[[int], None] | None = None) -> dict:
    """`regionscribe demonstrations rebuild`: in this process, with the model the workers serve (the announced current
    version, else MODEL_DIR's or the embedded default), compute the tokens the projects' accepted regions lack for
    it (every accepted region's with `force`). Returns {"model_version", "projects": {id: counts}}."""
    from regionscribe.backend.inference.state import load_describer
    from regionscribe.backend.labelstudio.fetcher import ImageFetcher

    describer = load_describer(settings, connection)
    fetcher = ImageFetcher(settings)
    out = {"model_version": describer.model_version, "projects": {}}
    for project_id in (projects if projects else store.demonstration_projects()):
        out["projects"][int(project_id)] = refresh(describer, fetcher, store, int(project_id),
                                                   max_pixels=settings.max_image_pixels, force=force,
                                                   progress=progress)
    return out
