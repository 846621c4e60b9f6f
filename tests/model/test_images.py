import io

import numpy as np
import pytest
from PIL import Image

from regionscribe.model.asks import Asks
from regionscribe.model.errors import BoxError, ImageError
from regionscribe.model.images import check_boxes, load_image


def _bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (60, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    loaded = load_image(_bytes(img, "JPEG", exif=exif))
    assert loaded.size == (20, 60)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "I", "F", "1", "CMYK"])
def test_modes_become_rgb(mode):
    base = Image.new("RGB", (16, 12), (10, 200, 30))
    if mode == "I;16":
        img = Image.fromarray((np.arange(16 * 12).reshape(12, 16) * 300).astype(np.uint16))
        assert img.mode == "I;16"
    elif mode == "F":
        img = Image.fromarray(np.linspace(0, 5, 16 * 12, dtype=np.float32).reshape(12, 16), "F")
    else:
        img = base.convert(mode)
    fmt = "TIFF" if mode in ("I", "F", "CMYK") else "PNG"
    out = load_image(_bytes(img, fmt))
    assert out.mode == "RGB" and out.size == (16, 12)
    if mode == "I;16":  # 16-bit is scaled to the full 8-bit range, not clipped to white
        arr = np.asarray(out)[..., 0]
        assert arr.min() == 0 and arr.max() == 255


def test_transparent_pixels_composite_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(_bytes(img)).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("data,match", [(b"", "empty"), (b"not an image at all", "not a readable image"),
                                        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not a readable image")])
def test_junk_is_a_clear_error(data, match):
    with pytest.raises(ImageError, match=match):
        load_image(data)


def test_truncated_image_is_a_clear_error():
    data = _bytes(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageError):
        load_image(data[: len(data) // 2])


def test_huge_image_refused_before_decoding():
    data = _bytes(Image.new("L", (5000, 5000)))
    with pytest.raises(ImageError, match="too large"):
        load_image(data, max_pixels=20_000_000)


@pytest.mark.parametrize("boxes,match", [
    ([], "no boxes"),
    ([(10, 10, 5, 20)], "inverted or has zero size"),
    ([(10, 10, 10, 20)], "inverted or has zero size"),
    ([(0, 0, 5, 5), (200, 200, 300, 300)], "box 1 lies outside"),
    ([(0, 0, float("nan"), 5)], "non-finite"),
    ([(0, 0, 5)], "not four numbers"),
])
def test_bad_boxes(boxes, match):
    with pytest.raises(BoxError, match=match):
        check_boxes(boxes, 100, 80)


def test_boxes_partly_outside_are_clipped():
    assert check_boxes([(-10, -5, 50, 500)], 100, 80) == [(0.0, 0.0, 50.0, 80.0)]


@pytest.mark.parametrize("size", [(1, 1), (3, 900), (4000, 3000)])
def test_tiny_and_large_images_are_described(untrained, size):
    from regionscribe.model.describer import RegionDescriber

    d = RegionDescriber(untrained, "test")
    w, h = size
    out = d.describe(Image.new("RGB", size, (120, 30, 30)), [(0, 0, w, h)], Asks(max_new_tokens=3))
    assert len(out.regions) == 1 and 0 <= out.regions[0].confidence <= 1


def test_describer_rejects_bad_boxes_before_model_work(untrained):
    from regionscribe.model.describer import RegionDescriber

    d = RegionDescriber(untrained, "test")
    with pytest.raises(BoxError):
        d.describe(Image.new("RGB", (10, 10)), [(5, 5, 1, 1)], Asks())
    assert d.cache_info()["misses"] == 0
