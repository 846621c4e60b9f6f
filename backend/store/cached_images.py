"""Store methods for the cached training images: where one is on disk, which ones live regions still need, and
recording a fetch (filling every region that uses the image) or a failed one.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from regionscribe.backend.store.database import _Cursorish
from regionscribe.backend.store.records import image_key, pixel_box


class ImagesMixin:
    """The image cache's rows (uses `Database._run` and `images_dir`)."""

    def image_path(self, sha256: str) -> Path | None:
        """The cached image with this content hash, if it is on disk."""
        if not sha256 or not all(c in "0123456789abcdef" for c in sha256):
            return None
        ext = self._run(lambda tx: tx.scalar("SELECT ext FROM images WHERE sha256 = ? AND ext IS NOT NULL LIMIT 1",
                                             (sha256,)), write=False)
        if ext:
            path = self.images_dir / f"{sha256}.{ext}"
            if path.is_file():
                return path
        found = sorted(self.images_dir.glob(f"{sha256}.*")) if self.images_dir.is_dir() else []
        found = [p for p in found if not p.name.endswith(".tmp")]
        return found[0] if found else None

    def missing_images(self, limit: int | None = None) -> list[tuple[str, int]]:
        """(image_ref, a task id) for every image that live trainable regions need and the cache lacks."""
        rows = self._run(lambda tx: tx.all(
            "SELECT image_key, MIN(image_ref) AS image_ref, MIN(task_id) AS task_id FROM regions WHERE image_sha256 "
            "IS NULL AND image_key IS NOT NULL AND deleted = 0 AND was_cancelled = 0 GROUP BY image_key "
            "ORDER BY image_key"
            + (f" LIMIT {int(limit)}" if limit else "")), write=False)
        return [(row["image_ref"], int(row["task_id"])) for row in rows]

    def cached_image(self, image_ref: str) -> dict | None:
        return self._run(lambda tx: tx.one("SELECT * FROM images WHERE image_key = ?", (image_key(image_ref),)),
                         write=False)

    def set_image(self, image_ref: str, sha256: str, ext: str, width: int, height: int, size: int) -> int:
        """The image behind `image_ref` is cached as <images_dir>/<sha256>.<ext>: fill every record that uses it
        (hash, decoded size, pixel box). Returns how many records were filled."""

        def write(tx: _Cursorish) -> int:
            now = time.time()
            tx.execute("INSERT INTO images (image_key, image_ref, sha256, ext, width, height, bytes, fetched_at, "
                       "attempts, last_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (image_key) DO "
                       "UPDATE SET "
                       "sha256 = excluded.sha256, ext = excluded.ext, width = excluded.width, "
                       "height = excluded.height, "
                       "bytes = excluded.bytes, fetched_at = excluded.fetched_at, attempts = images.attempts + 1, "
                       "last_error = NULL, last_attempt_at = excluded.last_attempt_at",
                       (image_key(image_ref), image_ref, sha256, ext, width, height, size, now, now))
            rows = tx.all("SELECT annotation_id, region_id, x, y, width, height, rotation, shape FROM regions "
                          "WHERE image_key = ?", (image_key(image_ref),))
            updates = []
            for row in rows:
                box = pixel_box(row["x"], row["y"], row["width"], row["height"], row["rotation"], width, height,
                                json.loads(row["shape"]) if row["shape"] else None) or (None, None, None, None)
                updates.append((sha256, width, height, *box, row["annotation_id"], row["region_id"]))
            tx.executemany("UPDATE regions SET image_sha256 = ?, image_width = ?, image_height = ?, px_x1 = ?, "
                           "px_y1 = ?, px_x2 = ?, px_y2 = ? WHERE annotation_id = ? AND region_id = ?", updates)
            return len(updates)

        return self._run(write)

    def image_failed(self, image_ref: str, error: str) -> None:
        def write(tx):
            now = time.time()
            tx.execute("INSERT INTO images (image_key, image_ref, attempts, last_error, last_attempt_at) "
                       "VALUES (?, ?, 1, ?, ?) ON CONFLICT (image_key) DO UPDATE SET attempts = images.attempts + 1, "
                       "last_error = excluded.last_error, last_attempt_at = excluded.last_attempt_at",
                       (image_key(image_ref), image_ref, error[:1000], now))

        self._run(write)
