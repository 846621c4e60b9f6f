"""Bad input gives a clear error and leaves nothing behind: unknown format, bad options, empty selection, images
missing with --images copy, an existing folder, a failure half-way (an existing export survives it); and the CLI's
exit codes, output and progress bar."""
from __future__ import annotations

import json

import pytest

from regionscribe.backend import export as ex
from regionscribe.backend.ops.cli import main
from regionscribe.backend.export import ExportError, ExportFilters, ExportOptions, export, verify_manifest


def leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_the_export_speaks_the_models_prompts_without_importing_the_model():
    """The conversations export writes the model's own prompt strings (regionscribe.model.prompts, the one place they
    are defined), and exporting (POST /export runs in the web process) imports neither torch nor transformers."""
    import subprocess
    import sys

    from regionscribe.backend.export import conversations
    from regionscribe.model import prompts

    assert (conversations.IMAGE_PREFIX, conversations.BBOX) == (prompts.IMAGE_PREFIX, prompts.BBOX)
    code = ("import sys, regionscribe.backend.export; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("options, message", [
    (dict(formats=("yolo",)), "unknown format 'yolo'"),
    (dict(formats=()), "no format"),
    (dict(formats=("coco",), images="link"), "bad images mode"),
    (dict(formats=("coco",), split=(0.0, 0.0, 0.0)), "bad split"),
    (dict(formats=("coco",), filters=ExportFilters(prefilled="maybe")), "bad prefilled"),
    (dict(formats=("coco",), filters=ExportFilters(since="yesterday")), "bad since"),
    (dict(formats=("coco",), filters=ExportFilters(since="2024-05-02", until="2024-05-01")), "empty date range"),
    (dict(formats=("coco",), filters=ExportFilters(min_caption_length=-1)), "min caption length"),
])
def test_bad_options_are_refused_before_anything_is_written(sqlite_store, tmp_path, options, message):
    with pytest.raises(ExportError, match=message):
        export(sqlite_store, tmp_path / "out", ExportOptions(**options))
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_empty_selection(sqlite_store, tmp_path, lab):
    lab.fill(sqlite_store)
    with pytest.raises(ExportError, match="no region matches"):
        export(sqlite_store, tmp_path / "out", ExportOptions(formats=("coco", "hf"), filters=ExportFilters(
            projects=(999999999,))))
    with pytest.raises(ExportError, match=r"no region matches .*caption_length 7"):
        export(sqlite_store, tmp_path / "out", ExportOptions(formats=("vg",), filters=ExportFilters(
            min_caption_length=500)))
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_missing_images_with_copy(sqlite_store, tmp_path, lab):
    f = lab.fill(sqlite_store, cache=False)  # the ingest job never ran: nothing cached
    with pytest.raises(ExportError, match=r"4 image\(s\) .* not in the image cache .*--images reference"):
        export(sqlite_store, tmp_path / "out", ExportOptions(formats=("coco",), images="copy"))
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    # referencing works without the cache: boxes from Label Studio's original size, images by their reference
    export(sqlite_store, tmp_path / "out", ExportOptions(formats=("coco",)))
    coco = json.loads((tmp_path / "out" / "coco" / "train.json").read_text())
    assert sorted(i["file_name"] for i in coco["images"]) == sorted(f.images.values())


def test_cached_file_gone_from_disk(sqlite_store, tmp_path, lab):
    lab.fill(sqlite_store)
    victim = next(sqlite_store.images_dir.iterdir())
    victim.unlink()
    with pytest.raises(ExportError, match=r"1 image\(s\)"):
        export(sqlite_store, tmp_path / "out", ExportOptions(formats=("vg", "hf"), images="copy"))
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_existing_folder_and_a_failure_half_way(sqlite_store, tmp_path, lab, monkeypatch):
    lab.fill(sqlite_store)
    out = tmp_path / "out"
    export(sqlite_store, out, ExportOptions(formats=("coco",)))
    before = (out / "manifest.json").read_text()
    with pytest.raises(ExportError, match="exists and is not empty"):
        export(sqlite_store, out, ExportOptions(formats=("vg",)))
    calls = []

    def broken(self, image):
        calls.append(image.id)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ex.WRITERS["vg"], "add", broken)
    with pytest.raises(OSError, match="No space left"):
        export(sqlite_store, out, ExportOptions(formats=("conversations", "vg", "hf"), overwrite=True))
    assert (out / "manifest.json").read_text() == before and verify_manifest(out) == []  # the old one survives
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    export(sqlite_store, out, ExportOptions(formats=("vg",), overwrite=True))
    assert (out / "vg").is_dir() and not (out / "coco").exists() and leftovers(tmp_path) == []


def test_cli(sqlite_store, tmp_path, lab, capsys):
    lab.fill(sqlite_store)
    url = sqlite_store.url
    out = tmp_path / "cli"
    code = main(["export", "--format", "coco,vg", "--format", "conversations", "--out", str(out), "--store", url,
                 "--split", "0.5,0.5", "--seed", "3", "--prefilled", "any", "--min-caption-length", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["counts"]["regions"] == 2 and summary["counts"]["formats"]["coco"].keys() == {"train", "val"}
    assert "region" in captured.err  # the progress bar
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["formats"] == ["coco", "vg", "conversations"] and verify_manifest(out) == []
    assert manifest["filters"]["prefilled"] == "any" and manifest["split"]["seed"] == 3

    code = main(["export", "--format", "yolo", "--out", str(tmp_path / "bad"), "--store", url, "--quiet"])
    assert code == 2 and "unknown format 'yolo'" in capsys.readouterr().err
    code = main(["export", "--format", "hf", "--out", str(tmp_path / "bad"), "--store", url, "--quiet",
                 "--project", "999999999"])
    assert code == 2 and "no region matches" in capsys.readouterr().err
    code = main(["export", "--format", "hf", "--out", str(tmp_path / "bad"), "--store", url, "--quiet",
                 "--images", "copy", "--since", "2030-01-01"])
    assert code == 2 and "no region matches" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and leftovers(tmp_path) == []
