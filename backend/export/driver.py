"""The export driver: `export` writes the selected regions in every asked format into a hidden folder and renames
it into place (nothing is left behind on failure); `_write` streams the selection image by image through the
writers and builds the manifest's head."""
from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from regionscribe.backend.core.settings import redacted_url
from regionscribe.backend.export.errors import ExportError, ExportExists
from regionscribe.backend.export.formats import WRITERS
from regionscribe.backend.export.manifest import MANIFEST_VERSION, _write_manifest
from regionscribe.backend.export.options import SPLITS, ExportOptions, _check_time, parse_formats, parse_split, validate
from regionscribe.backend.export.exported_regions import _Image
from regionscribe.backend.export.selection import _Collector, _groups, _selection, split_of
from regionscribe.backend.export.writer import _Writer
from regionscribe.backend.store import Store


def export(store: Store, out: str | Path, options: ExportOptions, progress: bool = False,
           callback: Callable[[int], None] | None = None) -> dict:
    """Write the selected regions as `options.formats` into the folder `out` (created; an existing non-empty folder
    needs `overwrite`). Returns the manifest. Raises ExportError (bad options, nothing selected, images missing
    with images="copy"); on any error nothing is left behind. `callback(regions_read)` is called after every
    chunk of rows (the benchmark samples memory with it)."""
    validate(options)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not options.overwrite:
        raise ExportError(f"{out} exists and is not empty: choose another --out, or --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        manifest = _write(store, tmp, options, progress, callback)
        if out.exists() and options.overwrite:
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, out)  # onto nothing or an empty folder; fails if another export got there first
            except OSError as exc:
                raise ExportExists(f"{out} appeared while exporting ({exc.strerror}); nothing was replaced") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write(store: Store, root: Path, options: ExportOptions, progress: bool,
           callback: Callable[[int], None] | None) -> dict:
    from tqdm import tqdm

    formats = parse_formats(options.formats)
    fractions = parse_split(options.split)
    splits = [s for s, f in zip(SPLITS, fractions) if f > 0]
    filters = options.filters
    since, until = _check_time("since", filters.since), _check_time("until", filters.until)
    copy = options.images == "copy"
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    writers: list[_Writer] = []
    counts: dict[str, Any] = {"regions_read": 0, "regions": 0, "images": 0, "duplicates": 0,
                              "skipped": {"date_range": 0, "caption_length": 0, "no_image_size": 0},
                              "splits": {s: {"images": 0, "regions": 0} for s in splits}}
    missing: list[str] = []
    missing_count = 0
    collect = _Collector(store, filters, since, until, counts)
    next_image = 0
    try:
        for name in formats:
            writers.append(WRITERS[name].for_export(root, splits, copy))
        if copy:
            (root / "images").mkdir()
        with _selection(store, filters, options.chunk_size) as (state, total, rows):
            bar = tqdm(total=total, unit="region", desc="export", disable=not progress, mininterval=0.5)
            read_since_callback = 0
            for key, group in _groups(rows):
                before = collect.read
                regions, first = collect.image_regions(group)
                read_since_callback += collect.read - before
                if read_since_callback >= options.chunk_size:
                    bar.update(read_since_callback)
                    if callback is not None:
                        callback(collect.read)
                    read_since_callback = 0
                if not regions:
                    continue
                rec0, row0 = first
                width = rec0.image_width or row0.get("original_width")
                height = rec0.image_height or row0.get("original_height")
                next_image += 1
                image = _Image(id=next_image, key=key, sha256=rec0.image_sha256, image_ref=rec0.image_ref,
                               path=rec0.image_path, width=int(width), height=int(height),
                               split=split_of(key, options.seed, fractions), regions=regions)
                if copy:
                    if image.path is None or image.sha256 is None:
                        missing_count += 1
                        if len(missing) < 5:
                            missing.append(image.image_ref or key)
                        continue
                    image.file = f"{image.sha256}{image.path.suffix}"
                    target_path = root / "images" / image.file
                    if not target_path.exists():
                        shutil.copyfile(image.path, target_path)
                else:
                    image.file = str(image.path) if image.path is not None else image.image_ref
                for writer in writers:
                    writer.add(image)
                counts["images"] += 1
                counts["regions"] += len(regions)
                counts["splits"][image.split]["images"] += 1
                counts["splits"][image.split]["regions"] += len(regions)
            bar.update(read_since_callback)
            bar.close()
            if callback is not None:
                callback(collect.read)
        counts["regions_read"] = collect.read
        if missing_count:
            raise ExportError(
                f"{missing_count} image(s) of the selection are not in the image cache ({store.images_dir}), e.g. "
                f"{', '.join(missing)}: fetch them first (the training sweep, regionscribe.backend.feedback.image_cache.fetch_missing_images, "
                "or wait for the ingest queue), or export with --images reference")
        if not counts["regions"]:
            raise ExportError(
                f"no region matches the selection ({counts['regions_read']} read from the store; skipped: "
                + ", ".join(f"{k} {v}" for k, v in counts["skipped"].items()) + "): nothing exported")
        counts["formats"] = {}
        for writer in writers:
            counts["formats"][writer.name] = writer.close()
        writers = []
    finally:
        for writer in writers:
            writer.abort()

    head = {
        "manifest_version": MANIFEST_VERSION,
        "created_at": created,
        "tool": "regionscribe export",
        "formats": list(formats),
        "images": options.images,
        "image_folder": "images" if copy else None,
        "coordinates": "pixels of the upright image (EXIF rotation applied); conversations: boxes xyxy normalised "
                       "to [0, 1] by width/height; vg, coco, hf: x, y, width, height",
        "filters": {**asdict(filters), "projects": list(filters.projects), "annotators": list(filters.annotators),
                    "model_versions": list(filters.model_versions), "annotations_only": True,
                    "excluded": "deleted and cancelled annotations, regions without text or attributes, the "
                                "model's raw suggestions"},
        "split": {"by": "image", "seed": options.seed, "fractions": dict(zip(SPLITS, fractions)),
                  "method": "sha256('<seed>:<image sha256>') as a uniform number against the cumulative fractions"},
        "store": {"url": redacted_url(store.url), "dialect": store.dialect, **state},
        "selection_id": collect.selection.hexdigest()[:24],
        "selection_id_of": "sha256 of (annotation id, region id, updated_at) of every exported region, in export "
                           "order",
        "counts": counts,
    }
    _write_manifest(root, head)
    return head
