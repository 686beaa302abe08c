"""The API docs work air-gapped: /docs (Swagger UI) loads every script and style from the
server itself (fastapi-offline's package data), and a headless Chromium that can reach nothing
but loopback renders the v2 and v1 operations, as a person would see them.

The Chromium checks need Debian's ``chromium`` (``.ci/run`` installs it) and skip without it.
Chromium runs with every name unresolvable and a proxy that refuses connections (loopback
bypasses it), and writes a net log: each request the page itself made is in it, with the
page's origin as initiator, so a load from off the server fails the test even where the page
would have rendered without it (Chromium's own background requests have no initiator).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import subprocess
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numba
import numpy as np
import pytest
from service_helpers import InThread, in_thread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (.ci/run installs Debian's): the headless "
                             "/docs screenshot check is skipped")

V2_INFER = "/v2/models/{name}/infer"
V1_NORMALIZE = "/v1/normalize"
# Swagger UI's method badges (swagger-ui.css): these exact colours on screen mean its styles
# loaded and the operations were drawn.
GET_BLUE = (0x61, 0xAF, 0xFE)
POST_GREEN = (0x49, 0xCC, 0x90)
EXTERNAL = re.compile(r"(?:https?:)?//", re.IGNORECASE)
ASSET = "/static-offline-docs/"


@pytest.fixture(scope="module")
def server() -> Iterator[InThread]:
    """The app served on a loopback socket from a thread of this process (Chromium needs a
    URL)."""
    with in_thread() as srv:
        yield srv


class _Refs(HTMLParser):
    """The URLs a page loads or links to: ``(tag, attribute, url, rel)``."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for attr in ("src", "href", "action", "poster", "data"):
            if a.get(attr):
                self.refs.append((tag, attr, a[attr], a.get("rel", "")))


def _refs(html: str) -> list[tuple[str, str, str, str]]:
    parser = _Refs()
    parser.feed(html)
    return parser.refs


# The pages the app serves for people, and what each must load from the server itself.
PAGES = {"/docs": {"script", "stylesheet", "icon"}, "/docs/oauth2-redirect": set()}
CONTENT_TYPES = {"script": ("text/javascript", "application/javascript"),
                 "stylesheet": ("text/css",), "icon": ("image/",)}


def _kind(tag: str, rel: str) -> str | None:
    if tag == "script":
        return "script"
    rels = rel.lower().split() if tag == "link" else []
    if "stylesheet" in rels:
        return "stylesheet"
    return "icon" if "icon" in rels else None


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_loads_only_its_own_server_assets(server: InThread, page: str) -> None:
    resp = httpx.get(server.url + page, timeout=30)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert not re.findall(r"https?://[^\s\"'<>]+", html), f"{page} names an outside URL"
    kinds = set()
    for tag, attr, url, rel in _refs(html):
        assert not EXTERNAL.match(url), f"{page}: <{tag} {attr}={url!r}> is off the server"
        kind = _kind(tag, rel)
        if kind is None:
            continue
        kinds.add(kind)
        assert url.startswith(ASSET), url
        asset = httpx.get(server.url + url, timeout=30)
        assert asset.status_code == 200, f"{page}: {url} -> {asset.status_code}"
        content_type = asset.headers["content-type"]
        assert content_type.startswith(CONTENT_TYPES[kind]), f"{url}: {content_type}"
        assert len(asset.content) > (1000 if kind == "icon" else 100_000), url
    assert kinds == PAGES[page]


def test_docs_options_and_redoc_off(server: InThread) -> None:
    html = httpx.get(server.url + "/docs", timeout=30).text
    assert "url: '/openapi.json'" in html
    assert httpx.get(server.url + "/openapi.json", timeout=30).json()["paths"]
    # Swagger UI's default validator badge is an image from swagger.io (shown for any host
    # but loopback, so the Chromium checks below could not see it).
    assert re.search(r'"validatorUrl":\s*null', html)
    # ReDoc's bundle fetches its logo from cdn.redoc.ly: it is not served.
    assert httpx.get(server.url + "/redoc", timeout=30).status_code == 404


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _chromium(url: str, port: int, work: Path, *mode: str) -> tuple[str, list[str]]:
    """Headless Chromium on ``url`` with no network but loopback: its stdout, and the URLs of
    the requests that the page (not the browser) made, from its net log."""
    assert CHROMIUM is not None
    netlog = work / "netlog.json"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={work / 'profile'}",
           # Everything but loopback (which bypasses a proxy) goes to a refused port, and no
           # name resolves, for whatever would not use the proxy.
           f"--proxy-server=http://127.0.0.1:{port}",
           "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
           f"--log-net-log={netlog}",
           "--window-size=1280,2000", "--virtual-time-budget=10000", *mode, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    origin = re.match(r"https?://[^/]+", url).group(0)
    requested = [e["params"]["url"] for e in log["events"]
                 if e["type"] == start_job and e.get("params", {}).get("initiator") == origin]
    return proc.stdout, requested


def _assert_all_local(requested: list[str], server: InThread, *expected: str) -> None:
    off_server = [u for u in requested if not u.startswith(server.url + "/")]
    assert not off_server, f"/docs asked for {off_server}"
    for path in expected:
        assert server.url + path in requested, f"/docs never loaded {path}: {requested}"


def _rendered_paths(dom: str) -> set[str]:
    """The paths of the operations Swagger UI drew (its ``opblock-summary-path`` spans)."""
    return {m.replace("\u200b", "") for m in re.findall(
        r'class="opblock-summary-path"[^>]*\bdata-path="([^"]+)"', dom)}


@needs_chromium
def test_docs_render_operations_offline(server: InThread, refused_port: int,
                                        tmp_path: Path) -> None:
    dom, requested = _chromium(server.url + "/docs", refused_port, tmp_path, "--dump-dom")
    rendered = _rendered_paths(dom)
    assert {V2_INFER, V1_NORMALIZE} <= rendered, f"Swagger UI drew {sorted(rendered)}"
    schema_paths = set(httpx.get(server.url + "/openapi.json", timeout=30).json()["paths"])
    assert rendered == schema_paths
    for tag, attr, url, _ in _refs(dom):
        assert not EXTERNAL.match(url), f"rendered /docs: <{tag} {attr}={url!r}>"
    _assert_all_local(requested, server, ASSET + "swagger-ui-bundle.js",
                      ASSET + "swagger-ui.css", "/openapi.json")


@needs_chromium
def test_docs_screenshot_shows_operations(server: InThread, refused_port: int,
                                          tmp_path: Path) -> None:
    png = tmp_path / "docs.png"
    _, requested = _chromium(server.url + "/docs", refused_port, tmp_path,
                             f"--screenshot={png}")
    assert png.is_file(), "chromium wrote no screenshot"
    pixels = decode_png(png.read_bytes())
    assert pixels.shape[:2] == (2000, 1280)
    rgb = pixels[..., :3].reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    assert len(colours) > 50, f"{png}: only {len(colours)} colours (blank page?)"
    assert counts.max() < 0.97 * len(rgb), f"{png}: one colour covers nearly all of it"
    for name, colour in (("GET", GET_BLUE), ("POST", POST_GREEN)):
        n = int(np.all(rgb == colour, axis=1).sum())
        assert n > 500, f"{png}: no {name} operation badges drawn ({n} px of {colour})"
    _assert_all_local(requested, server, "/openapi.json")


def decode_png(data: bytes) -> np.ndarray:
    """A non-interlaced 8-bit RGB or RGBA PNG as an (height, width, channels) uint8 array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert header is not None, "PNG without IHDR"
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    channels = 3 if colour_type == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    assert raw.size == height * (width * channels + 1)
    rows = raw.reshape(height, width * channels + 1)
    assert rows[:, 0].max() <= 4, "unknown PNG filter type"
    return _unfilter(rows, channels).reshape(
        height, width, channels)


@numba.njit(cache=False)
def _unfilter(rows: np.ndarray, bpp: int) -> np.ndarray:
    """PNG's per-scanline filters (None, Sub, Up, Average, Paeth) undone."""
    height, n = rows.shape[0], rows.shape[1] - 1
    out = np.zeros((height, n), np.uint8)
    for y in range(height):
        f = rows[y, 0]
        for x in range(n):
            a = np.int32(out[y, x - bpp]) if x >= bpp else np.int32(0)
            b = np.int32(out[y - 1, x]) if y > 0 else np.int32(0)
            c = np.int32(out[y - 1, x - bpp]) if (y > 0 and x >= bpp) else np.int32(0)
            if f == 0:
                pred = np.int32(0)
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
            out[y, x] = np.uint8((np.int32(rows[y, x + 1]) + pred) & 0xFF)
    return out
