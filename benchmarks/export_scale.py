"""Export time and memory at scale: N generated regions in a temporary SQLite store, exported with images referenced.

    .venv/bin/python benchmarks/export_scale.py [--regions 100000] [--per-image 10] [--formats conversations,coco]

Generation. Ingesting 100k webhook events would take minutes (one durable transaction each), so the store's own
schema is created by `Store.open` (its migrations) and the rows are bulk-inserted straight into its `regions`,
`images` and `projects` tables with one executemany per 5,000 rows (synchronous=OFF for the generator only): the
same columns and encodings `record_annotation` and `set_image` write (JSON labels/attributes/relations, pixel boxes
from percent boxes, image hashes). Regions carry captions (some unicode), a third a detailed caption, attributes,
every fifth a relation to its neighbour; half were pre-filled by a model version, some changed. Images are not
on disk (referenced export), as when the cache lives elsewhere.

Generation runs in a child process, so the export's process measures only the export. Prints JSON: seconds,
regions/s, peak RSS of the export process (ru_maxrss), RSS before the export and sampled as the regions stream
(at 10% steps of the regions read), the growth from the 10% mark to the end (flat memory: a few MB, whatever N),
and the bytes written per format.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from regionscribe.backend.store import REGION_COLUMNS, Store, image_key

WORDS = ["red", "blue", "green", "small", "large", "wooden", "metal", "cup", "chair", "table", "lamp", "dog", "cat",
         "window", "door", "tree", "car", "bicycle", "person", "bottle", "book", "plant", "café", "naïve", "über"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def generate(db: Path, regions: int, per_image: int, seed: int = 0) -> dict:
    """Bulk-insert `regions` region rows (per_image per image) into a new store at `db`."""
    rng = random.Random(seed)
    Store.open(f"sqlite:///{db}", images_dir=db.parent / "images").close()  # schema via the store's migrations
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    now = time.time()
    conn.execute("INSERT INTO projects (project_id, change_seq, created_at) VALUES (1, ?, ?)", (regions, now))
    insert = (f"INSERT INTO regions ({', '.join(REGION_COLUMNS)}) VALUES ({', '.join('?' * len(REGION_COLUMNS))})")
    rows, images, n = [], [], 0
    width, height = 1024, 768
    for i in range((regions + per_image - 1) // per_image):
        ref = f"/data/upload/1/image-{i:07d}.jpg"
        sha = hashlib.sha256(ref.encode()).hexdigest()
        images.append((image_key(ref), ref, sha, "jpg", width, height, 100_000, now, 1, now))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(1714564800 + i * 60))
        count = min(per_image, regions - n)
        for k in range(count):
            x, y = rng.uniform(0, 80), rng.uniform(0, 80)
            w, h = rng.uniform(2, 100 - x), rng.uniform(2, 100 - y)
            box = (x * width / 100, y * height / 100, (x + w) * width / 100, (y + h) * height / 100)
            caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
            detailed = (caption + ", " + " ".join(rng.choice(WORDS) for _ in range(12))) if k % 3 == 0 else None
            relations = [{"to": f"r{k + 1}", "labels": ["left of"], "direction": "right"}] \
                if k % 5 == 0 and k + 1 < count else []
            prefilled = "v1" if k % 2 else None
            changed = (k % 4 == 1) if prefilled else None
            rows.append((
                i + 1, f"r{k}", 1, i + 1, ref, image_key(ref), sha, width, height, width, height, x, y, w, h, 0.0,
                *box, json.dumps(["Object"]), caption, detailed, None,
                json.dumps({"color": [rng.choice(WORDS[:3])]}), json.dumps(relations), 1 + i % 5,
                f"annotator{1 + i % 5}@example.com", stamp, stamp, 3.0, prefilled,
                None if changed is None else int(changed), 1, hashlib.md5(f"{i}.{k}".encode()).hexdigest(), n + 1,
                0, None, 0, 0, now, "webhook", None))  # source; shape: None, a rectangle
            n += 1
        if len(rows) >= 5000:
            conn.execute("BEGIN")
            conn.executemany(insert, rows)
            conn.executemany("INSERT INTO images (image_key, image_ref, sha256, ext, width, height, bytes, "
                             "fetched_at, attempts, last_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", images)
            conn.execute("COMMIT")
            rows, images = [], []
    conn.execute("BEGIN")
    conn.executemany(insert, rows)
    conn.executemany("INSERT INTO images (image_key, image_ref, sha256, ext, width, height, bytes, fetched_at, "
                     "attempts, last_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", images)
    conn.execute("COMMIT")
    conn.close()
    return {"regions": n, "images": (regions + per_image - 1) // per_image}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regions", type=int, default=100_000)
    p.add_argument("--per-image", type=int, default=10)
    p.add_argument("--formats", default="conversations,coco")
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--generate", metavar="DB", help=argparse.SUPPRESS)  # the child: write the store and exit
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    args = p.parse_args()
    if args.generate:
        print(json.dumps(generate(Path(args.generate), args.regions, args.per_image)))
        return 0

    from regionscribe.backend.export import ExportOptions, export, parse_formats

    work = Path(tempfile.mkdtemp(prefix="regionscribe-export-bench-"))
    try:
        db = work / "store.sqlite3"
        started = time.perf_counter()
        child = subprocess.run([sys.executable, __file__, "--generate", str(db), "--regions", str(args.regions),
                                "--per-image", str(args.per_image)], capture_output=True, text=True, check=True)
        generated = json.loads(child.stdout.strip().splitlines()[-1])
        generate_seconds = time.perf_counter() - started

        store = Store.open(f"sqlite:///{db}", images_dir=work / "images")
        samples: dict[int, float] = {}
        step = max(args.regions // 10, 1)

        def sample(read: int) -> None:
            mark = (read // step) * step
            if mark and mark not in samples:
                samples[mark] = round(rss_mb(), 1)

        before = rss_mb()
        started = time.perf_counter()
        manifest = export(store, work / "out", ExportOptions(formats=parse_formats(args.formats),
                                                             chunk_size=args.chunk_size), callback=sample)
        seconds = time.perf_counter() - started
        store.close()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        sizes = {}
        for name, entry in json.loads((work / "out" / "manifest.json").read_text())["files"].items():
            top = name.split("/", 1)[0]
            sizes[top] = sizes.get(top, 0) + entry["bytes"]
        marks = sorted(samples)
        result = {
            "regions": generated["regions"], "images": generated["images"], "formats": list(manifest["formats"]),
            "store": "sqlite", "chunk_size": args.chunk_size, "generate_seconds": round(generate_seconds, 2),
            "export_seconds": round(seconds, 2), "regions_per_second": round(generated["regions"] / seconds),
            "exported_regions": manifest["counts"]["regions"], "peak_rss_mb": round(peak, 1),
            "rss_mb_before_export": round(before, 1), "rss_mb_at_regions_read": {str(k): samples[k] for k in marks},
            "rss_growth_mb_first_to_last_sample": round(samples[marks[-1]] - samples[marks[0]], 1) if marks else None,
            "output_bytes": sizes,
        }
        print(json.dumps(result, indent=2))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
