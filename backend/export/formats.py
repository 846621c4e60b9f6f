"""The export formats, in one place: a table from format name to writer class (one module per format, each behind
regionscribe.backend.export.writer._Writer), in the order `--format` lists them."""
from __future__ import annotations

from regionscribe.backend.export.coco import _Coco
from regionscribe.backend.export.conversations import _Conversations
from regionscribe.backend.export.hf import _HuggingFace
from regionscribe.backend.export.visual_genome import _VisualGenome
from regionscribe.backend.export.writer import _Writer

WRITERS: dict[str, type[_Writer]] = {
    "conversations": _Conversations,
    "vg": _VisualGenome,
    "coco": _Coco,
    "hf": _HuggingFace,
}
FORMATS = tuple(WRITERS)  # ("conversations", "vg", "coco", "hf")
