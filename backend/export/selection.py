"""Which regions are exported, and where they go: the SQL side of the filters (`_where`), one consistent read of the
store (`_selection`), rows grouped by image (`_groups`), the filters applied in Python with duplicates merged and
relations resolved (`_Collector`), and the split of an image (`split_of`)."""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterable, Iterator

from regionscribe.backend.export.options import SPLITS, ExportFilters
from regionscribe.backend.export.exported_regions import _dedup_key, _Region
from regionscribe.backend.store import Store, parse_time_us


def _where(filters: ExportFilters) -> tuple[str, list]:
    """The SQL side of the filters (the date range and caption length are applied in Python, exactly)."""
    where = ["r.deleted = 0", "r.was_cancelled = 0", "r.has_content = 1",
             "COALESCE(r.image_sha256, r.image_key) IS NOT NULL"]
    params: list = []
    if filters.projects:
        where.append(f"r.project_id IN ({', '.join('?' * len(filters.projects))})")
        params += [int(p) for p in filters.projects]
    if filters.annotators:
        ids = [int(a) for a in filters.annotators if str(a).strip().isdigit()]
        emails = [str(a).strip().lower() for a in filters.annotators if not str(a).strip().isdigit()]
        parts = []
        if ids:
            parts.append(f"r.completed_by IN ({', '.join('?' * len(ids))})")
            params += ids
        if emails:
            parts.append(f"LOWER(r.completed_by_email) IN ({', '.join('?' * len(emails))})")
            params += emails
        where.append("(" + " OR ".join(parts) + ")")
    if filters.model_versions:
        where.append(f"r.prefilled_by IN ({', '.join('?' * len(filters.model_versions))})")
        params += list(filters.model_versions)
    if filters.prefilled == "any":
        where.append("r.changed IS NOT NULL")
    elif filters.prefilled == "changed":
        where.append("r.changed = 1")
    elif filters.prefilled == "confirmed":
        where.append("r.changed = 0")
    elif filters.prefilled == "no":
        where.append("r.changed IS NULL")
    if filters.ground_truth_only:
        where.append("r.ground_truth = 1")
    return " AND ".join(where), params


@contextmanager
def _selection(store: Store, filters: ExportFilters, chunk_size: int) -> Iterator[tuple[dict, int, Iterator[dict]]]:
    """The filtered regions from one consistent read of the store (Store.read_regions), ordered by image."""
    where, params = _where(filters)
    with store.read_regions(where, params, [int(p) for p in filters.projects or []], chunk_size) as selection:
        yield selection


class _Collector:
    """One image's rows → its exported regions: the filters applied in Python (date range, caption length), rows
    without a pixel box skipped, identical regions merged (the first kept; relations of the others move to it),
    export ids given, and relations resolved to export ids (a relation to a region not exported is dropped)."""

    def __init__(self, store: Store, filters: ExportFilters, since: int | None, until: int | None, counts: dict):
        self.store, self.filters, self.since, self.until = store, filters, since, until
        self.skipped = counts["skipped"]
        self.counts = counts
        self.read = 0
        self.next_region = 0
        self.selection = hashlib.sha256()  # of (annotation id, region id, updated_at) of what is exported

    def _wanted(self, rec) -> bool:
        if self.since is not None or self.until is not None:
            stamp = parse_time_us(rec.updated_at) or parse_time_us(rec.created_at)
            if stamp is None or (self.since is not None and stamp < self.since) or \
                    (self.until is not None and stamp >= self.until):
                self.skipped["date_range"] += 1
                return False
        if self.filters.min_caption_length and \
                len((rec.caption or "").strip()) < self.filters.min_caption_length:
            self.skipped["caption_length"] += 1
            return False
        if rec.pixel_box is None:
            self.skipped["no_image_size"] += 1
            return False
        return True

    def image_regions(self, rows: Iterable[dict]) -> tuple[list[_Region], tuple | None]:
        """(regions, (record, row) of the first one: the image's size and file)."""
        regions: list[_Region] = []
        kept: dict[str, _Region] = {}
        alias: dict[tuple[int, str], int] = {}  # (annotation id, LS region id) → export id (twins included)
        first = None
        for row in rows:
            self.read += 1
            rec = self.store.record_from_row(row)
            if not self._wanted(rec):
                continue
            box = tuple(float(v) for v in rec.pixel_box)
            relations = [(rec.annotation_id, rel) for rel in rec.relations or []]
            dkey = _dedup_key(rec, box) if self.filters.dedup else None
            if dkey is not None and dkey in kept:
                twin = kept[dkey]
                alias[(rec.annotation_id, rec.region_id)] = twin.id
                twin.raw_relations += relations
                self.counts["duplicates"] += 1
                continue
            if first is None:
                first = (rec, row)
            self.next_region += 1
            reg = _Region(self.next_region, rec, box, relations)
            regions.append(reg)
            alias[(rec.annotation_id, rec.region_id)] = reg.id
            if dkey is not None:
                kept[dkey] = reg
            self.selection.update(f"{rec.annotation_id}\t{rec.region_id}\t{rec.updated_at or ''}\n".encode())
        for reg in regions:
            seen = set()
            for annotation_id, rel in reg.raw_relations:
                target = alias.get((annotation_id, str(rel.get("to"))))
                if target is None or target == reg.id:
                    continue  # the other region is not exported (filtered out, no content, deleted)
                for label in rel.get("labels") or [""]:
                    if (target, label) not in seen:
                        seen.add((target, label))
                        reg.relations.append((target, str(label), rel.get("direction")))
        return regions, first


def _groups(rows: Iterator[dict]) -> Iterator[tuple[str, Iterator[dict]]]:
    from itertools import groupby

    def key(row: dict) -> str:
        return row["image_sha256"] or f"ref-{row['image_key']}"

    return groupby(rows, key=key)


def split_of(key: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """The split of an image: a uniform number from sha256(seed:key) against the cumulative fractions. Stateless,
    so the same image lands in the same split for the same seed whatever else is exported."""
    u = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:13], 16) / float(16 ** 13)
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions):
        edge += fraction
        if u < edge:
            return name
    return next(name for name, fraction in reversed(list(zip(SPLITS, fractions))) if fraction > 0)
