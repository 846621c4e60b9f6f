"""The `hf` format: hf/data/<split>-00000-of-00001.parquet, a Hugging Face `datasets` parquet dataset (one row per
image, an Image column, a list of regions with shape, polygon and mask); pyarrow is imported when it is used."""
from __future__ import annotations

import json
from pathlib import Path

from regionscribe.backend.export.errors import ExportError
from regionscribe.backend.export.exported_regions import _Image, _mask_png, _Region
from regionscribe.backend.store.records import canonical_json
from regionscribe.backend.export.writer import _Writer


# Hugging Face features of the parquet dataset, and the matching Arrow types (built lazily: pyarrow is optional).
_HF_REGION = [("id", "int64"), ("annotation_id", "int64"), ("task_id", "int64"), ("project_id", "int64"),
              ("ls_region_id", "string"), ("bbox", ["float64"]), ("labels", ["string"]), ("caption", "string"),
              ("detailed_caption", "string"), ("relation_text", "string"), ("attributes", "string"),
              ("relations", [[("to", "int64"), ("label", "string"), ("direction", "string")]]),
              ("completed_by", "int64"), ("completed_by_email", "string"), ("updated_at", "string"),
              ("prefilled_by", "string"), ("changed", "bool"), ("ground_truth", "bool"),
              ("shape", "string"), ("polygon", [["float64"]]), ("mask", "Image")]
_HF_ROW = [("image", "Image"), ("image_id", "int64"), ("image_sha256", "string"), ("image_ref", "string"),
           ("width", "int64"), ("height", "int64"), ("regions", [_HF_REGION])]


def _hf_feature(spec) -> dict:
    if spec == "Image":
        return {"_type": "Image"}
    if isinstance(spec, str):
        return {"dtype": spec, "_type": "Value"}
    if isinstance(spec, list) and len(spec) == 1:  # a list of ...
        return {"feature": _hf_feature(spec[0]), "_type": "List"}
    return {name: _hf_feature(sub) for name, sub in spec}  # a struct


def _arrow_type(pa, spec):
    if spec == "Image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if isinstance(spec, str):
        return {"int64": pa.int64(), "string": pa.string(), "float64": pa.float64(), "bool": pa.bool_()}[spec]
    if isinstance(spec, list) and len(spec) == 1:
        return pa.list_(_arrow_type(pa, spec[0]))
    return pa.struct([(name, _arrow_type(pa, sub)) for name, sub in spec])


class _HuggingFace(_Writer):
    """Parquet files as `datasets` writes them (Arrow schema + the "huggingface" features metadata), one row per
    image, written in row groups of at most `rows` images or `max_bytes` of image data."""

    name = "hf"

    def __init__(self, root: Path, splits: list[str], embed: bool, rows: int = 64, max_bytes: int = 32 << 20):
        super().__init__(root, splits)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - depends on the install
            raise ExportError("the hf format needs pyarrow: pip install pyarrow") from None
        self.pa, self.pq = pa, pq
        features = {name: _hf_feature(spec) for name, spec in _HF_ROW}
        self.schema = pa.schema([(name, _arrow_type(pa, spec)) for name, spec in _HF_ROW],
                                metadata={"huggingface": json.dumps({"info": {"features": features}})})
        self.embed, self.rows, self.max_bytes = embed, rows, max_bytes
        self.writers = {}
        self.buffers: dict[str, list] = {s: [] for s in splits}
        self.buffered_bytes = {s: 0 for s in splits}
        for s in splits:
            path = root / "hf" / "data" / f"{s}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writers[s] = pq.ParquetWriter(str(path), self.schema)

    @classmethod
    def for_export(cls, root: Path, splits: list[str], copy: bool) -> _HuggingFace:
        return cls(root, splits, embed=copy)

    def add(self, image: _Image) -> None:
        data = image.path.read_bytes() if self.embed and image.path is not None else None
        regions = []
        for reg in image.regions:
            rec = reg.rec
            regions.append({
                "id": reg.id, "annotation_id": rec.annotation_id, "task_id": rec.task_id,
                "project_id": rec.project_id, "ls_region_id": rec.region_id, "bbox": reg.xywh,
                "labels": list(rec.labels), "caption": rec.caption, "detailed_caption": rec.detailed_caption,
                "relation_text": rec.relation_text, "attributes": canonical_json(rec.attributes),
                "relations": [{"to": t, "label": label, "direction": d} for t, label, d in reg.relations],
                "completed_by": rec.completed_by, "completed_by_email": rec.completed_by_email,
                "updated_at": rec.updated_at, "prefilled_by": rec.prefilled_by, "changed": rec.changed,
                "ground_truth": rec.ground_truth, **self._shape(reg, image)})
        self.buffers[image.split].append({
            "image": {"bytes": data, "path": image.file}, "image_id": image.id, "image_sha256": image.sha256,
            "image_ref": image.image_ref, "width": image.width, "height": image.height, "regions": regions})
        self.buffered_bytes[image.split] += len(data or b"")
        self.counts[image.split]["images"] += 1
        self.counts[image.split]["regions"] += len(regions)
        if len(self.buffers[image.split]) >= self.rows or self.buffered_bytes[image.split] >= self.max_bytes:
            self._flush(image.split)

    @staticmethod
    def _shape(reg: _Region, image: _Image) -> dict:
        """shape: the Label Studio shape kind (None: a rectangle); polygon: pixel [x, y] points of a polygon (an
        ellipse's outline); mask: the region's mask as a 1-bit PNG of the image's size (None for boxes)."""
        segment = reg.segment(image.width, image.height)
        kind = reg.rec.shape["kind"] if reg.rec.shape else None
        if segment is None:
            return {"shape": kind, "polygon": None, "mask": None}
        points = [[x, y] for x, y in segment[1]] if segment[0] == "polygon" else None
        return {"shape": kind, "polygon": points, "mask": {"bytes": _mask_png(segment[2]), "path": None}}

    def _flush(self, split: str) -> None:
        if self.buffers[split]:
            self.writers[split].write_table(self.pa.Table.from_pylist(self.buffers[split], schema=self.schema))
        self.buffers[split], self.buffered_bytes[split] = [], 0

    def close(self) -> dict:
        for split in self.splits:
            self._flush(split)
            self.writers[split].close()
        return self.counts

    def abort(self) -> None:
        for writer in self.writers.values():
            try:
                writer.close()
            except Exception:
                pass
