"""A curated export trains the next model directly: each export format read back by regionscribe.training.datasets (the readers
`regionscribe train --data export-<format>:DIR` uses) gives the exported regions' captions and boxes, as
GPT4RoI-format conversations, on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest

from regionscribe.backend.export import ExportOptions, export
from regionscribe.backend.export.reader import load_conversations
from regionscribe.model.conversation import IMAGE_PREFIX
from regionscribe.training.datasets import Source
from regionscribe.model.prompts import BBOX


@pytest.fixture
def exported(any_store, tmp_path, lab):
    lab.fill(any_store)
    out = tmp_path / "out"
    export(any_store, out, ExportOptions(formats=("conversations", "vg", "coco", "hf"), images="copy"))
    want = {r.caption: r.pixel_box for r in any_store.records()
            if not r.was_cancelled and r.region_id != "s1" and r.caption}
    return out, want


@pytest.mark.parametrize("fmt", ["vg", "coco", "hf"])
def test_each_export_format_reads_back_as_region_captions(exported, fmt):
    out, want = exported
    src = Source.parse(f"export-{fmt}:{out}")
    got = {}
    for record in src.records():
        for reg in record.regions:
            if reg.caption:
                got[reg.caption] = reg.box
    assert set(got) == set(want), src.report
    for caption, box in got.items():
        assert all(abs(a - b) <= 1.0 for a, b in zip(box, want[caption])), (caption, box, want[caption])
    samples = list(Source.parse(f"export-{fmt}:{out}").samples(stage=2))
    assert samples and all(s.turns[0].question.startswith(IMAGE_PREFIX) for s in samples)
    assert all(sum(t.question.count(BBOX) for t in s.turns) == len(s.boxes) for s in samples)
    assert {t.answer for s in samples for t in s.turns if t.kind == "caption"} == set(want)


def test_hf_export_keeps_attributes_and_relations(exported):
    out, _ = exported
    records = list(Source.parse(f"export-hf:{out}").records())
    attributes = {a for r in records for reg in r.regions for a in reg.attributes}
    assert {"red", "green"} <= attributes
    relations = [(reg, r.regions[j], label) for r in records for reg in r.regions for j, label in reg.relations]
    assert len(relations) == 1 and relations[0][2] == "left of"


def test_conversations_export_reads_back_as_written(exported):
    out, _ = exported
    src = Source.parse(f"export-conversations:{out}")
    samples = list(src.samples(stage=2))
    reference = load_conversations(out / "conversations" / "train.json")
    assert [[(t.question, t.answer, t.kind) for t in s.turns] for s in samples] == \
           [[(t.question, t.answer, t.kind) for t in s.turns] for s in reference]
    assert [s.boxes for s in samples] == [s.boxes for s in reference]
    assert src.report.images == len(reference)
