"""Builders shared by every test folder: real images written with PIL, Label Studio-shaped JWTs and a stand-in
checkpoint folder. Import them as `from tests.builders import ...`."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image


def png_bytes(size=(64, 48), color=(255, 0, 0), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def exif_rotated_jpeg(size=(80, 40), orientation=6, color=(0, 128, 0)) -> bytes:
    """A landscape JPEG whose EXIF says 'rotate 90° clockwise to display' (displayed size: portrait)."""
    image = Image.new("RGB", size, color)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def fake_jwt(claims: dict) -> str:
    """A JWT-shaped token (unsigned: the backend only reads its claims, Label Studio checks the signature)."""
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def fake_checkpoint(path: Path, version: str) -> Path:
    """A folder the model registry takes for a checkpoint (config.json naming its version, a weights file); it does
    not load as a model."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "regionscribe", "metadata": {"version": version}}))
    (path / "model.safetensors").write_bytes(b"x")
    return path
