"""`Store`, the facade over the feedback store: the database adapter and one mixin per group of methods, combined,
with opening (and migrating) a store, the per-process shared handle, and the context-manager protocol.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from regionscribe.backend.core.settings import redacted_url
from regionscribe.backend.store.annotations import AnnotationsMixin
from regionscribe.backend.store.database import Database, default_url
from regionscribe.backend.store.cached_images import ImagesMixin
from regionscribe.backend.store.demonstrations import DemonstrationsMixin
from regionscribe.backend.store.projects import ProjectsMixin
from regionscribe.backend.store.regions import RegionsMixin
from regionscribe.backend.store.schema import MigrationsMixin
from regionscribe.backend.store.suggestions import SuggestionsMixin
from regionscribe.backend.store.training_runs import TrainingRunsMixin


class Store(MigrationsMixin, AnnotationsMixin, SuggestionsMixin, ProjectsMixin, RegionsMixin, TrainingRunsMixin,
            ImagesMixin, DemonstrationsMixin, Database):
    """A handle on the store: thread-safe (a small pool of connections, one per concurrent transaction) and
    fork-aware (a child process opens its own connections)."""

    _shared: dict[tuple[int, str, str], "Store"] = {}
    _shared_lock = threading.Lock()

    def __init__(self, url: str, images_dir: str | Path | None = None):
        super().__init__(url)
        if images_dir is None:
            from regionscribe.backend.core.settings import get_settings

            images_dir = Path(get_settings().data_dir) / "images"
        self.images_dir = Path(images_dir)  # cached training images: <images_dir>/<sha256>.<ext>

    # ------------------------------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, url: str | None = None, images_dir: str | Path | None = None) -> "Store":
        """Open (and migrate) the store at `url`; defaults from the settings: STORE_URL / DATABASE_URL, else
        sqlite:///<DATA_DIR>/store.sqlite3; images under <DATA_DIR>/images."""
        if url is None:
            from regionscribe.backend.core.settings import get_settings

            url = default_url(get_settings())
        store = cls(url, images_dir)
        store.migrate()
        return store

    @classmethod
    def shared(cls, settings) -> "Store":
        """This process's store for `settings` (opened once per process and URL; safe after fork)."""
        url = default_url(settings)
        images = str(Path(settings.data_dir) / "images")
        key = (os.getpid(), url, images)
        with cls._shared_lock:
            store = cls._shared.get(key)
            if store is None or store._closed:
                store = cls.open(url, images)
                cls._shared[key] = store
            return store

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({redacted_url(self.url)!r})"
