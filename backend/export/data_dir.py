"""POST /export's side of the export: `export_to_data_dir` writes a named export under <DATA_DIR>/exports/<name> and
nowhere else."""
from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from regionscribe.backend.export.driver import export
from regionscribe.backend.export.errors import ExportError, ExportExists
from regionscribe.backend.export.options import options_from_mapping
from regionscribe.backend.store import Store

EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def export_to_data_dir(settings, data: dict, store: Store | None = None) -> dict:
    """POST /export: the options as a JSON object (see `options_from_mapping`), written under
    <DATA_DIR>/exports/<name> and nowhere else. `name` is optional (default: export-<UTC time>-<random>) and must be
    a plain folder name; an existing one is refused (ExportExists), never replaced. Returns what the route answers."""
    name = data.get("name")
    if name is None:
        name = f"export-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    if not isinstance(name, str) or not EXPORT_NAME.match(name) or ".." in name:
        raise ExportError(f"bad name {name!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    options = options_from_mapping(data)
    folder = Path(settings.data_dir) / "exports" / name
    if folder.exists():
        raise ExportExists(f"export {name!r} already exists: choose another name")
    manifest = export(store or Store.shared(settings), folder, options)
    return {"name": name, "folder": f"exports/{name}", "formats": manifest["formats"],
            "selection_id": manifest["selection_id"], "counts": manifest["counts"]}
