"""The export's errors: ExportError (bad options, empty selection, missing images) and ExportExists (the target
folder is already there)."""
from __future__ import annotations


class ExportError(ValueError):
    """The export cannot be made as asked (bad option, empty selection, missing images); nothing was written."""


class ExportExists(ExportError):
    """The named export already exists (HTTP 409)."""
