"""benchmarks/export_scale.py runs end to end at a small size (its generator writes the store's real schema)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_export_scale_benchmark_smoke():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "export_scale.py"), "--regions", "600",
                          "--per-image", "7", "--formats", "conversations,coco,vg,hf", "--chunk-size", "50"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["regions"] == result["exported_regions"] == 600 and result["images"] == 86
    assert result["regions_per_second"] > 0 and result["peak_rss_mb"] > 0
    assert len(result["rss_mb_at_regions_read"]) == 10
    assert set(result["output_bytes"]) == {"conversations", "coco", "vg", "hf"}
