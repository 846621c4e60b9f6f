"""What the feedback loop produced, for people: `regionscribe versions` (the registry's versions with their metrics)
and `regionscribe report` (an HTML page with the metrics across versions, the edit rate per model version, and per
project how many live regions arrived only through a sync with Label Studio: a rising count means the webhook path is
broken).
"""
from __future__ import annotations

import base64
import html
import io
import json
import time

from regionscribe.backend.core.settings import Settings, get_settings


def version_rows(settings: Settings | None = None) -> list[dict]:
    """Every published version, oldest first, plus the base when nothing was promoted yet."""
    from regionscribe.model.checkpoints import DEFAULT_CHECKPOINT
    from regionscribe.backend.core.registry import Registry

    settings = settings or get_settings()
    registry = Registry(settings.registry_path, base=settings.model_dir or DEFAULT_CHECKPOINT)
    current = registry.current()
    rows = []
    for v in registry.versions():
        scores = v.manifest.get("scores", {})
        cand = scores.get("candidate", {})
        rows.append({
            "version": v.version, "status": v.status, "current": v.version == current.version,
            "parent": v.manifest.get("parent"), "project": v.manifest.get("project"),
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.manifest.get("created", 0))),
            "regions": v.manifest.get("regions"), "base_score": cand.get("base_score"),
            "heldout_score": cand.get("heldout_score"), "base_drop": v.manifest.get("base_drop"),
            "train_seconds": v.manifest.get("train_seconds"), "failed": gate_failures(v.manifest),
        })
    if not any(r["current"] for r in rows):
        rows.insert(0, {"version": current.version, "status": "base", "current": True, "parent": None,
                        "project": None, "created": "", "regions": None, "base_score": None, "heldout_score": None,
                        "base_drop": None, "train_seconds": None, "failed": None})
    return rows


def gate_failures(manifest: dict) -> str | None:
    """The metrics that made the promotion gate refuse a version (regionscribe.backend.feedback.promotion), e.g.
    "attribute:texture -9.40 (tolerance 2)"; None for an accepted version or one published before the gate recorded
    them."""
    gate = manifest.get("gate") or {}
    failed = [c for c in gate.get("checks") or [] if not c.get("passed")]
    if not failed:
        return None
    return ", ".join(f"{c['metric']} {-c['drop']:+.2f} (tolerance {c['tolerance']:g})" if c.get("drop") is not None
                     else f"{c['metric']} not scored" for c in failed)


def format_table(rows: list[dict]) -> str:
    cols = ["version", "status", "current", "parent", "regions", "base_score", "heldout_score", "base_drop", "created",
            "failed"]
    cells = [[("*" if r[c] else "") if c == "current" else ("" if r[c] is None else str(r[c])) for c in cols]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _plot(rows: list[dict], edit: dict) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    scored = [r for r in rows if r["base_score"] is not None]
    names = [r["version"] for r in scored]
    a.plot(names, [r["base_score"] for r in scored], "o-", label="base test split (old skills)")
    a.plot(names, [r["heldout_score"] if r["heldout_score"] is not None else float("nan") for r in scored], "s-",
           label="held-out corrections")
    a.set_ylabel("score (%)")
    a.set_title("metrics across versions")
    a.tick_params(axis="x", rotation=30, labelsize=7)
    a.legend(fontsize=8)
    versions = sorted(edit)
    b.bar(versions, [100 * edit[v]["rate"] for v in versions])
    b.set_ylabel("regions changed by annotators (%)")
    b.set_title("edit rate per model version")
    b.tick_params(axis="x", rotation=30, labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(path: str, settings: Settings | None = None) -> dict:
    """An HTML page (plot embedded, no external assets) with the versions table and the edit rate per version."""
    from regionscribe.backend.store import Store

    settings = settings or get_settings()
    rows = version_rows(settings)
    store = Store.shared(settings)
    edit = {str(k): v for k, v in store.edit_rate().items()}
    sources = store.regions_by_source()
    png = _plot(rows, edit)
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if r[c] is None else str(r[c]))}</td>" for c in
                         ("version", "status", "current", "parent", "regions", "base_score", "heldout_score",
                          "base_drop", "created", "failed")) + "</tr>" for r in rows)
    edits = "".join(f"<tr><td>{html.escape(v)}</td><td>{e['regions']}</td><td>{e['changed']}</td>"
                    f"<td>{100 * e['rate']:.1f}%</td></tr>" for v, e in sorted(edit.items()))
    arrivals = "".join(f"<tr><td>{p}</td><td>{c['regions']}</td><td>{c['webhook']}</td><td>{c['sync']}</td>"
                       f"<td>{100 * c['sync'] / c['regions'] if c['regions'] else 0:.1f}%</td></tr>"
                       for p, c in sorted(sources.items()))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>regionscribe report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:3px 8px;font-size:13px}}</style></head><body>
<h1>regionscribe: model versions</h1>
<p>Generated {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}. Base score: mean attribute and relation accuracy on the
synthetic base test split; held-out score: attribute accuracy and caption exact match on held-out corrections. The
promotion gate checks each attribute, each relation axis and the caption CIDEr-D on its own; a refused version names
the metrics that failed.</p>
<img alt="metrics across versions and edit rate" src="data:image/png;base64,{png}">
<h2>Versions</h2><table><tr><th>version</th><th>status</th><th>current</th><th>parent</th><th>regions</th>
<th>base score</th><th>held-out score</th><th>base drop</th><th>created</th><th>refused by (promotion gate)</th></tr>
{table}</table>
<h2>Edit rate per model version</h2><table><tr><th>model version</th><th>pre-filled regions</th><th>changed</th>
<th>edit rate</th></tr>{edits}</table>
<h2>How the annotations arrived</h2><p>Live regions per project by the path that delivered their current content: Label
Studio's webhook, or only the sync with Label Studio's API (regionscribe sync; the ingest worker every SYNC_INTERVAL
seconds). Regions only the sync brought are events the webhook lost: a rising count means the webhook path is broken
(regionscribe doctor says why).</p><table><tr><th>project</th><th>live regions</th><th>via webhook</th>
<th>only via sync</th><th>only via sync (share)</th></tr>{arrivals}</table></body></html>
"""
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return {"path": path, "versions": len(rows), "edit_rate": edit, "regions_by_source": sources}


def versions_json(settings: Settings | None = None) -> str:
    return json.dumps(version_rows(settings), indent=2)
