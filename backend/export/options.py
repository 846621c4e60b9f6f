"""What an export is asked for: ExportFilters and ExportOptions, the parsers of the CLI's format and split
arguments, `validate`, and `options_from_mapping` (the JSON object of POST /export)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from regionscribe.backend.export.errors import ExportError
from regionscribe.backend.export.formats import FORMATS
from regionscribe.backend.store import parse_time_us

SPLITS = ("train", "val", "test")
IMAGE_MODES = ("reference", "copy")
PREFILLED = ("any", "changed", "confirmed", "no")


@dataclass(frozen=True)
class ExportFilters:
    projects: tuple[int, ...] = ()  # project ids (any of them); empty: every project
    annotators: tuple[str, ...] = ()  # Label Studio user ids or e-mail addresses (any of them)
    model_versions: tuple[str, ...] = ()  # only regions pre-filled by one of these model versions
    prefilled: str | None = None  # "any": changed or confirmed; "changed"; "confirmed"; "no": written from scratch
    since: str | None = None  # the annotation's updated_at (else created_at) >= since (ISO 8601 date or time, UTC)
    until: str | None = None  # ... < until
    min_caption_length: int = 0  # characters of the stripped caption; > 0 drops regions without a caption
    ground_truth_only: bool = False
    dedup: bool = True  # drop identical regions: same image, same box rounded to whole pixels, same text


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = ("conversations",)
    images: str = "reference"  # "copy": files into images/; "reference": paths to the cache (or Label Studio refs)
    split: tuple[float, float, float] = (1.0, 0.0, 0.0)  # train, val, test fractions (by image)
    seed: int = 0
    filters: ExportFilters = field(default_factory=ExportFilters)
    overwrite: bool = False
    chunk_size: int = 1000


def parse_formats(value: str | Iterable[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in FORMATS:
            raise ExportError(f"unknown format {name!r}: choose from {', '.join(FORMATS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ExportError(f"no format given: choose from {', '.join(FORMATS)}")
    return tuple(out)


def parse_split(value: str | Iterable[float]) -> tuple[float, float, float]:
    """"0.8,0.1,0.1" (train, val, test; missing parts are 0) → fractions that sum to 1."""
    try:
        parts = [float(p) for p in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        raise ExportError(f"bad split {value!r}: write train,val,test fractions, e.g. 0.8,0.1,0.1") from None
    if not 1 <= len(parts) <= 3 or any(not math.isfinite(p) or p < 0 for p in parts) or sum(parts) <= 0:
        raise ExportError(f"bad split {value!r}: one to three non-negative fractions (train,val,test), not all 0")
    parts += [0.0] * (3 - len(parts))
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def _check_time(name: str, value: str | None) -> int | None:
    if value in (None, ""):
        return None
    us = parse_time_us(value) if isinstance(value, str) else None
    if us is None:
        raise ExportError(f"bad {name} {value!r}: use an ISO 8601 date or time, e.g. 2024-05-01 or "
                          f"2024-05-01T12:00:00Z")
    return us


def validate(options: ExportOptions) -> None:
    parse_formats(options.formats)
    if options.images not in IMAGE_MODES:
        raise ExportError(f"bad images mode {options.images!r}: choose from {', '.join(IMAGE_MODES)}")
    parse_split(options.split)
    f = options.filters
    if f.prefilled not in (None, *PREFILLED):
        raise ExportError(f"bad prefilled filter {f.prefilled!r}: choose from {', '.join(PREFILLED)}")
    if f.min_caption_length < 0:
        raise ExportError("min caption length must be >= 0")
    since, until = _check_time("since", f.since), _check_time("until", f.until)
    if since is not None and until is not None and since >= until:
        raise ExportError(f"empty date range: since {f.since} is not before until {f.until}")
    if options.chunk_size < 1:
        raise ExportError("chunk size must be >= 1")


def options_from_mapping(data: dict) -> ExportOptions:
    """ExportOptions from a JSON object (the HTTP route): keys as the CLI options with underscores. Unknown keys,
    wrong types and bad values raise ExportError."""
    known = {"format", "formats", "images", "split", "seed", "project", "projects", "annotator", "annotators",
             "model_version", "model_versions", "prefilled", "since", "until", "min_caption_length",
             "ground_truth_only", "keep_duplicates", "name"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ExportError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    def many(*keys: str) -> list:
        out: list = []
        for key in keys:
            value = data.get(key)
            if value is None:
                continue
            out += value if isinstance(value, list) else [value]
        return out

    def integer(value, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
            raise ExportError(f"{what} must be an integer, not {value!r}")
        return int(value)

    def flag(key: str) -> bool:
        value = data.get(key, False)
        if not isinstance(value, bool):
            raise ExportError(f"{key} must be true or false, not {value!r}")
        return value

    for key in ("since", "until", "prefilled", "images"):
        if data.get(key) is not None and not isinstance(data.get(key), str):
            raise ExportError(f"{key} must be a string, not {data.get(key)!r}")
    formats = many("format", "formats")
    if not formats:
        raise ExportError(f"'format' is missing: one of {', '.join(FORMATS)} (or a list)")
    filters = ExportFilters(
        projects=tuple(integer(p, "project") for p in many("project", "projects")),
        annotators=tuple(str(a) for a in many("annotator", "annotators")),
        model_versions=tuple(str(v) for v in many("model_version", "model_versions")),
        prefilled=data.get("prefilled"), since=data.get("since"), until=data.get("until"),
        min_caption_length=integer(data.get("min_caption_length", 0), "min_caption_length"),
        ground_truth_only=flag("ground_truth_only"), dedup=not flag("keep_duplicates"))
    options = ExportOptions(
        formats=parse_formats([str(f) for f in formats]), images=data.get("images") or "reference",
        split=parse_split(data["split"]) if data.get("split") is not None else (1.0, 0.0, 0.0),
        seed=integer(data.get("seed", 0), "seed"), filters=filters)
    validate(options)
    return options
