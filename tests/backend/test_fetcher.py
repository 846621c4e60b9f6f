"""The image fetcher's rules: SSRF, redirects, path traversal, size limits, tokens, decoding."""
from __future__ import annotations

import base64

import pytest

from regionscribe.backend.labelstudio.fetcher import (
    FetchError, ForbiddenSource, ImageFetcher, fetch_image, is_public_address,
)
from regionscribe.backend.core.settings import Settings
from regionscribe.model.errors import ImageError


def fetcher(**changes) -> ImageFetcher:
    return ImageFetcher(Settings(fetch_timeout=5.0).replace(**changes))


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("255.255.255.255", False), ("::1", False), ("fe80::1", False), ("fd00::1", False), ("fc00::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False), ("::", False),
])
def test_public_address_classification(address, public):
    assert is_public_address(address) is public


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/img.png",  # loopback
    "http://localhost:{port}/img.png",  # a DNS name resolving to loopback
    "http://[::1]:{port}/img.png",  # IPv6 loopback
    "http://169.254.169.254/latest/meta-data/",  # link-local (cloud metadata)
    "http://10.0.0.1/x.png", "http://192.168.0.1/x.png", "http://100.64.0.1/x.png",  # private, CGNAT
    "http://[fd00::1]/x.png", "http://[fe80::1]/x.png", "http://[::ffff:127.0.0.1]:{port}/img.png",
    "http://0.0.0.0:{port}/img.png",
])
def test_wildcard_hosts_must_resolve_to_public_addresses(http_host, url):
    port = http_host.server_address[1]
    with pytest.raises(ForbiddenSource, match="non-public"):
        fetcher(allowed_hosts=("*",)).fetch(url.format(port=port))


def test_hosts_not_allow_listed_are_refused_before_any_connection():
    with pytest.raises(ForbiddenSource, match="ALLOWED_HOSTS"):
        fetcher().fetch("http://images.example.com/a.png")
    with pytest.raises(ForbiddenSource, match="scheme"):
        fetcher(allowed_hosts=("*",)).fetch("ftp://images.example.com/a.png")
    with pytest.raises(ForbiddenSource, match="credentials"):
        fetcher(allowed_hosts=("*",)).fetch("http://user:pw@images.example.com/a.png")


def test_an_exactly_named_host_is_trusted(http_host, h):
    data = fetcher(allowed_hosts=(http_host.hostport,)).fetch(f"{http_host.url}/img.png")
    assert data == h.scene_png()


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png", "http://[::1]:{port}/img.png",
    "http://localhost:{port}/img.png",
])
def test_redirects_to_private_addresses_are_refused(http_host, target):
    port = http_host.server_address[1]
    url = f"{http_host.url}/redirect?to={target.format(port=port)}"
    # the redirecting host is named exactly (trusted); the target only matches the wildcard, so it must be public
    with pytest.raises(ForbiddenSource):
        fetcher(allowed_hosts=(http_host.hostport, "*")).fetch(url)
    # and with no wildcard the target is simply not allowed
    with pytest.raises(ForbiddenSource):
        fetcher(allowed_hosts=(http_host.hostport,)).fetch(url)


def test_redirects_are_followed_when_every_hop_is_allowed_and_bounded(http_host, h):
    f = fetcher(allowed_hosts=(http_host.hostport,))
    assert f.fetch(f"{http_host.url}/redirect?to=/img.png") == h.scene_png()
    with pytest.raises(FetchError, match="too many redirects"):
        f.fetch(f"{http_host.url}/loop")


def test_label_studio_urls_get_the_legacy_token_and_only_label_studio_gets_it(http_host, h):
    f = fetcher(label_studio_url=http_host.url, label_studio_api_key=h.LEGACY_TOKEN)
    assert f.fetch("/data/upload/1/red.png") == h.png_bytes()
    assert http_host.seen[-1][1].get("Authorization") == f"Token {h.LEGACY_TOKEN}"
    # Label Studio redirecting elsewhere: the next hop must be allowed, and it never sees the token
    other = f"http://localhost:{http_host.server_address[1]}/no-auth-check.png"
    with pytest.raises(ForbiddenSource):
        f.fetch(f"/data/upload/1/redirect-out.png?to={other}")
    f2 = fetcher(label_studio_url=http_host.url, label_studio_api_key=h.LEGACY_TOKEN,
                 allowed_hosts=(f"localhost:{http_host.server_address[1]}",))
    assert f2.fetch(f"/data/upload/1/redirect-out.png?to={other}") == h.png_bytes()
    assert http_host.seen[-1][0] == "/no-auth-check.png"
    assert "Authorization" not in http_host.seen[-1][1]


def test_personal_access_tokens_are_exchanged_for_a_bearer_access_token(http_host, h):
    f = fetcher(label_studio_url=http_host.url, label_studio_api_key=h.PAT)
    assert f.fetch("/data/upload/1/red.png") == h.png_bytes()
    paths = [p for p, _ in http_host.seen[-2:]]
    assert paths == ["/api/token/refresh/", "/data/upload/1/red.png"]
    assert http_host.seen[-1][1]["Authorization"] == f"Bearer {h.ACCESS}"
    with pytest.raises(FetchError, match="refused the personal access token"):
        fetcher(label_studio_url=http_host.url,
                label_studio_api_key=h.fake_jwt({"token_type": "refresh", "exp": 1})).fetch("/data/upload/1/red.png")


def test_label_studio_errors_are_clear(http_host):
    with pytest.raises(FetchError, match="LABEL_STUDIO_URL"):
        fetcher().fetch("/data/upload/1/red.png")
    with pytest.raises(FetchError, match="LABEL_STUDIO_API_KEY"):
        fetcher(label_studio_url=http_host.url, label_studio_api_key="wrong").fetch("/data/upload/1/red.png")


def test_local_files_only_under_the_root(image_root, h):
    f = fetcher(image_root=str(image_root))
    assert f.fetch("red.png") == h.png_bytes()
    assert f.fetch(str(image_root / "sub" / "blue.png")) == h.png_bytes(color=(0, 0, 255))
    assert f.fetch(f"file://{image_root}/red.png") == h.png_bytes()
    assert f.fetch("inside-link.png") == h.png_bytes()  # a symlink that stays inside is fine
    assert f.fetch("/data/local-files/?d=sub/blue.png") == h.png_bytes(color=(0, 0, 255))
    for escape in ("../outside/secret.png", "sub/../../secret.png", f"{image_root}/../x.png"):
        with pytest.raises(ForbiddenSource, match=r"'\.\.'"):
            f.fetch(escape)
    with pytest.raises(ForbiddenSource, match="outside IMAGE_ROOT"):
        f.fetch("escape.png")  # a symlink pointing out of the root
    with pytest.raises(ForbiddenSource, match="outside IMAGE_ROOT"):
        f.fetch("/etc/hostname")
    with pytest.raises(FileNotFoundError):
        f.fetch("missing.png")
    with pytest.raises(ForbiddenSource, match="IMAGE_ROOT"):
        fetcher().fetch("red.png")


def test_size_limits_hold_for_files_and_downloads(http_host, image_root):
    small = dict(max_image_bytes=1000, allowed_hosts=(http_host.hostport,), image_root=str(image_root))
    with pytest.raises(FetchError, match="MAX_IMAGE_BYTES"):
        fetcher(**small).fetch(f"{http_host.url}/big.png")  # Content-Length says so
    with pytest.raises(FetchError, match="MAX_IMAGE_BYTES"):
        fetcher(**small).fetch(f"{http_host.url}/big-chunked.png")  # no Content-Length: counted while streaming
    with pytest.raises(FetchError, match="MAX_IMAGE_BYTES"):
        fetcher(**{**small, "max_image_bytes": 100}).fetch("scene.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_non_images_and_bombs_are_refused(http_host, image_root):
    f = fetcher(allowed_hosts=(http_host.hostport,), image_root=str(image_root))
    with pytest.raises(FetchError, match="not an image"):
        f.fetch(f"{http_host.url}/html")
    with pytest.raises(ImageError, match="not a readable image"):
        fetch_image(f, "not-an-image.png")
    with pytest.raises(ImageError, match="too large|bomb"):
        fetch_image(f, f"{http_host.url}/bomb.png", max_pixels=64_000_000)


@pytest.mark.parametrize("name, size", [("scene.png", (96, 64)), ("rotated.jpg", (40, 80)), ("gray.png", (64, 48)),
                                        ("rgba.png", (64, 48))])
def test_decoded_images_are_rgb_and_exif_rotated(image_root, name, size):
    image = fetch_image(fetcher(image_root=str(image_root)), name)
    assert image.mode == "RGB" and image.size == size


def test_data_uris(h):
    data = h.png_bytes()
    assert fetcher().fetch("data:image/png;base64," + base64.b64encode(data).decode()) == data


def test_the_connected_address_is_checked_again(http_host, monkeypatch):
    """DNS rebinding: even when the pre-connection check passes, a connection that lands on a non-public address is
    closed before any request is sent."""
    import regionscribe.backend.labelstudio.fetcher as images

    monkeypatch.setattr(images, "check_public_host", lambda host, port: None)  # pretend DNS said "public"
    before = len(http_host.seen)
    with pytest.raises(ForbiddenSource, match="connected to the non-public address 127.0.0.1"):
        fetcher(allowed_hosts=("*",)).fetch(f"{http_host.url}/img.png")
    assert len(http_host.seen) == before  # no request reached the server
