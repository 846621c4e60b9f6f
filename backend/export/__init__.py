"""Curated region-text datasets out of the feedback store, for training elsewhere (`regionscribe export`, POST /export).

    regionscribe export --format conversations,coco --out exports/v1 --project 3 --split 0.8,0.1,0.1 --seed 0

Formats (one sub-folder each; every format gets one file set per split: train, val, test):

    conversations/<split>.json   GPT4RoI/LLaVA conversations: one sample per image, `regionK <bbox>` placeholders,
                                 "boxes" normalised xyxy in [0, 1], "conversations": [{"from": "human"|"gpt", ...}];
                                 "segmentation" (when some region is not a box), one per box: null (a box),
                                 {"polygon": [[x, y], ...] normalised} (a polygon; an ellipse's outline) or
                                 {"rle": COCO RLE} (a brush mask); read back into regionscribe.model.conversation.Sample
                                 (boxes, turns, masks) by `reader.load_conversations`
    vg/<split>/                  Visual Genome: region_descriptions.json, image_data.json, and attributes.json /
                                 relationships.json when the exported regions have attributes / relations
    coco/<split>.json            COCO region captions (images, annotations with bbox [x, y, w, h] + caption,
                                 categories from the region labels; a polygon, ellipse or brush region adds
                                 `segmentation`: pixel polygons, or RLE via pycocotools for a brush mask, its `area`
                                 the mask's): pycocotools.coco.COCO and COCO.loadRes
    hf/data/<split>-00000-of-00001.parquet
                                 a Hugging Face `datasets` parquet dataset, one row per image, an `Image` column
                                 (embedded bytes with --images copy) and a list of regions (with `shape`, `polygon`
                                 pixel points, and a `mask` Image column: the region's 1-bit mask, null for boxes);
                                 `load_dataset("parquet")`
    images/                      with --images copy: the cached image files, <sha256>.<ext>
    manifest.json                counts, filters, split, store state and selection id, sha256 of every file

What is exported. The store holds annotations only: the region records built from Label Studio's annotation webhooks
(what an annotator submitted, possibly after accepting or editing a model suggestion). The model's raw predictions
live apart (the `suggestions` table) and are never exported. Deleted and cancelled (skipped) annotations and regions
without any text or attribute are left out, as for training. `changed` tells what the annotator did with a
pre-filled region (True: edited the suggestion, False: confirmed it, None: no suggestion, written from scratch).

Coordinates are pixels of the upright image (EXIF rotation applied, as PIL's ImageOps.exif_transpose gives it);
`width`/`height` are that image's size (Label Studio's original size while the image is not cached yet).

Streaming. Records are read in one read-only transaction (a consistent snapshot) through a server-side cursor on
PostgreSQL and a stepped statement on SQLite, ordered by image, `chunk_size` rows at a time; each image's regions
are turned into output and written at once (JSON arrays are written incrementally, parquet in row groups), so
memory does not grow with the dataset. Everything is written into a hidden folder beside `out` and renamed into
place at the end: a failed export leaves nothing behind (a killed process leaves its `.<out>.partial-*` folder).

Split. By image: sha256("<seed>:<image sha256>") as a uniform number against the cumulative fractions, so an image
never lands in two splits, the same seed gives the same split, and an image keeps its split whatever else is
exported (split sizes are therefore close to, not exactly, the fractions). An image not cached yet is keyed by its
reference until it is.

HTTP. POST /export takes the same options as JSON and writes under <DATA_DIR>/exports/<name> only (see
`export_to_data_dir`); the dataset never travels in the answer.

Modules (this package re-exports the public names importers use; the reader is `export.reader`):

    options.py        ExportFilters, ExportOptions, parse_formats, parse_split, validate, options_from_mapping
    errors.py         ExportError, ExportExists
    selection.py      the filters as SQL, one consistent read of the store, rows → regions (_Collector), split_of
    exported_regions.py  _Image, _Region, shapes as polygons / masks (COCO RLE, PNG), the duplicate key
    writer.py         _Writer (the interface every format implements) and _JsonArray
    formats.py        WRITERS: the table from format name to writer class; FORMATS
    conversations.py, visual_genome.py, coco.py, hf.py     one writer per format
    driver.py         export(): the streaming loop, the atomic rename, the manifest's head
    manifest.py       manifest.json written and verified
    reader.py         load_conversations (masks by regionscribe.model.masks)
    data_dir.py       export_to_data_dir (POST /export)
"""
from __future__ import annotations

from regionscribe.backend.export.conversations import conversation
from regionscribe.backend.export.data_dir import EXPORT_NAME, export_to_data_dir
from regionscribe.backend.export.driver import export
from regionscribe.backend.export.errors import ExportError, ExportExists
from regionscribe.backend.export.formats import FORMATS, WRITERS
from regionscribe.backend.export.manifest import MANIFEST_VERSION, verify_manifest
from regionscribe.backend.export.options import (
    IMAGE_MODES, PREFILLED, SPLITS, ExportFilters, ExportOptions, options_from_mapping, parse_formats, parse_split,
    validate,
)
from regionscribe.backend.export.selection import split_of

__all__ = [
    "EXPORT_NAME", "FORMATS", "IMAGE_MODES", "MANIFEST_VERSION", "PREFILLED", "SPLITS",
    "WRITERS", "ExportError", "ExportExists", "ExportFilters", "ExportOptions", "conversation",
    "export", "export_to_data_dir", "options_from_mapping", "parse_formats", "parse_split",
    "split_of", "validate", "verify_manifest",
]
