"""Tests for pytail.py.

Table tests of the pure sections come first (names, pages, negotiation, routing), then
behaviour through live servers, grouped by capability: the mirror, real clients, the command
line, own packages, SigV4 and the S3 client, publishing, review findings, operating, and
hardening. Real servers run on 127.0.0.1:0 in-process (pytail, a fake upstream index, moto
for S3); installs go through real pip and uv. Checklist IDs refer to
shared/spec/simple-api-checklist.md.
"""
from __future__ import annotations

import ast
import concurrent.futures
import datetime
import gzip
import hashlib
import http.client
import http.server
import io
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import pytail

HERE = Path(__file__).resolve().parent
PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
              "text/html; q=0.01")
UV_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
             "text/html;q=0.01")
POETRY_ACCEPT = "application/vnd.pypi.simple.v1+json, */*;q=0.1"
REQUIRE_CLIENTS = os.environ.get("PYTAIL_REQUIRE_CLIENTS") == "1"


# =============================================================================
# Builders: wheels and sdists made by the tests themselves
# =============================================================================


def make_wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = (),
               requires_python: str | None = None, payload: int = 0,
               meta_name: str | None = None) -> Path:
    """A small installable wheel (purelib) with a real METADATA, WHEEL and RECORD."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = [f"Metadata-Version: 2.1", f"Name: {meta_name or name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    if requires_python:
        meta.append(f"Requires-Python: {requires_python}")
    module = name.replace("-", "_")
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\nPAD = {'x' * payload!r}\n".encode(),
        f"{dist}.dist-info/METADATA": ("\n".join(meta) + "\n\n").encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                   b"Tag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{dist}.dist-info/RECORD,,\n"
    files[f"{dist}.dist-info/RECORD"] = record.encode()
    path = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, data in files.items():
            zf.writestr(arcname, data)
    return path


def make_sdist(directory: Path, name: str, version: str, filename: str | None = None,
               requires_python: str | None = None) -> Path:
    """A .tar.gz sdist with a top-level PKG-INFO."""
    top = f"{name}-{version}"
    info = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires_python:
        info += f"Requires-Python: {requires_python}\n"
    path = directory / (filename or f"{name.replace('-', '_').lower()}-{version}.tar.gz")
    with tarfile.open(path, "w:gz") as tf:
        for arcname, data in ((f"{top}/PKG-INFO", info.encode()),
                              (f"{top}/setup.py", b"raise SystemExit('no')\n")):
            member = tarfile.TarInfo(arcname)
            member.size = len(data)
            tf.addfile(member, io.BytesIO(data))
    return path


def wheel_metadata_bytes(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# =============================================================================
# Fixtures: a fake upstream index and pytail, both real servers on 127.0.0.1:0
# =============================================================================


@dataclass
class UpFile:
    filename: str
    data: bytes
    requires_python: str | None = None
    yanked: str | bool = False
    metadata: bytes | None = None  # advertised when the upstream has metadata on


@dataclass
class FakeUpstream:
    """An index server: JSON or HTML pages, ETags, metadata, counts, fails on command."""

    projects: dict[str, list[UpFile]] = field(default_factory=dict)
    json: bool = True
    etag: bool = True
    metadata: bool = True
    fail: str | None = None  # '500', 'reset', 'slow', or None
    corrupt: set[str] = field(default_factory=set)  # filenames served with wrong bytes
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    gate: threading.Event | None = None  # file downloads wait for it when set
    file_fault: str | None = None  # '500', 'reset_mid', 'short', 'slow', 'redirect', 'loop'
    pad: int = 0  # bytes of padding in JSON pages (a 50 MB page)
    gzip_pages: str | None = None  # 'ok': gzip-encoded when accepted; 'bad', 'trailing': broken
    page_fault: str | None = None  # 'cut': pages end early (valid HTTP); 'reset': mid-body
    sizes: bool = True  # JSON pages give each file's size
    extra: dict[str, Any] = field(default_factory=dict)  # more members of every JSON page
    connections: int = 0  # TCP connections accepted
    url: str = ""

    def add(self, project: str, *paths: Path, requires_python: str | None = None) -> None:
        for path in paths:
            data = path.read_bytes()
            meta = wheel_metadata_bytes(path) if path.name.endswith(".whl") else None
            self.projects.setdefault(project, []).append(
                UpFile(path.name, data, requires_python, metadata=meta))

    def count(self, prefix: str = "", method: str = "GET") -> int:
        return sum(1 for m, p, _ in self.requests if p.startswith(prefix) and m == method)

    def page(self, name: str, accept: str) -> tuple[str, bytes]:
        files = self.projects[name]
        if self.json and "vnd.pypi.simple.v1+json" in accept:
            doc = {"meta": {"api-version": "1.1", "_last-serial": "7"}, "name": name,
                   "versions": [], "files": [self._json_file(f) for f in files]}
            if self.pad:
                doc["x-padding"] = "x" * self.pad
            doc.update(self.extra)
            return "application/vnd.pypi.simple.v1+json", json.dumps(doc).encode()
        links = "".join(self._anchor(f) for f in files)
        return "text/html", f"<!DOCTYPE html><html><body>{links}</body></html>".encode()

    def _json_file(self, f: UpFile) -> dict[str, Any]:
        item = {"filename": f.filename, "url": f"/files/{f.filename}",
                "hashes": {"sha256": sha(f.data)}, "requires-python": f.requires_python,
                "size": len(f.data), "upload-time": "2024-01-02T03:04:05.000000Z",
                "yanked": f.yanked, "provenance": None, "x-unknown": {"kept": True}}
        if not self.sizes:
            del item["size"]
        if self.metadata and f.metadata is not None:
            item["core-metadata"] = {"sha256": sha(f.metadata)}
        return item

    def _anchor(self, f: UpFile) -> str:
        attrs = f'href="/files/{f.filename}#sha256={sha(f.data)}"'
        if f.requires_python:
            attrs += f' data-requires-python="{f.requires_python.replace(">", "&gt;")}"'
        if f.yanked is not False:
            attrs += f' data-yanked="{f.yanked if isinstance(f.yanked, str) else ""}"'
        if self.metadata and f.metadata is not None:
            attrs += f' data-core-metadata="sha256={sha(f.metadata)}"'
        return f"<a {attrs}>{f.filename}</a><br>"

    def file(self, filename: str) -> tuple[bytes, bool] | None:
        for files in self.projects.values():
            for f in files:
                if f.filename == filename:
                    return f.data, False
                if f.metadata is not None and filename == f.filename + ".metadata":
                    return f.metadata, True
        return None


def make_upstream_handler(up: FakeUpstream) -> type[http.server.BaseHTTPRequestHandler]:
    class UpstreamHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            up.connections += 1
            super().setup()

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            up.requests.append(("GET", self.path, dict(self.headers)))
            if up.fail == "500":
                return self._send(500, b"boom", "text/plain")
            if up.fail == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                return
            if up.fail == "slow":
                time.sleep(1.5)
            if self.path.startswith("/simple/"):
                return self._page(self.path[len("/simple/"):].rstrip("/"))
            if self.path.startswith("/files/"):
                return self._file(self.path[len("/files/"):])
            self._send(404, b"", "text/plain")

        def _page(self, name: str) -> None:
            if name not in up.projects:
                return self._send(404, b"", "text/plain")
            ctype, body = up.page(name, self.headers.get("Accept", ""))
            headers = {}
            if up.etag:
                etag = '"%s"' % sha(body)[:16]
                headers["ETag"] = etag
                if self.headers.get("If-None-Match") == etag:
                    return self._send(304, b"", ctype, headers)
            if up.gzip_pages and "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body)
                body = {"ok": body, "bad": body[:20] + b"junk" + body[24:],
                        "trailing": body + b"junk"}[up.gzip_pages]
                headers["Content-Encoding"] = "gzip"
            if up.page_fault == "cut":
                body = body[: len(body) * 2 // 3]
            if up.page_fault == "reset":
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                return
            self._send(200, body, ctype, headers)

        def _file(self, filename: str) -> None:
            fault = up.file_fault
            if fault == "500":
                return self._send(500, b"boom", "text/plain")
            if fault == "loop" or (fault == "redirect" and not filename.startswith("moved/")):
                target = self.path if fault == "loop" else f"/files/moved/{filename}"
                return self._send(302, b"", "text/plain", {"Location": target})
            filename = filename.removeprefix("moved/")
            found = up.file(filename)
            if found is not None and fault in ("reset_mid", "short"):
                data = found[0]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                if fault == "reset_mid":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                return
            if fault == "slow":
                time.sleep(2.5)
            if found is None:
                return self._send(404, b"", "text/plain")
            data, _ = found
            span = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
            if span:  # single ranges, as files.pythonhosted.org answers them
                start, end = int(span.group(1)), min(int(span.group(2)), len(data) - 1)
                return self._send(206, data[start:end + 1], "application/octet-stream",
                                  {"Content-Range": f"bytes {start}-{end}/{len(data)}"})
            if filename in up.corrupt:
                data = b"X" + data[1:]
            if up.gate is not None:  # headers and half the body, then stall until released
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                up.gate.wait(10)
                self.wfile.write(data[len(data) // 2:])
                return
            self._send(200, data, "application/octet-stream")

        def _send(self, status: int, body: bytes, ctype: str,
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status != 304:
                self.wfile.write(body)

    return UpstreamHandler


@dataclass
class Running:
    """A server running in a thread, stopped by `stop()`."""

    server: http.server.HTTPServer
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start(server: http.server.HTTPServer) -> Running:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return Running(server, thread)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_upstream_handler(up))
    httpd.daemon_threads = True
    up.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    running = start(httpd)
    yield up
    if up.gate:
        up.gate.set()
    running.stop()


class Clock:
    """An injected clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cfg(tmp_path: Path, upstream: FakeUpstream) -> pytail.ServeConfig:
    return pytail.ServeConfig(bind_host="127.0.0.1", bind_port=0, upstream=upstream.url,
                              cache_dir=str(tmp_path / "cache"), ttl=900, timeout=5)


class Proxy:
    """A running pytail and a small client for it."""

    def __init__(self, config: pytail.ServeConfig, clock: Clock) -> None:
        self.config = config
        self.server = pytail.make_server(config, clock)
        self.running = start(self.server)
        self.url = self.server.url.rstrip("/")

    def request(self, path: str, method: str = "GET", headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.server_address[1], timeout=20)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> dict[str, Any]:
        status, headers, body = self.request(path, headers={"Accept": UV_ACCEPT})
        assert status == 200, body
        return json.loads(body)

    def file_url(self, project: str, filename: str) -> str:
        page = self.get_json(f"/simple/{project}/")
        entry = next(f for f in page["files"] if f["filename"] == filename)
        return "/" + entry["url"].removeprefix("../../")

    def stop(self) -> None:
        self.running.stop()


@pytest.fixture
def proxy_factory(cfg: pytail.ServeConfig, clock: Clock) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def factory(**changes: Any) -> Proxy:
        import dataclasses
        proxy = Proxy(dataclasses.replace(cfg, **changes), clock)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(proxy_factory: Callable[..., Proxy]) -> Proxy:
    return proxy_factory()


@pytest.fixture
def dists(tmp_path: Path) -> Path:
    path = tmp_path / "dists"
    path.mkdir()
    return path


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    """Bounded polling, for effects that happen in another thread."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# =============================================================================
# 0. The file itself
# =============================================================================


def test_runtime_imports_only_the_standard_library() -> None:
    tree = ast.parse((HERE / "pytail.py").read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    assert sorted(m for m in modules if m not in sys.stdlib_module_names) == []


def test_section_map_matches_banners() -> None:
    source = (HERE / "pytail.py").read_text()
    banners = re.findall(r"^# (\d+)\. (.+)$", source, re.MULTILINE)
    doc = pytail.__doc__ or ""
    for number, title in banners:
        assert f"{number}. {title}" in doc
    assert [int(n) for n, _ in banners] == list(range(1, len(banners) + 1))


# =============================================================================
# 2. Names and filenames
# =============================================================================


@pytest.mark.parametrize("name,normal", [
    ("Foo_Bar", "foo-bar"), ("foo.bar", "foo-bar"), ("FOO--_.bar", "foo-bar"),
    ("zope.interface", "zope-interface"), ("a", "a"),
])
def test_normalize_name(name: str, normal: str) -> None:  # NAME-1
    assert pytail.normalize_name(name) == normal


@pytest.mark.parametrize("name,valid", [
    ("requests", True), ("a", True), ("Foo_Bar.baz-1", True), ("-foo", False),
    ("foo-", False), ("foo\n", False), ("", False), ("fo o", False), ("..", False),
])
def test_valid_name(name: str, valid: bool) -> None:  # NAME-2 (\Z, not $)
    assert pytail.is_valid_name(name) is valid


@pytest.mark.parametrize("filename,expected", [  # FN-1..5 corpus (checklist P.12)
    ("zope.interface-5.0-cp311-cp311-manylinux_2_17_x86_64.whl", ("zope-interface", "5.0")),
    ("foo-1.0-1-py3-none-any.whl", ("foo", "1.0")),
    ("torch-2.1.0+cpu-cp311-cp311-linux_x86_64.whl", ("torch", "2.1.0+cpu")),
    ("six-1.17.0-py2.py3-none-any.whl", ("six", "1.17.0")),
    ("some-pkg-1.2.3.tar.gz", ("some-pkg", "1.2.3")),
    ("some_pkg-1.2.3.tar.gz", ("some-pkg", "1.2.3")),
    ("python-3parclient-4.2.0.tar.gz", ("python-3parclient", "4.2.0")),
    ("Django-1.0.zip", ("django", "1.0")),
    ("backports.ssl_match_hostname-3.7.0.1.tar.gz", ("backports-ssl-match-hostname", "3.7.0.1")),
    ("pkg-1.0-1.tar.gz", ("pkg", "1.0-1")),
])
def test_parse_dist_filename(filename: str, expected: tuple[str, str]) -> None:
    assert pytail.parse_dist_filename(filename) == expected


@pytest.mark.parametrize("filename", [
    "foo.egg", "foo-1.0.exe", "README", ".hidden-1.0.tar.gz", "foo-1.0.tar.gz.part",
    "foo-1.0-py3-none-any.whl.metadata", "foo-1.0.tar.gz.yanked",
])
def test_non_distributions_are_ignored(filename: str) -> None:  # FN-5
    assert pytail.dist_kind(filename) is None


@pytest.mark.parametrize("filename", [
    "foo-py3-none-any.whl", "foo-1.0-x-py3-none-any.whl", "fo__o-1.0-py3-none-any.whl",
    "foo-notaversion-py3-none-any.whl", "foo.tar.gz", "foo-bar.tar.gz",
])
def test_unparseable_filenames_raise(filename: str) -> None:
    with pytest.raises(ValueError):
        pytail.parse_dist_filename(filename)


def test_ambiguous_sdist_settled_by_pkg_info() -> None:  # FN-3
    assert pytail.parse_sdist_filename("pkg-1.0-1.tar.gz") == ("pkg", "1.0-1")
    assert pytail.parse_sdist_filename("pkg-1.0-1.tar.gz", "pkg-1.0") == ("pkg-1-0", "1")
    assert pytail.parse_sdist_filename("a-1-1.zip", "a") == ("a", "1-1")


@pytest.mark.parametrize("filename,safe", [
    ("foo-1.0.tar.gz", True), ("../x", False), ("a/b", False), ("a\\b", False),
    ("..", False), ("a\0b", False), ("x" * 256, False), ("", False),
])
def test_is_safe_filename(filename: str, safe: bool) -> None:
    assert pytail.is_safe_filename(filename) is safe


def test_wheel_metadata_is_exact_bytes(dists: Path) -> None:  # FN-7, META-3
    wheel = make_wheel(dists, "alpha", "1.0", requires=("beta>=1.0",))
    assert pytail.wheel_metadata(str(wheel), "alpha") == wheel_metadata_bytes(wheel)
    bad = dists / "bad-1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        pytail.wheel_metadata(str(bad), "bad")


# =============================================================================
# 3. Simple API model, parsing, rendering, negotiation
# =============================================================================


@pytest.mark.parametrize("accept,expected", [  # NEG-1..6, checklist P.1
    (PIP_ACCEPT, pytail.JSON_V1),
    (UV_ACCEPT, pytail.JSON_V1),
    (POETRY_ACCEPT, pytail.JSON_V1),
    (None, pytail.TEXT_HTML),
    ("", pytail.TEXT_HTML),
    ("*/*", pytail.TEXT_HTML),
    ("text/html", pytail.TEXT_HTML),
    ("text/*", pytail.TEXT_HTML),
    ("application/vnd.pypi.simple.v1+html", pytail.HTML_V1),
    ("application/vnd.pypi.simple.latest+json", pytail.JSON_V1),
    ("application/vnd.pypi.simple.latest+html", pytail.HTML_V1),
    ("application/vnd.pypi.simple.v1+json;q=0, text/html", pytail.TEXT_HTML),
    ("APPLICATION/VND.PYPI.SIMPLE.V1+JSON", pytail.JSON_V1),
    ("text/html;q=0.5, application/vnd.pypi.simple.v1+html;q=0.5", pytail.HTML_V1),
    ("application/*", pytail.JSON_V1),
    ("*/*;q=0.1, text/html;q=0.05", pytail.HTML_V1),
])
def test_choose_media_type(accept: str | None, expected: str) -> None:
    assert pytail.choose_media_type(accept) == expected


@pytest.mark.parametrize("accept", ["application/json", "application/vnd.pypi.simple.v1+json;q=0",
                                    "image/png, text/plain"])
def test_unacceptable_gives_406(accept: str) -> None:  # NEG-6: 406, never 300
    with pytest.raises(pytail.NotAcceptable):
        pytail.choose_media_type(accept)


def test_format_parameter_overrides_accept() -> None:  # NEG-7
    assert pytail.choose_media_type("text/html", "application/vnd.pypi.simple.v1+json") == \
        pytail.JSON_V1
    assert pytail.choose_media_type(None, "application/vnd.pypi.simple.latest+html") == \
        pytail.HTML_V1
    with pytest.raises(pytail.NotAcceptable):
        pytail.choose_media_type(None, "text/*")


@pytest.mark.parametrize("header,size,expected", [  # FILE-4
    ("bytes=0-9", 100, (0, 9)), ("bytes=10-", 100, (10, 99)), ("bytes=-16", 100, (84, 99)),
    ("bytes=-500", 100, (0, 99)), ("bytes=90-200", 100, (90, 99)), (None, 100, None),
    ("bytes=0-1,5-6", 100, None), ("items=0-1", 100, None), ("bytes=abc", 100, None),
    ("bytes=5-2", 100, None),
])
def test_parse_range(header: str | None, size: int, expected: Any) -> None:
    assert pytail.parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable_range(header: str) -> None:
    with pytest.raises(pytail.RangeError):
        pytail.parse_range(header, 100)


@pytest.mark.parametrize("header,match", [  # CACHE-1
    ('"abc"', True), ('W/"abc"', True), ('"x", "abc"', True), ("*", True), ('"abd"', False),
    (None, False),
])
def test_etag_matches(header: str | None, match: bool) -> None:
    assert pytail.etag_matches(header, '"abc"') is match


def sample_page() -> pytail.ProjectPage:
    return pytail.ProjectPage("Pkg", [
        pytail.FileEntry("pkg-1.0-py3-none-any.whl", path="root/pypi/+f/abc/0123456789abc/"
                         "pkg-1.0-py3-none-any.whl", sha256="a" * 64,
                         requires_python=">=3.8,<4", core_metadata="b" * 64, size=10,
                         upload_time="2024-01-01T00:00:00.000000Z"),
        pytail.FileEntry("pkg-0.9.tar.gz", path="packages/pkg-0.9.tar.gz", sha256="c" * 64,
                         yanked="", size=5),
        pytail.FileEntry("pkg-0.8.tar.gz", path="packages/pkg-0.8.tar.gz", sha256="d" * 64,
                         yanked='bad <build> & "quotes"', size=5),
    ], ["0.8", "0.9", "1.0"])


def test_render_html_attributes() -> None:  # HTML-1..5, checklist P.7
    text = pytail.render_project_html(sample_page(), "../../").decode()
    assert text.startswith("<!DOCTYPE html>")
    assert '<meta name="pypi:repository-version" content="1.4">' in text
    assert text.count("<a ") == 3
    assert 'href="../../root/pypi/+f/abc/0123456789abc/pkg-1.0-py3-none-any.whl#sha256=' \
        + "a" * 64 + '"' in text
    assert 'data-requires-python="&gt;=3.8,&lt;4"' in text
    assert f'data-core-metadata="sha256={"b" * 64}"' in text
    assert f'data-dist-info-metadata="sha256={"b" * 64}"' in text
    assert 'data-yanked=""' in text
    assert 'data-yanked="bad &lt;build&gt; &amp; &quot;quotes&quot;"' in text
    assert "false" not in text
    assert text.count("data-core-metadata") == 1


def test_render_json_schema() -> None:  # JSON-1..5, checklist P.8
    doc = json.loads(pytail.render_project_json(sample_page(), "../../"))
    assert doc["meta"] == {"api-version": "1.4"}
    assert doc["name"] == "pkg"  # NAME-4
    assert doc["versions"] == ["0.8", "0.9", "1.0"]
    first, second, third = doc["files"]
    assert first["hashes"] == {"sha256": "a" * 64}
    assert first["core-metadata"] == {"sha256": "b" * 64}
    assert "dist-info-metadata" not in first and "data-dist-info-metadata" not in first
    assert first["requires-python"] == ">=3.8,<4"
    assert first["upload-time"].endswith("Z") and isinstance(first["size"], int)
    assert first["yanked"] is False and second["yanked"] is True
    assert third["yanked"] == 'bad <build> & "quotes"'
    assert second["core-metadata"] is False


UPSTREAM_HTML = b"""<!DOCTYPE html><html><head>
<meta name="pypi:repository-version" content="1.4">
<meta name="pypi:project-status" content="deprecated">
<meta name="pypi:project-status-reason" content="use other">
</head><body>
<a href="https://files.example/p/x/pkg-1.0-py3-none-any.whl#sha256=AAAA{A60}"
   data-requires-python="&gt;=3.8" data-core-metadata="sha256={B64}"
   data-provenance="https://pypi.org/integrity/pkg/1.0/pkg-1.0-py3-none-any.whl/provenance">
   pkg-1.0-py3-none-any.whl</a>
<a href="../../files/pkg-0.9.tar.gz#md5=00" data-yanked>pkg-0.9.tar.gz</a>
<a href="pkg-0.8.tar.gz" data-yanked="broken" data-dist-info-metadata="true">pkg-0.8.tar.gz</a>
<a href="javascript:alert(1)">pkg-0.7.tar.gz</a>
<a href="file:///etc/passwd">pkg-0.6.tar.gz</a>
<a href="/files/..%2Fevil-1.0.tar.gz">evil</a>
<a href="/files/README.txt">README.txt</a>
</body></html>""".replace(b"{A60}", b"a" * 60).replace(b"{B64}", b"b" * 64)


def test_parse_upstream_html() -> None:  # UP-4, META-6, HTML-8, hostile links dropped
    page = pytail.parse_project_html("pkg", UPSTREAM_HTML, "https://index.example/simple/pkg/")
    assert [f.filename for f in page.files] == [
        "pkg-1.0-py3-none-any.whl", "pkg-0.9.tar.gz", "pkg-0.8.tar.gz"]
    whl, sdist, old = page.files
    assert whl.sha256 == "aaaa" + "a" * 60 and whl.requires_python == ">=3.8"
    assert whl.core_metadata == "b" * 64 and whl.provenance.startswith("https://pypi.org/")
    assert sdist.url == "https://index.example/files/pkg-0.9.tar.gz" and sdist.sha256 is None
    assert sdist.yanked == "" and old.yanked == "broken" and old.core_metadata == ""
    assert old.url == "https://index.example/simple/pkg/pkg-0.8.tar.gz"
    assert page.status == {"status": "deprecated", "reason": "use other"}
    assert page.versions == ["0.8", "0.9", "1.0"]


def test_parse_upstream_json_keeps_unknown_keys() -> None:  # UP-3, JSON-7, META-6
    body = json.dumps({"meta": {"api-version": "1.4", "_last-serial": 3}, "name": "pkg",
                       "versions": ["1.0"], "project-status": {"status": "archived"},
                       "files": [
        {"filename": "pkg-1.0-py3-none-any.whl", "url": "https://f.example/pkg-1.0-py3-none-any.whl",
         "hashes": {"sha256": "c" * 64}, "requires-python": ">=3.9", "size": 12,
         "upload-time": "2024-01-01T00:00:00Z", "yanked": "reason",
         "data-dist-info-metadata": {"sha256": "d" * 64}, "provenance": "https://p.example/x",
         "x-custom": [1, 2]},
        {"filename": "../evil-1.0.tar.gz", "url": "https://f.example/evil", "hashes": {}},
        {"filename": "pkg-0.1.tar.gz", "url": "ftp://f.example/pkg-0.1.tar.gz", "hashes": {}},
    ]}).encode()
    page = pytail.parse_project_json("pkg", body, "https://index.example/simple/pkg/")
    assert len(page.files) == 1
    entry = page.files[0]
    assert entry.yanked == "reason" and entry.size == 12 and entry.core_metadata == "d" * 64
    assert entry.extra == {"x-custom": [1, 2]}
    assert page.status == {"status": "archived"}
    doc = json.loads(pytail.render_project_json(pytail.assign_paths(page), "../../"))
    assert doc["files"][0]["x-custom"] == [1, 2]
    assert doc["files"][0]["provenance"] == "https://p.example/x"
    assert doc["project-status"] == {"status": "archived"}
    with pytest.raises(ValueError):
        pytail.parse_project_json("pkg", b"{not json", "https://x/")


@pytest.mark.parametrize("base,expected", [
    ("https://pypi.org", "https://pypi.org/simple/"),
    ("https://pypi.org/", "https://pypi.org/simple/"),
    ("https://download.pytorch.org/whl/cpu", "https://download.pytorch.org/whl/cpu/"),
    ("http://127.0.0.1:8080/root/pypi/+simple/", "http://127.0.0.1:8080/root/pypi/+simple/"),
])
def test_simple_base_url(base: str, expected: str) -> None:  # serve item 1
    assert pytail.simple_base_url(base) == expected


@pytest.mark.parametrize("base", ["ftp://x", "pypi.org", "http://"])
def test_simple_base_url_rejects(base: str) -> None:
    with pytest.raises(pytail.ConfigError):
        pytail.simple_base_url(base)


# =============================================================================
# 8. Routing (pure)
# =============================================================================


@pytest.mark.parametrize("target,kind,detail", [
    ("/simple/", "index", ""),
    ("/simple", "redirect", "/simple/"),
    ("/simple?x=1", "redirect", "/simple/?x=1"),
    ("/simple/foo", "redirect", "/simple/foo/"),  # URL-2
    ("/simple/Foo_Bar/", "redirect", "/simple/foo-bar/"),  # NAME-3
    ("/simple/Foo_Bar?format=x", "redirect", "/simple/foo-bar/?format=x"),
    ("/simple/foo-bar/", "project", "foo-bar"),
    ("/root/pypi/+simple/", "index", ""),
    ("/root/pypi/+simple/six/", "project", "six"),
    ("/root/pypi/%2Bsimple/six/", "project", "six"),
    ("/root/pypi/+f/abc/0123456789abc/a-1.0.tar.gz", "file",
     "root/pypi/+f/abc/0123456789abc/a-1.0.tar.gz"),
    ("/root/pypi/%2Bf/abc/0123456789abc/a-1.0%2Bcpu-py3-none-any.whl", "file",
     "root/pypi/+f/abc/0123456789abc/a-1.0+cpu-py3-none-any.whl"),  # URL-3
    ("/root/pypi/+f/abc/0123456789abc/a-1.0-py3-none-any.whl.metadata", "metadata",
     "root/pypi/+f/abc/0123456789abc/a-1.0-py3-none-any.whl"),  # URL-6
    ("/root/pypi/+f/_url/0123456789abcdef/a-1.0.tar.gz", "file",
     "root/pypi/+f/_url/0123456789abcdef/a-1.0.tar.gz"),
    ("/packages/a-1.0.tar.gz", "local_file", "a-1.0.tar.gz"),
    ("/packages/a-1.0-py3-none-any.whl.metadata", "local_metadata", "a-1.0-py3-none-any.whl"),
    ("/", "landing", ""),
    ("/health", "health", ""),
])
def test_match_route(target: str, kind: str, detail: str) -> None:
    route = pytail.match_route(target)
    assert route.kind == kind
    assert detail in (route.location, route.name, route.path, "")
    if detail:
        assert detail in (route.location, route.name, route.path)


@pytest.mark.parametrize("target,error", [  # URL-4
    ("/packages/..%2F..%2Fetc%2Fpasswd", pytail.BadRequest),
    ("/packages/../pytail.py", pytail.BadRequest),
    ("/packages/%2e%2e/x", pytail.BadRequest),
    ("/packages/a%5Cb", pytail.BadRequest),
    ("/packages/a%00b", pytail.BadRequest),
    ("/packages/a%01b.whl", pytail.BadRequest),
    ("/simple/a%1fb/", pytail.BadRequest),
    ("/root/pypi/+f/abc/0123456789abc/a\x1b.whl", pytail.BadRequest),
    ("http://evil/simple/", pytail.BadRequest),
    ("/" + "a" * 3000, pytail.BadRequest),
    ("/root/pypi/+f/zzz/0123456789abc/a.tar.gz", pytail.NotFound),
    ("/simple/-bad-/", pytail.NotFound),
    ("/simple/a/b/", pytail.NotFound),
    ("/nope", pytail.NotFound),
])
def test_match_route_rejects(target: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        pytail.match_route(target)


# =============================================================================
# 7-8. The mirror through a live server
# =============================================================================


@pytest.fixture
def alpha(upstream: FakeUpstream, dists: Path) -> Path:
    """Upstream project 'alpha' with one wheel (metadata advertised) and one sdist."""
    wheel = make_wheel(dists, "alpha", "1.0", requires_python=">=3.8")
    sdist = make_sdist(dists, "alpha", "0.9")
    upstream.add("alpha", wheel, sdist, requires_python=">=3.8")
    return wheel


def test_negotiation_vary_and_etag_per_type(proxy: Proxy, alpha: Path) -> None:  # NEG-8/9
    status, h_json, body_json = proxy.request("/simple/alpha/", headers={"Accept": PIP_ACCEPT})
    assert status == 200 and h_json["content-type"] == pytail.JSON_V1
    status, h_html, body_html = proxy.request("/simple/alpha/")
    assert status == 200 and h_html["content-type"] == "text/html; charset=utf-8"
    status, h_v1, _ = proxy.request("/simple/alpha/", headers={"Accept": pytail.HTML_V1})
    assert h_v1["content-type"] == pytail.HTML_V1
    assert h_json["vary"] == h_html["vary"] == "Accept, Accept-Encoding"
    assert h_json["etag"] != h_html["etag"]
    status, _, body = proxy.request("/simple/alpha/", headers={"Accept": "application/json"})
    assert status == 406 and b"acceptable" in body
    status, headers, _ = proxy.request("/simple/alpha/?format=" + pytail.JSON_V1)
    assert headers["content-type"] == pytail.JSON_V1
    doc = json.loads(body_json)
    assert doc["name"] == "alpha" and doc["meta"]["api-version"] == "1.4"
    assert {f["filename"] for f in doc["files"]} == {alpha.name, "alpha-0.9.tar.gz"}


def test_conditional_request_gets_304(proxy: Proxy, alpha: Path) -> None:  # CACHE-1
    _, headers, _ = proxy.request("/simple/alpha/", headers={"Accept": UV_ACCEPT})
    status, again, body = proxy.request("/simple/alpha/", headers={
        "Accept": UV_ACCEPT, "If-None-Match": f'"nope", {headers["etag"]}'})
    assert status == 304 and body == b"" and again["etag"] == headers["etag"]
    assert again["vary"] == headers["vary"]


def test_gzip_pages_only_when_accepted(proxy: Proxy, upstream: FakeUpstream,
                                       dists: Path) -> None:  # HTTP-4
    for i in range(30):
        upstream.add("big", make_sdist(dists, "big", f"1.{i}"))
    status, headers, body = proxy.request("/simple/big/", headers={
        "Accept": UV_ACCEPT, "Accept-Encoding": "gzip, deflate, zstd"})
    assert headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(body))["name"] == "big"
    _, plain, raw = proxy.request("/simple/big/", headers={"Accept": UV_ACCEPT})
    assert "content-encoding" not in plain and json.loads(raw)["name"] == "big"
    assert plain["etag"] != headers["etag"]
    assert raw == gzip.decompress(body) and plain["content-length"] == str(len(raw))
    _, head, nothing = proxy.request("/simple/big/", "HEAD", headers={"Accept": UV_ACCEPT})
    assert nothing == b"" and head["content-length"] == str(len(raw))
    status, _, nothing = proxy.request("/simple/big/", headers={
        "Accept": UV_ACCEPT, "If-None-Match": plain["etag"]})
    assert status == 304 and nothing == b""
    assert proxy.request("/simple/big/", headers={"Accept": UV_ACCEPT})[2] == raw  # keep-alive ok


def test_head_everywhere_has_no_body(proxy: Proxy, alpha: Path) -> None:  # URL-8, NEG-10
    status, get_headers, body = proxy.request("/simple/alpha/")
    status, headers, head_body = proxy.request("/simple/alpha/", method="HEAD")
    assert status == 200 and head_body == b""
    assert headers["content-length"] == get_headers["content-length"] == str(len(body))
    url = proxy.file_url("alpha", alpha.name)
    status, headers, head_body = proxy.request(url, method="HEAD")
    assert status == 200 and head_body == b""
    assert headers["content-length"] == str(alpha.stat().st_size)
    assert headers["accept-ranges"] == "bytes"
    status, headers, _ = proxy.request("/simple/alpha/", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_redirects_keep_query(proxy: Proxy) -> None:  # URL-2, NAME-3
    status, headers, _ = proxy.request("/simple/Alpha_Pkg?format=text/html")
    assert status == 301 and headers["location"] == "/simple/alpha-pkg/?format=text/html"
    assert proxy.request("/simple")[1]["location"] == "/simple/"


def test_cache_hit_makes_no_upstream_request(proxy: Proxy, upstream: FakeUpstream,
                                             alpha: Path, clock: Clock) -> None:
    proxy.request("/simple/alpha/")
    _, headers, _ = proxy.request("/simple/alpha/", headers={"Accept": UV_ACCEPT})
    assert upstream.count("/simple/") == 1
    assert headers["x-pytail-cache"] == "HIT"
    assert upstream.requests[0][2]["Accept"] == pytail.UPSTREAM_ACCEPT  # UP-9
    assert upstream.requests[0][2]["User-Agent"].startswith("pytail/")


def test_revalidation_sends_if_none_match(proxy: Proxy, upstream: FakeUpstream, alpha: Path,
                                          clock: Clock) -> None:  # CACHE-4, refresh
    proxy.request("/simple/alpha/")
    clock.now += 901
    _, headers, _ = proxy.request("/simple/alpha/")
    assert upstream.count("/simple/") == 2
    assert upstream.requests[-1][2].get("If-None-Match", "").startswith('"')
    assert headers["x-pytail-cache"] == "REVALIDATED"
    proxy.request("/simple/alpha/")
    assert upstream.count("/simple/") == 2  # re-stamped: fresh again


def test_refresh_without_etag_compares_content(proxy: Proxy, upstream: FakeUpstream,
                                               alpha: Path, clock: Clock, dists: Path) -> None:
    upstream.etag = False  # like the sandbox stand-in (CACHE-4, UP-8)
    proxy.request("/simple/alpha/")
    clock.now += 901
    assert proxy.request("/simple/alpha/")[1]["x-pytail-cache"] == "REVALIDATED"
    upstream.add("alpha", make_wheel(dists, "alpha", "2.0"))
    clock.now += 901
    doc = proxy.get_json("/simple/alpha/")
    assert "alpha-2.0-py3-none-any.whl" in {f["filename"] for f in doc["files"]}


def test_stale_if_error(proxy: Proxy, upstream: FakeUpstream, alpha: Path,
                        clock: Clock) -> None:  # CACHE-5
    _, _, first = proxy.request("/simple/alpha/")
    clock.now += 901
    for mode in ("500", "reset"):
        upstream.fail = mode
        status, headers, body = proxy.request("/simple/alpha/")
        assert status == 200 and body == first
        assert headers["x-pytail-cache"] == "STALE"
    status, _, body = proxy.request("/simple/never-seen/")
    assert status == 502 and b"never-seen" in body  # no cache: 502, not 404


def test_slow_upstream_times_out_to_stale(proxy_factory: Callable[..., Proxy],
                                          upstream: FakeUpstream, alpha: Path,
                                          clock: Clock) -> None:
    proxy = proxy_factory(timeout=0.5)
    proxy.request("/simple/alpha/")
    clock.now += 901
    upstream.fail = "slow"
    status, headers, _ = proxy.request("/simple/alpha/")
    assert status == 200 and headers["x-pytail-cache"] == "STALE"


def test_upstream_404_is_404_and_negative_cached(proxy: Proxy, upstream: FakeUpstream,
                                                 clock: Clock) -> None:  # UP-13, CACHE-6
    assert proxy.request("/simple/missing/")[0] == 404
    assert proxy.request("/simple/missing/")[0] == 404
    assert upstream.count("/simple/missing/") == 1
    clock.now += pytail.NEGATIVE_TTL + 1
    assert proxy.request("/simple/missing/")[0] == 404
    assert upstream.count("/simple/missing/") == 2


def test_concurrent_first_requests_make_one_page_fetch(proxy: Proxy, upstream: FakeUpstream,
                                                       alpha: Path) -> None:
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: proxy.request("/simple/alpha/")[0], range(16)))
    assert results == [200] * 16
    assert upstream.count("/simple/") == 1


def test_file_download_is_verified_and_cached(proxy: Proxy, upstream: FakeUpstream,
                                              alpha: Path, tmp_path: Path) -> None:  # FILE-1
    url = proxy.file_url("alpha", alpha.name)
    assert re.fullmatch(r"/root/pypi/\+f/[0-9a-f]{3}/[0-9a-f]{13}/alpha-1.0-py3-none-any.whl",
                        url)  # URL-5
    status, headers, body = proxy.request(url)
    assert status == 200 and body == alpha.read_bytes()
    assert "content-encoding" not in headers  # FILE-2
    status, headers, body = proxy.request(url)
    assert body == alpha.read_bytes() and headers["x-pytail-cache"] == "HIT"
    assert headers["cache-control"] == pytail.IMMUTABLE and headers["etag"] == \
        f'"{sha(alpha.read_bytes())}"'  # FILE-8
    assert upstream.count("/files/alpha-1.0") == 1
    on_disk = tmp_path / "cache" / "+files" / url.lstrip("/")
    assert on_disk.read_bytes() == alpha.read_bytes()
    assert proxy.request(url.replace(alpha.name, "alpha-9.9-py3-none-any.whl"))[0] == 404


def test_percent_encoded_plus_serves_same_file(proxy: Proxy, alpha: Path) -> None:  # URL-3
    url = proxy.file_url("alpha", alpha.name)
    assert proxy.request(url.replace("+f", "%2Bf"))[2] == alpha.read_bytes()


def test_hash_mismatch_is_never_stored(proxy: Proxy, upstream: FakeUpstream, alpha: Path,
                                       tmp_path: Path) -> None:  # FILE-1
    url = proxy.file_url("alpha", alpha.name)
    upstream.corrupt.add(alpha.name)
    status, _, body = proxy.request(url)
    assert status == 502 and b"sha256 mismatch" in body
    assert not (tmp_path / "cache" / "+files" / url.lstrip("/")).exists()
    assert list((tmp_path / "cache" / "+tmp").iterdir()) == []
    upstream.corrupt.clear()
    status, _, body = proxy.request(url)
    assert status == 200 and body == alpha.read_bytes()


def test_range_requests(proxy: Proxy, alpha: Path) -> None:  # FILE-4, FILE-6
    url = proxy.file_url("alpha", alpha.name)
    data = alpha.read_bytes()
    size = len(data)
    status, headers, body = proxy.request(url, headers={"Range": "bytes=-16"})  # uncached
    assert status == 206 and body == data[-16:]
    assert headers["content-range"] == f"bytes {size - 16}-{size - 1}/{size}"
    for spec, expected in (("0-9", data[:10]), ("10-", data[10:]), (f"-{size * 2}", data)):
        status, headers, body = proxy.request(url, headers={"Range": f"bytes={spec}"})
        assert status == 206 and body == expected
        assert headers["content-length"] == str(len(expected))
    status, headers, _ = proxy.request(url, headers={"Range": f"bytes={size}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{size}"


def test_sixteen_concurrent_file_requests_one_upstream_fetch(
        proxy: Proxy, upstream: FakeUpstream, dists: Path) -> None:  # FILE-7
    big = make_wheel(dists, "bigpkg", "1.0", payload=3_000_000)
    upstream.add("bigpkg", big)
    url = proxy.file_url("bigpkg", big.name)
    upstream.gate = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(proxy.request, url) for _ in range(16)]
        wait_until(lambda: upstream.count("/files/") >= 1)
        time.sleep(0.2)  # let every client queue behind the single flight
        upstream.gate.set()
        results = [f.result() for f in futures]
    assert all(status == 200 and body == big.read_bytes() for status, _, body in results)
    assert upstream.count("/files/") == 1


@pytest.mark.parametrize("corrupt", [False, True])
def test_a_long_download_streams_to_its_clients(proxy: Proxy, upstream: FakeUpstream, dists: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                corrupt: bool) -> None:  # FILE-7
    """Past STREAM_AFTER_SECS a download is sent as it arrives (tee), all but its last byte
    until the sha256 checked out: a bad file never reaches a client whole."""
    monkeypatch.setattr(pytail, "STREAM_AFTER_SECS", 0.1)
    big = make_wheel(dists, "bigpkg", "1.0", payload=3_000_000)
    upstream.add("bigpkg", big)
    if corrupt:
        upstream.corrupt.add(big.name)
    url = proxy.file_url("bigpkg", big.name)
    upstream.gate = threading.Event()
    conn = http.client.HTTPConnection("127.0.0.1", proxy.server.server_address[1], timeout=20)
    conn.request("GET", url)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("X-Pytail-Cache") == "MISS"
    half = resp.read(len(big.read_bytes()) // 3)  # arrived while upstream is stalled
    status, headers, body = proxy.request(url, method="HEAD")  # meanwhile: the same headers
    assert status == 200 and body == b"" and headers["etag"] == resp.getheader("ETag")
    assert headers["content-length"] == str(big.stat().st_size)
    upstream.gate.set()
    if corrupt:
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
    else:
        assert half + resp.read() == big.read_bytes()
    conn.close()
    assert proxy.server.store.exists(url.lstrip("/")) is not corrupt


def _read_response(sock: socket.socket, pause: float = 0.0) -> tuple[bytes, bytes]:
    """Headers and body of one HTTP response read from a raw socket, `pause` seconds
    between reads (a slow client)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore
    while len(body) < length:
        time.sleep(pause)
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        body += chunk
    return head, body


@pytest.mark.parametrize("refused", [False, True])
def test_send_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: bool) -> None:
    """send_file sends the span asked for, says so when the file ends early, and falls back
    to plain sends where sendfile is refused (some file systems)."""
    path = tmp_path / "f.bin"
    data = os.urandom(300_000)
    path.write_bytes(data)
    if refused:
        def no_sendfile(*args: Any) -> int:
            raise OSError(22, "Invalid argument")
        monkeypatch.setattr(os, "sendfile", no_sendfile)
    left, right = socket.socketpair()
    with left, right, open(path, "rb", buffering=0) as handle:
        right.settimeout(10)
        got = bytearray()
        reader = threading.Thread(target=lambda: got.extend(_recv_all(right)))
        reader.start()
        assert pytail.send_file(left, handle, 10, 200_000) == 200_000
        assert pytail.send_file(left, handle, 299_990, 100) == 10  # the file ended
        left.shutdown(socket.SHUT_WR)
        reader.join(10)
    assert bytes(got) == data[10:200_010] + data[-10:]


def _recv_all(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def test_big_cached_file_whole_by_range_and_to_a_slow_reader(
        proxy: Proxy, upstream: FakeUpstream, dists: Path) -> None:  # FILE-3/4, HTTP-2
    """Past SMALL_FILE a cached file goes out with sendfile: whole, by range, and to a
    reader slower than the socket buffers (sendfile then waits for it), keep-alive intact."""
    big = make_wheel(dists, "bigpkg", "1.0", payload=6_000_000)
    upstream.add("bigpkg", big)
    url = proxy.file_url("bigpkg", big.name)
    data = big.read_bytes()
    assert proxy.request(url)[2] == data  # cold: downloaded, checked, cached
    edge = pytail.SMALL_FILE
    for spec, expected in (("0-", data), (f"0-{edge - 1}", data[:edge]),
                           (f"0-{edge}", data[:edge + 1]), (f"-{edge + 1}", data[-edge - 1:])):
        status, headers, body = proxy.request(url, headers={"Range": f"bytes={spec}"})
        assert status == 206 and body == expected, spec
        assert headers["content-length"] == str(len(expected))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # a small window
    sock.settimeout(20)
    sock.connect(("127.0.0.1", proxy.server.server_address[1]))
    with sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.3)  # the server fills the socket buffers and waits
        head, body = _read_response(sock, pause=0.001)
        assert head.startswith(b"HTTP/1.1 200") and body == data
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n".encode())
        head, body = _read_response(sock)  # the same connection, still in step
        assert head.startswith(b"HTTP/1.1 206") and body == data[:10]


def test_small_cached_file_without_pread(proxy: Proxy, upstream: FakeUpstream, alpha: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:  # FILE-3/4
    """Where os.pread is missing (Windows), small files are read with seek and read."""
    url = proxy.file_url("alpha", alpha.name)
    data = alpha.read_bytes()
    assert proxy.request(url)[2] == data  # cold: downloaded and cached
    monkeypatch.delattr(os, "pread")
    status, _, body = proxy.request(url)
    assert status == 200 and body == data
    status, headers, body = proxy.request(url, headers={"Range": "bytes=5-14"})
    assert status == 206 and body == data[5:15]
    assert headers["content-range"] == f"bytes 5-14/{len(data)}"


def test_metadata_from_upstream_is_verified(proxy: Proxy, upstream: FakeUpstream,
                                            alpha: Path) -> None:  # META-1/2/6
    page = proxy.get_json("/simple/alpha/")
    wheel = next(f for f in page["files"] if f["filename"] == alpha.name)
    meta = wheel_metadata_bytes(alpha)
    assert wheel["core-metadata"] == {"sha256": sha(meta)}
    url = "/" + wheel["url"].removeprefix("../../") + ".metadata"
    status, headers, body = proxy.request(url)
    assert status == 200 and body == meta and headers["etag"] == f'"{sha(meta)}"'
    assert proxy.request(url)[2] == meta
    assert upstream.count("/files/alpha-1.0-py3-none-any.whl.metadata") == 1
    sdist = next(f for f in page["files"] if f["filename"].endswith(".tar.gz"))
    assert sdist["core-metadata"] is False
    assert proxy.request("/" + sdist["url"].removeprefix("../../") + ".metadata")[0] == 404


def test_metadata_advertised_once_wheel_is_cached(proxy: Proxy, upstream: FakeUpstream,
                                                  alpha: Path) -> None:  # META-7, HTML-5
    upstream.metadata = False  # like the stand-in: no core metadata advertised
    _, _, html_page = proxy.request("/simple/alpha/")
    assert b"data-core-metadata" not in html_page
    url = proxy.file_url("alpha", alpha.name)
    proxy.request(url)
    wait_until(lambda: b"data-core-metadata" in proxy.request("/simple/alpha/")[2])
    _, _, html_page = proxy.request("/simple/alpha/")
    meta = wheel_metadata_bytes(alpha)
    assert f'data-core-metadata="sha256={sha(meta)}"'.encode() in html_page
    status, headers, body = proxy.request(url + ".metadata")
    assert body == meta and headers["etag"] == f'"{sha(meta)}"'
    assert upstream.count("/files/alpha-1.0-py3-none-any.whl.metadata") == 0


def test_html_only_upstream(proxy: Proxy, upstream: FakeUpstream, alpha: Path) -> None:  # UP-11
    upstream.json = False
    doc = proxy.get_json("/simple/alpha/")
    assert doc["meta"]["api-version"] == "1.0"  # sizes unknown: no PEP 700 claim
    assert doc["versions"] == ["0.9", "1.0"]
    wheel = next(f for f in doc["files"] if f["filename"] == alpha.name)
    assert wheel["requires-python"] == ">=3.8"
    assert proxy.request("/" + wheel["url"].removeprefix("../../"))[2] == alpha.read_bytes()


def test_unknown_file_path_refreshes_its_project(proxy: Proxy, upstream: FakeUpstream,
                                                 alpha: Path, clock: Clock,
                                                 dists: Path) -> None:  # URL-7
    proxy.request("/simple/alpha/")
    newer = make_wheel(dists, "alpha", "3.0")
    upstream.add("alpha", newer)
    url = "/" + pytail.sha_path(sha(newer.read_bytes()), newer.name)
    assert proxy.request(url)[0] == 404  # refreshed at most once a minute per project
    clock.now += pytail.NEGATIVE_TTL + 1
    status, _, body = proxy.request(url)
    assert status == 200 and body == newer.read_bytes()


def test_devpi_alias(proxy: Proxy, alpha: Path) -> None:  # URL-1
    doc = json.loads(proxy.request("/root/pypi/+simple/alpha/",
                                   headers={"Accept": UV_ACCEPT})[2])
    wheel = next(f for f in doc["files"] if f["filename"] == alpha.name)
    assert wheel["url"].startswith("../../../../root/pypi/+f/")
    assert proxy.request("/root/pypi/+f/" + wheel["url"].split("+f/")[1])[2] == alpha.read_bytes()


def test_index_lists_requested_projects(proxy: Proxy, alpha: Path) -> None:  # ROOT-1/2
    proxy.request("/simple/alpha/")
    doc = proxy.get_json("/simple/")
    assert doc == {"meta": {"api-version": "1.4"}, "projects": [{"name": "alpha"}]}
    _, headers, body = proxy.request("/simple/")
    assert b'<a href="alpha/">alpha</a>' in body
    assert headers["content-type"].startswith("text/html")


def test_restart_with_upstream_gone(cfg: pytail.ServeConfig, clock: Clock, upstream: FakeUpstream,
                                    alpha: Path) -> None:
    first = Proxy(cfg, clock)
    url = first.file_url("alpha", alpha.name)
    first.request(url)
    first.request(url + ".metadata")
    first.stop()
    upstream.fail = "500"
    clock.now += 10_000
    second = Proxy(cfg, clock)
    try:
        status, headers, _ = second.request("/simple/alpha/")
        assert status == 200 and headers["x-pytail-cache"] == "STALE"
        assert second.request(url)[2] == alpha.read_bytes()
        assert second.request(url + ".metadata")[2] == wheel_metadata_bytes(alpha)
    finally:
        second.stop()


def test_offline_serves_cache_only(cfg: pytail.ServeConfig, clock: Clock, upstream: FakeUpstream,
                                   alpha: Path) -> None:
    first = Proxy(cfg, clock)
    first.request(first.file_url("alpha", alpha.name))
    first.stop()
    import dataclasses
    second = Proxy(dataclasses.replace(cfg, upstream=None), clock)
    try:
        before = len(upstream.requests)
        doc = second.get_json("/simple/alpha/")
        assert [f["filename"] for f in doc["files"]] == [alpha.name]  # only what is cached
        assert second.request("/simple/other/")[0] == 404
        assert len(upstream.requests) == before
    finally:
        second.stop()


def test_corrupt_database_is_rebuilt(cfg: pytail.ServeConfig, clock: Clock, alpha: Path,
                                     tmp_path: Path) -> None:
    os.makedirs(cfg.cache_dir)
    Path(cfg.cache_dir, "index.sqlite3").write_bytes(b"garbage" * 1000)
    proxy = Proxy(cfg, clock)
    try:
        assert proxy.request("/simple/alpha/")[0] == 200
    finally:
        proxy.stop()
    assert any(p.name.startswith("index.sqlite3.corrupt-") for p in Path(cfg.cache_dir).iterdir())


def test_leftover_temp_files_are_removed_at_start(cfg: pytail.ServeConfig, clock: Clock) -> None:
    tmp = Path(cfg.cache_dir, "+tmp")
    tmp.mkdir(parents=True)
    (tmp / "stale.part").write_bytes(b"partial")
    proxy = Proxy(cfg, clock)
    proxy.stop()
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("path", [
    "/packages/..%2F..%2Fetc%2Fpasswd", "/root/pypi/+f/../../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd", "/simple/..%5c..%5cx/",
])
def test_traversal_attempts_get_400_or_404(proxy: Proxy, path: str) -> None:  # URL-4
    status, _, body = proxy.request(path)
    assert status in (400, 404) and b"root:" not in body


# =============================================================================
# Real clients: pip and uv install through pytail (checklist P.9)
# =============================================================================


def client_env(tmp_path: Path) -> dict[str, str]:
    """An environment free of this machine's pip/uv configuration (extra indexes etc.)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_")) and k not in ("PYTHONPATH",)}
    env.update(HOME=str(home), PIP_CONFIG_FILE=os.devnull, XDG_CONFIG_HOME=str(home),
               UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never", PIP_NO_INPUT="1")
    return env


def have_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def pip_install(index: str, target: Path, tmp_path: Path, *packages: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
           "--target", str(target), "--index-url", index, *packages]
    result = subprocess.run(cmd, env=client_env(tmp_path), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def uv_install(index: str, target: Path, tmp_path: Path, *packages: str) -> None:
    if not have_module("uv"):
        if REQUIRE_CLIENTS:
            pytest.fail("uv is not installed (run .ci/run)")
        pytest.skip("uv is not installed")
    cmd = [sys.executable, "-m", "uv", "pip", "install", "--no-cache", "--python", sys.executable,
           "--target", str(target), "--index-url", index, *packages]
    result = subprocess.run(cmd, env=client_env(tmp_path), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def alpha_beta(upstream: FakeUpstream, dists: Path) -> None:
    """alpha 1.0 needs beta>=1.0; beta 2.0 needs Python >= 3.99 and must be skipped."""
    upstream.add("alpha", make_wheel(dists, "alpha", "1.0", requires=("beta>=1.0",)))
    upstream.add("beta", make_wheel(dists, "beta", "1.0"), make_sdist(dists, "beta", "1.0"))
    upstream.add("beta", make_wheel(dists, "beta", "2.0", requires_python=">=3.99"),
                 requires_python=">=3.99")


def installed_version(target: Path, module: str) -> str:
    text = (target / module / "__init__.py").read_text()
    return re.search(r"VERSION = '([^']+)'", text).group(1)  # type: ignore[union-attr]


@pytest.mark.parametrize("client", ["pip", "uv"])
@pytest.mark.parametrize("mode", ["json+metadata", "html-no-metadata"])
def test_real_client_installs_through_pytail(client: str, mode: str, proxy: Proxy,
                                             upstream: FakeUpstream, alpha_beta: None,
                                             tmp_path: Path) -> None:
    if mode == "html-no-metadata":
        upstream.json, upstream.metadata, upstream.etag = False, False, False
    target = tmp_path / "target"
    install = pip_install if client == "pip" else uv_install
    install(proxy.url + "/simple/", target, tmp_path, "alpha")
    assert installed_version(target, "alpha") == "1.0"
    assert installed_version(target, "beta") == "1.0"
    assert upstream.count("/files/alpha-1.0-py3-none-any.whl", "GET") >= 1
    if mode == "json+metadata":
        assert upstream.count("/files/beta-2.0") == 0  # skipped by requires-python, unfetched
    again = tmp_path / "again"
    files_before = upstream.count("/files/")
    install(proxy.url + "/simple/", again, tmp_path, "alpha")
    assert upstream.count("/files/") == files_before  # second install: all from the cache


# =============================================================================
# 10. Command line
# =============================================================================


@pytest.mark.parametrize("argv,message", [
    (["serve", "--packages-dir", "/nonexistent/dir", "--bind", "127.0.0.1:0"],
     "packages directory"),
])
def test_misconfiguration_is_one_line_exit_1(argv: list[str], message: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = pytail.main(argv + ["--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("pytail: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_port_in_use_is_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = pytail.main(["serve", "--bind", f"127.0.0.1:{port}", "--cache-dir",
                            str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 1 and "cannot listen" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["serve", "--bind", "nonsense"], ["serve", "--project-cache-ttl-secs", "-5"],
    ["serve", "--upstream-base-url", "ftp://x"], ["serve", "--max-connections", "0"], ["bogus"],
])
def test_argument_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        pytail.main(argv)
    assert exc.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_environment_variables_configure_serve(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("PYTAIL_BIND", "127.0.0.1:0")
    monkeypatch.setenv("PYTAIL_UPSTREAM_BASE_URL", "none")
    monkeypatch.setenv("PYTAIL_PROJECT_CACHE_TTL_SECS", "30")
    monkeypatch.setenv("PYTAIL_CACHE_DIR", str(tmp_path))
    ns = pytail.build_parser().parse_args(["serve"])
    config = pytail.serve_config(ns)
    assert (config.bind_port, config.upstream, config.ttl, config.cache_dir) == \
        (0, None, 30.0, str(tmp_path))


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        pytail.main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--bind", "--upstream-base-url", "--cache-dir", "--project-cache-ttl-secs",
                 "--request-timeout-secs", "--packages-dir", "--offline", "--max-connections"):
        assert flag in out
    readme = (HERE / "README.md").read_text()
    for command in (["serve"], ["manifest"], ["publish"], ["presign"], ["prefetch"],
                    ["cache", "stats"], ["cache", "prune"], ["cache", "verify"],
                    ["cache", "refresh"]):
        with pytest.raises(SystemExit):
            pytail.main([*command, "--help"])
        text = capsys.readouterr().out
        for flag in set(re.findall(r"(--[a-z][a-z-]+)", text)):
            assert flag in readme, f"{' '.join(command)} {flag} is not in the README"


def test_serve_subprocess_prints_url_and_stops_on_sigterm(tmp_path: Path,
                                                          upstream: FakeUpstream,
                                                          alpha: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "pytail.py"), "serve", "--bind", "127.0.0.1:0",
         "--cache-dir", str(tmp_path / "c"), "--upstream-base-url", upstream.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = re.search(r"(http://127\.0\.0\.1:\d+/)simple/", line).group(1)  # type: ignore
        with urllib.request.urlopen(url + "simple/alpha/", timeout=10) as resp:
            assert resp.status == 200 and alpha.name.encode() in resp.read()
        if Path("/proc/self/cmdline").exists():  # re-run from bytecode, same PID
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            assert argv[1:3] == [b"-P", b"-c"] and str(HERE / "pytail.py").encode() in argv
            assert argv[4].startswith(str(tmp_path / "c" / "+bytecode" / "pytail-").encode())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        log = proc.stderr.read()  # type: ignore[union-attr]
        assert '"GET /simple/alpha/" 200' in log and "MISS" in log  # one line per request
        assert "Traceback" not in log
    finally:
        proc.kill()
        proc.wait()


def test_serve_with_dash_m_runs_in_place(tmp_path: Path, upstream: FakeUpstream) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytail", "serve", "--bind", "127.0.0.1:0", "--cache-dir",
         str(tmp_path / "c"), "--upstream-base-url", upstream.url],
        cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = re.search(r"(http://127\.0\.0\.1:\d+/)simple/", line).group(1)  # type: ignore
        assert fetch(url + "health")[0] == 200
        assert b"-m" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert not (tmp_path / "c" / "+bytecode").exists()
    finally:
        proc.kill()
        proc.wait()


# =============================================================================
# 7. Own packages (the packages directory)
# =============================================================================


@pytest.fixture
def packages(tmp_path: Path) -> Path:
    path = tmp_path / "packages"
    path.mkdir()
    return path


@pytest.fixture
def local_proxy(proxy_factory: Callable[..., Proxy], packages: Path) -> Proxy:
    return proxy_factory(packages_dir=str(packages))


def test_local_page_and_files(local_proxy: Proxy, packages: Path) -> None:  # FN-10/11, JSON-5
    wheel = make_wheel(packages, "our-pkg", "1.2.3", requires_python=">=3.8")
    sdist = make_sdist(packages, "our-pkg", "1.2.3", requires_python=">=3.8")
    (packages / "README.txt").write_text("not a package")
    (packages / ".hidden-1.0.tar.gz").write_bytes(b"x")
    (packages / "our_pkg-1.2.4.tar.gz.part").write_bytes(b"partial upload")
    status, headers, body = local_proxy.request("/simple/our-pkg/", headers={"Accept": UV_ACCEPT})
    assert status == 200 and headers["x-pytail-cache"] == "LOCAL"
    assert headers["cache-control"] == pytail.REVALIDATE  # CACHE-2
    doc = json.loads(body)
    assert doc["versions"] == ["1.2.3"]
    by_name = {f["filename"]: f for f in doc["files"]}
    assert set(by_name) == {wheel.name, sdist.name}
    whl = by_name[wheel.name]
    assert whl["url"] == f"../../packages/{wheel.name}"
    assert whl["hashes"] == {"sha256": sha(wheel.read_bytes())}
    assert whl["requires-python"] == ">=3.8" and whl["size"] == wheel.stat().st_size
    assert whl["upload-time"].endswith("Z")
    assert whl["core-metadata"] == {"sha256": sha(wheel_metadata_bytes(wheel))}
    assert by_name[sdist.name]["core-metadata"] is False  # META-5: wheels only
    assert by_name[sdist.name]["requires-python"] == ">=3.8"  # from PKG-INFO
    status, headers, data = local_proxy.request(f"/packages/{wheel.name}")
    assert data == wheel.read_bytes() and headers["accept-ranges"] == "bytes"
    status, _, part = local_proxy.request(f"/packages/{wheel.name}", headers={"Range": "bytes=0-3"})
    assert status == 206 and part == b"PK\x03\x04"
    status, _, meta = local_proxy.request(f"/packages/{wheel.name}.metadata")
    assert meta == wheel_metadata_bytes(wheel)  # META-2: matches the advertised hash
    assert local_proxy.request(f"/packages/{sdist.name}.metadata")[0] == 404
    assert local_proxy.request("/packages/README.txt")[0] == 404
    assert local_proxy.request("/packages/our_pkg-1.2.4.tar.gz.part")[0] == 404
    _, _, html_page = local_proxy.request("/simple/our-pkg/")
    assert f'href="../../packages/{wheel.name}#sha256={sha(wheel.read_bytes())}"'.encode() \
        in html_page


def test_local_name_shadows_upstream(local_proxy: Proxy, packages: Path, upstream: FakeUpstream,
                                     dists: Path) -> None:  # UP-12, issue 3 item 3
    upstream.add("shadowed", make_wheel(dists, "shadowed", "99.0"))
    make_wheel(packages, "Shadowed", "1.0")
    for accept in (UV_ACCEPT, "text/html"):
        _, _, body = local_proxy.request("/simple/shadowed/", headers={"Accept": accept})
        assert b"shadowed-1.0-py3-none-any.whl" in body.lower() and b"99.0" not in body
    assert upstream.count("/simple/shadowed") == 0


def test_legacy_sdist_names_with_dashes(local_proxy: Proxy, packages: Path) -> None:  # FN-3
    make_sdist(packages, "some-pkg", "1.2.3", filename="some-pkg-1.2.3.tar.gz")
    make_sdist(packages, "python-3parclient", "4.2.0", filename="python-3parclient-4.2.0.tar.gz")
    make_sdist(packages, "pkg-1.0", "1", filename="pkg-1.0-1.tar.gz")  # PKG-INFO decides
    assert [f["filename"] for f in local_proxy.get_json("/simple/some-pkg/")["files"]] == \
        ["some-pkg-1.2.3.tar.gz"]
    assert local_proxy.get_json("/simple/python-3parclient/")["versions"] == ["4.2.0"]
    assert local_proxy.get_json("/simple/pkg-1-0/")["versions"] == ["1"]
    names = {p["name"] for p in local_proxy.get_json("/simple/")["projects"]}
    assert {"some-pkg", "python-3parclient", "pkg-1-0"} <= names


def test_replaced_file_gets_new_hash_on_next_request(local_proxy: Proxy,
                                                     packages: Path) -> None:
    wheel = make_wheel(packages, "churn", "1.0")
    first = local_proxy.get_json("/simple/churn/")["files"][0]["hashes"]["sha256"]
    make_wheel(packages, "churn", "1.0", payload=100)  # same name, new bytes, in place
    second = local_proxy.get_json("/simple/churn/")["files"][0]["hashes"]["sha256"]
    assert first != second == sha(wheel.read_bytes())
    assert local_proxy.request(f"/packages/{wheel.name}")[2] == wheel.read_bytes()
    make_wheel(packages, "churn", "1.1")
    assert local_proxy.get_json("/simple/churn/")["versions"] == ["1.0", "1.1"]
    wheel.unlink()
    assert local_proxy.get_json("/simple/churn/")["versions"] == ["1.1"]
    (packages / "churn-1.1-py3-none-any.whl").unlink()
    assert local_proxy.request("/simple/churn/")[0] in (404, 502)  # no longer local


def test_yank_with_sidecar(local_proxy: Proxy, packages: Path) -> None:  # YANK-1
    wheel = make_wheel(packages, "yanky", "1.0")
    (packages / f"{wheel.name}.yanked").write_text("broken <build>\n")
    doc = local_proxy.get_json("/simple/yanky/")
    assert doc["files"][0]["yanked"] == "broken <build>"
    _, _, body = local_proxy.request("/simple/yanky/")
    assert b'data-yanked="broken &lt;build&gt;"' in body
    (packages / f"{wheel.name}.yanked").unlink()
    assert local_proxy.get_json("/simple/yanky/")["files"][0]["yanked"] is False


def test_unparseable_files_logged_once(local_proxy: Proxy, packages: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:  # FN-6
    (packages / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    make_wheel(packages, "liar", "1.0", meta_name="someone-else")
    make_wheel(packages, "fine", "1.0")
    with caplog.at_level("WARNING", logger="pytail"):
        for _ in range(3):
            assert local_proxy.request("/simple/fine/")[0] == 200
            local_proxy.request("/simple/")
    warnings = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(warnings) == 2
    assert any("broken-1.0" in w and "unreadable wheel" in w for w in warnings)
    assert any("liar-1.0" in w and "does not match" in w for w in warnings)


def test_index_lists_local_and_cached_projects(local_proxy: Proxy, packages: Path,
                                               alpha: Path) -> None:  # issue 3 item 6
    make_wheel(packages, "mine", "1.0")
    local_proxy.request("/simple/alpha/")
    assert local_proxy.get_json("/simple/")["projects"] == [{"name": "alpha"}, {"name": "mine"}]


def test_catalogue_survives_restart_without_rehashing(cfg: pytail.ServeConfig, clock: Clock,
                                                      packages: Path) -> None:
    import dataclasses
    make_wheel(packages, "once", "1.0")
    config = dataclasses.replace(cfg, packages_dir=str(packages))
    first = Proxy(config, clock)
    first.request("/simple/once/")
    first.stop()
    db = pytail.Index(os.path.join(cfg.cache_dir, "index.sqlite3"))
    wheel = packages / "once-1.0-py3-none-any.whl"
    stat = wheel.stat()
    entry = db.local_file(wheel.name, stat.st_size, stat.st_mtime_ns)
    db.close()
    assert entry is not None and entry.sha256 == sha(wheel.read_bytes())


@pytest.mark.parametrize("client", ["pip", "uv"])
def test_local_package_depending_on_upstream(client: str, local_proxy: Proxy, packages: Path,
                                             upstream: FakeUpstream, alpha_beta: None,
                                             tmp_path: Path) -> None:
    make_wheel(packages, "internal-tool", "0.1", requires=("beta",))
    target = tmp_path / "target"
    (pip_install if client == "pip" else uv_install)(
        local_proxy.url + "/simple/", target, tmp_path, "internal-tool")
    assert installed_version(target, "internal_tool") == "0.1"
    assert installed_version(target, "beta") == "1.0"


@pytest.mark.parametrize("client", ["pip", "uv"])
def test_offline_installs_local_packages_with_upstream_stopped(
        client: str, proxy_factory: Callable[..., Proxy], packages: Path, tmp_path: Path,
        upstream: FakeUpstream) -> None:
    make_wheel(packages, "solo", "2.0")
    proxy = proxy_factory(packages_dir=str(packages), upstream=None)
    upstream.fail = "reset"
    target = tmp_path / "target"
    (pip_install if client == "pip" else uv_install)(proxy.url + "/simple/", target, tmp_path,
                                                     "solo")
    assert installed_version(target, "solo") == "2.0"
    assert upstream.requests == []


# =============================================================================
# 4. AWS Signature Version 4 (vectors) and 9. the S3 client
# =============================================================================

# AWS's published vectors live in the team's shared/ folder beside the repo (CI has it).
VECTORS_PATH = HERE.parent / "shared" / "spec" / "sigv4-vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8")) \
    if VECTORS_PATH.exists() else {}


def test_sigv4_vectors_are_present() -> None:
    if not VECTORS:
        message = f"{VECTORS_PATH} not found: the SigV4 vector tests did not run"
        pytest.fail(message) if REQUIRE_CLIENTS else pytest.skip(message)
UTC = datetime.timezone.utc
MIB = 1024 * 1024


def creds_of(c: dict[str, Any]) -> pytail.Credentials:
    return pytail.Credentials(c["access_key_id"], c["secret_access_key"], c.get("token"))


def when_of(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def signature_of(authorization: str) -> str:
    return authorization.rpartition("Signature=")[2]


def split_url(url: str) -> tuple[str, list[tuple[str, str]]]:
    parts = urllib.parse.urlsplit(url)
    return parts.path, pytail.parse_query(parts.query)


# =============================================================================
# 4. AWS Signature Version 4: published and generated vectors (all of sigv4-vectors.json)
# =============================================================================

S3_CREDS = VECTORS.get("credentials_s3_examples", {})
R2 = VECTORS.get("botocore_generated_r2_cases_NOT_PUBLISHED",
                 {"header_cases": [], "presigned_cases": [], "credentials": {}})
SUITE_CREDS = VECTORS.get("credentials_generic_suite", {})


def check_header_vector(v: dict[str, Any], creds: pytail.Credentials, region: str,
                        when: datetime.datetime) -> dict[str, str]:
    """Sign like S3Client does and assert canonical request, string to sign, signature."""
    if v["payload_hash"] != pytail.UNSIGNED_PAYLOAD:
        assert hashlib.sha256(v["body"].encode()).hexdigest() == v["payload_hash"]
    sent = pytail.sign_headers(v["method"], v["url"], v["headers"], v["payload_hash"], creds,
                           region, "s3", when)
    signed = {k: val for k, val in sent.items() if k != "authorization"}
    assert pytail.canonical_headers(v["headers"])[1] == v["signed_headers"]
    path, query = split_url(v["url"])
    creq = pytail.canonical_request(v["method"], path, query, signed, v["payload_hash"])
    assert creq == v["canonical_request"]
    scope = pytail.credential_scope(when, region, "s3")
    assert pytail.string_to_sign(when, scope, creq) == v["string_to_sign"]
    assert signature_of(sent["authorization"]) == v["signature"]
    return sent


@pytest.mark.parametrize("v", VECTORS.get("s3_header_examples", []), ids=lambda v: v["name"])
def test_s3_header_examples(v: dict[str, Any]) -> None:
    sent = check_header_vector(v, creds_of(S3_CREDS), "us-east-1", when_of(S3_CREDS["amz_date"]))
    # AWS prints the compact "…,SignedHeaders=…,Signature=…"; we send botocore's ", " form.
    published = v["authorization"].replace(",SignedHeaders=", ", SignedHeaders=")
    assert sent["authorization"] == published.replace(",Signature=", ", Signature=")


@pytest.mark.parametrize("v", R2["header_cases"], ids=lambda v: v["name"])
def test_r2_header_cases(v: dict[str, Any]) -> None:
    c = R2["credentials"]
    check_header_vector(v, creds_of(c), c["region"], when_of(c["amz_date"]))
    client = pytail.S3Client(f"https://{c['host']}", "pkgs", creds_of(c))
    assert client.url(v["object_key"], v["query_params"]) == v["url"]


def check_presigned(v: dict[str, Any], creds: pytail.Credentials, region: str,
                    when: datetime.datetime) -> None:
    url = pytail.presign_url(v["method"], v["url"], creds, region, when, v["expires"])
    assert url == v["presigned_url"]
    path, query = split_url(url)
    host = urllib.parse.urlsplit(url).netloc
    unsigned = [(k, val) for k, val in query if k != "X-Amz-Signature"]
    creq = pytail.canonical_request(v["method"], path, unsigned, {"Host": host}, pytail.UNSIGNED_PAYLOAD)
    assert creq == v["canonical_request"]
    sts = pytail.string_to_sign(when, pytail.credential_scope(when, region, "s3"), creq)
    assert sts == v["string_to_sign"]
    assert dict(query)["X-Amz-Signature"] == v["signature"]


@pytest.mark.parametrize("v", VECTORS.get("s3_presigned_examples", []), ids=lambda v: v["name"])
def test_s3_presigned_examples(v: dict[str, Any]) -> None:
    check_presigned(v, creds_of(S3_CREDS), "us-east-1", when_of(S3_CREDS["amz_date"]))


@pytest.mark.parametrize("v", R2["presigned_cases"], ids=lambda v: v["name"])
def test_r2_presigned_cases(v: dict[str, Any]) -> None:
    c = R2["credentials"]
    check_presigned(v, creds_of(c), c["region"], when_of(c["amz_date"]))


@pytest.mark.parametrize("c", [S3_CREDS, SUITE_CREDS, R2["credentials"]] if VECTORS else [],
                         ids=["s3-examples", "generic-suite", "r2-generated"] if VECTORS else [])
def test_derived_signing_key(c: dict[str, str]) -> None:
    key = pytail.signing_key(c["secret_access_key"], c["amz_date"][:8], c["region"], c["service"])
    if "derived_signing_key_hex" in c:
        assert key.hex() == c["derived_signing_key_hex"]
    else:  # R2 block publishes none: its header signatures pin the key instead
        assert len(key) == 32


def parse_suite_request(text: str) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """Method, target, headers (obs-fold continuations kept) and body of a request.txt."""
    head, _, body = text.partition("\n\n")
    first, *lines = head.split("\n")
    method, _, rest = first.partition(" ")
    headers: list[tuple[str, str]] = []
    for line in filter(None, lines):
        if line[0] in " \t":
            headers[-1] = (headers[-1][0], headers[-1][1] + "\n" + line)
        else:
            name, _, value = line.partition(":")
            headers.append((name, value))
    return method, rest.rpartition(" ")[0], headers, body.encode()


def merged(headers: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        key, value = name.lower(), " ".join(value.split())
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


class SuiteCase:
    """One generic-suite case, with the S3 signer's optional generic-service switches."""

    def __init__(self, case: dict[str, Any]) -> None:
        ctx = case["context"]
        self.case, self.normalize, self.sign_body = case, ctx["normalize"], ctx["sign_body"]
        self.method, target, self.headers, body = parse_suite_request(case["request"])
        host = dict((k.lower(), v) for k, v in self.headers)["host"]
        self.url, self.path = f"https://{host}{target}", target.partition("?")[0]
        self.payload = hashlib.sha256(body).hexdigest()
        self.token = ctx["credentials"].get("token")
        # omit_session_token: sign as if there were no token, append it afterwards.
        omit = ctx.get("omit_session_token", False)
        self.creds = creds_of({**ctx["credentials"], "token": None if omit else self.token})
        self.when = datetime.datetime.fromisoformat(ctx["timestamp"].replace("Z", "+00:00"))
        self.region, self.service = ctx["region"], ctx["service"]

    def signed_request(self, variant: str) -> tuple[str, list[tuple[str, str]]]:
        _, target, headers, _ = parse_suite_request(self.case[variant]["signed_request"])
        return target, headers


@pytest.mark.parametrize("case", VECTORS.get("generic_suite", []), ids=lambda c: c["name"])
def test_generic_suite_header(case: dict[str, Any]) -> None:
    t, want = SuiteCase(case), case["header"]
    sent = pytail.sign_headers(t.method, t.url, t.headers, t.payload, t.creds, t.region, t.service,
                           t.when, normalize=t.normalize, sign_payload=t.sign_body)
    signed = {k: v for k, v in sent.items() if k != "authorization"}
    creq = pytail.canonical_request(t.method, t.path, split_url(t.url)[1], signed, t.payload,
                                normalize=t.normalize)
    assert creq == want["canonical_request"]
    scope = pytail.credential_scope(t.when, t.region, t.service)
    assert pytail.string_to_sign(t.when, scope, creq) == want["string_to_sign"]
    assert signature_of(sent["authorization"]) == want["signature"]
    if t.token and t.creds.session_token is None:
        sent["x-amz-security-token"] = t.token
    assert sent == merged(t.signed_request("header")[1])  # incl. Authorization, byte for byte


@pytest.mark.parametrize("case", VECTORS.get("generic_suite", []), ids=lambda c: c["name"])
def test_generic_suite_query(case: dict[str, Any]) -> None:
    t, want = SuiteCase(case), case["query"]
    url = pytail.presign_url(t.method, t.url, t.creds, t.region, t.when,
                         case["context"]["expiration_in_seconds"], t.service,
                         headers=t.headers, payload_hash=t.payload, normalize=t.normalize)
    query = split_url(url)[1]
    unsigned = [(k, v) for k, v in query if k != "X-Amz-Signature"]
    creq = pytail.canonical_request(t.method, t.path, unsigned, t.headers, t.payload,
                                normalize=t.normalize)
    assert creq == want["canonical_request"]
    scope = pytail.credential_scope(t.when, t.region, t.service)
    assert pytail.string_to_sign(t.when, scope, creq) == want["string_to_sign"]
    assert dict(query)["X-Amz-Signature"] == want["signature"]
    if t.token and t.creds.session_token is None:
        query.append(("X-Amz-Security-Token", t.token))
    target = t.signed_request("query")[0]
    assert sorted(query) == sorted(split_url(target)[1])  # same parameters, any order


@pytest.mark.parametrize("s, encode_slash, expected", [
    ("simple/foo/", False, "simple/foo/"),
    ("simple/foo/", True, "simple%2Ffoo%2F"),
    ("a b+c~(1)!*'=&.txt", False, "a%20b%2Bc~%281%29%21%2A%27%3D%26.txt"),
    ("ünï", False, "%C3%BCn%C3%AF"),
    ("-._~AZaz09", True, "-._~AZaz09"),
    ("x:y@z$", True, "x%3Ay%40z%24"),
])
def test_uri_encode(s: str, encode_slash: bool, expected: str) -> None:
    assert pytail.uri_encode(s, encode_slash) == expected


@pytest.mark.parametrize("path, normalize, expected", [
    ("/pkgs/simple/foo/", False, "/pkgs/simple/foo/"),
    ("/a%20b", False, "/a%20b"),
    ("/a b", False, "/a%20b"),
    ("/x%252Fy", False, "/x%252Fy"),  # key "x%2Fy" stays itself
    ("//a/./b/../", False, "//a/./b/../"),  # S3: never normalised
    ("//a/./b/../", True, "/a/"),
    ("", False, "/"),
])
def test_canonical_uri(path: str, normalize: bool, expected: str) -> None:
    assert pytail.canonical_uri(path, normalize) == expected


def test_credentials_repr_hides_secret_and_token() -> None:
    creds = pytail.Credentials("AKID", "s3cr3t-value", "t0ken-value")
    assert "AKID" in repr(creds)
    for text in (repr(creds), str(creds), repr(pytail.S3Client("http://127.0.0.1:1", "b", creds))):
        assert "s3cr3t" not in text and "t0ken" not in text


def test_sign_headers_adds_session_token_and_fresh_date() -> None:
    creds = pytail.Credentials("AKID", "secret", "TOKEN")
    plus_one = datetime.timezone(datetime.timedelta(hours=1))
    when = datetime.datetime(2025, 1, 1, 13, 0, tzinfo=plus_one)
    sent = pytail.sign_headers("GET", "http://127.0.0.1:9000/b/k", {}, pytail.EMPTY_SHA256, creds,
                           "auto", "s3", when)
    assert sent["x-amz-date"] == "20250101T120000Z"  # converted to UTC
    assert sent["x-amz-security-token"] == "TOKEN"
    assert "x-amz-security-token" in sent["authorization"]
    assert sent["host"] == "127.0.0.1:9000"


def test_presign_rejects_bad_expiry() -> None:
    with pytest.raises(pytail.PytailError, match="expiry"):
        pytail.presign_url("GET", "https://h/b/k", pytail.Credentials("a", "b"), "auto",
                       datetime.datetime(2025, 1, 1, tzinfo=UTC), 604801)


# =============================================================================
# 9. S3 client: pure parts
# =============================================================================

@pytest.mark.parametrize("size, expected", [
    (0, 5 * MIB),
    (1, 5 * MIB),
    (11 * MIB, 5 * MIB),
    (5 * MIB * 10_000, 5 * MIB),  # exactly 10,000 parts of the minimum
    (5 * MIB * 10_000 + 1, 6 * MIB),  # one byte more: next whole MiB
    (100 * 1024 * MIB, 11 * MIB),  # 100 GiB
    (1024 * 1024 * MIB, 105 * MIB),  # 1 TiB
])
def test_plan_parts(size: int, expected: int) -> None:
    part = pytail.plan_parts(size)
    assert part == expected
    assert part >= pytail.S3_MIN_PART and -(-size // part) <= pytail.S3_MAX_PARTS


def test_plan_parts_custom_limits_and_too_large() -> None:
    assert pytail.plan_parts(100, min_part=10, max_parts=20) == 10
    assert pytail.plan_parts(3 * MIB, min_part=1, max_parts=2) == 2 * MIB
    with pytest.raises(pytail.PublishError, match="too large"):
        pytail.plan_parts(pytail.S3_MAX_PART * pytail.S3_MAX_PARTS + 1)


def test_s3_error_is_one_line() -> None:
    err = pytail.S3Error("SlowDown", "Please reduce\n  your request rate.", "PUT", "a\nb", 503)
    assert str(err) == "S3 SlowDown: Please reduce your request rate. (PUT a b, HTTP 503)"
    assert isinstance(err, pytail.PublishError)


def test_metadata_must_be_ascii() -> None:
    client = pytail.S3Client("http://127.0.0.1:1", "b", pytail.Credentials("a", "b"))
    with pytest.raises(pytail.PublishError, match="metadata"):
        client.put_object("k", b"", metadata={"sha256": "é"})


# =============================================================================
# 9. S3 client against a scripted loopback server (retries, multipart protocol)
# =============================================================================

Reply = tuple[int, dict[str, str], bytes]


class FakeS3:
    """A ThreadingHTTPServer on 127.0.0.1 whose replies come from `self.handler`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.handler: Callable[[str, str, bytes], Reply | None] = lambda m, p, b: (200, {}, b"")
        self.release = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                fake.requests.append((self.command, self.path,
                                      {k.lower(): v for k, v in self.headers.items()}, body))
                reply = fake.handler(self.command, self.path, body)
                if reply is None:  # hang until the client gives up
                    fake.release.wait(5)
                    return
                status, headers, data = reply
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def error_xml(code: str, message: str) -> bytes:
    return (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            f"<Message>{message}</Message><RequestId>1</RequestId></Error>").encode()


@pytest.fixture
def fake() -> Iterator[FakeS3]:
    server = FakeS3()
    yield server
    server.close()


class Recorder:
    """Injected sleep and clock: records delays, and ticks one second per reading."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.ticks = itertools.count()

    def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)

    def clock(self) -> datetime.datetime:
        start = datetime.datetime(2025, 1, 1, tzinfo=UTC)
        return start + datetime.timedelta(seconds=next(self.ticks))


SECRET = "fake-secret-never-logged"


def client_for(url: str, rec: Recorder, **kw: Any) -> pytail.S3Client:
    return pytail.S3Client(url, "bkt", pytail.Credentials("AKID", SECRET, "TOKEN-never-logged"),
                       clock=rec.clock, sleep=rec.sleep, **kw)


def test_retries_503_then_succeeds(fake: FakeS3, caplog: pytest.LogCaptureFixture) -> None:
    slow_down = error_xml("SlowDown", "Please reduce your request rate.")
    replies: Iterator[Reply | None] = iter([(503, {}, slow_down),
                    (503, {}, b""), (200, {"ETag": '"x"'}, b"")])
    fake.handler = lambda m, p, b: next(replies)
    rec = Recorder()
    caplog.set_level(logging.DEBUG, logger="pytail")
    client_for(fake.url, rec, backoff_base=0.25).put_object("dir/a b.txt", b"data")
    assert len(fake.requests) == 3 and rec.sleeps == [0.25, 0.5]
    dates = {headers["x-amz-date"] for _, _, headers, _ in fake.requests}
    assert len(dates) == 3  # re-signed for every attempt
    assert all(r[0:2] == ("PUT", "/bkt/dir/a%20b.txt") and r[3] == b"data" for r in fake.requests)
    assert "SlowDown" in caplog.text
    assert SECRET not in caplog.text and "never-logged" not in caplog.text
    assert "Signature=" not in caplog.text


def test_retries_exhausted_raises_last_error(fake: FakeS3) -> None:
    fake.handler = lambda m, p, b: (500, {}, error_xml("InternalError", "We encountered an error."))
    rec = Recorder()
    with pytest.raises(pytail.S3Error) as info:
        client_for(fake.url, rec, retries=2).get_object("k")
    assert str(info.value) == "S3 InternalError: We encountered an error. (GET k, HTTP 500)"
    assert len(fake.requests) == 3 and rec.sleeps == [0.2, 0.4]


def test_429_is_retried_403_is_not(fake: FakeS3) -> None:
    denied = error_xml("AccessDenied", "Access Denied")
    replies: Iterator[Reply | None] = iter([(429, {}, b""), (403, {}, denied)])
    fake.handler = lambda m, p, b: next(replies)
    rec = Recorder()
    with pytest.raises(pytail.S3Error,
                       match=r"^S3 AccessDenied: Access Denied \(DELETE k, HTTP 403\)$"):
        client_for(fake.url, rec).delete_object("k")
    assert len(fake.requests) == 2 and rec.sleeps == [0.2]


def test_head_404_is_none_and_bodyless_403_is_named(fake: FakeS3) -> None:
    replies: Iterator[Reply | None] = iter([(404, {}, b""), (403, {}, b"")])
    fake.handler = lambda m, p, b: next(replies)
    client = client_for(fake.url, Recorder())
    assert client.head_object("missing") is None
    with pytest.raises(pytail.S3Error, match=r"^S3 Forbidden: .*\(HEAD k, HTTP 403\)$"):
        client.head_object("k")


def test_timeout_is_retried(fake: FakeS3) -> None:
    replies: Iterator[Reply | None] = iter([None, (200, {}, b"late")])
    fake.handler = lambda m, p, b: next(replies)
    rec = Recorder()
    assert client_for(fake.url, rec, timeout=0.3).get_object("k") == b"late"
    assert rec.sleeps == [0.2]


def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rec = Recorder()
    with pytest.raises(pytail.S3Error, match=r"^S3 ConnectionRefusedError: .*\(GET k, no response\)$"):
        client_for(f"http://127.0.0.1:{port}", rec, retries=2).get_object("k")
    assert rec.sleeps == [0.2, 0.4]


def multipart_handler(fail_part: int | None = None, error_in_complete: bool = False
                      ) -> Callable[[str, str, bytes], Reply]:
    completes = itertools.count()

    def handle(method: str, path: str, body: bytes) -> Reply:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query, True))
        if method == "POST" and "uploads" in query:
            return 200, {}, b"<InitiateMultipartUploadResult><UploadId>u+/=1</UploadId>" \
                            b"</InitiateMultipartUploadResult>"
        if method == "PUT" and query.get("partNumber") == str(fail_part):
            return 403, {}, error_xml("AccessDenied", "Access Denied")
        if method == "PUT":
            return 200, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}, b""
        if method == "POST" and error_in_complete and next(completes) == 0:
            return 200, {}, error_xml("InternalError", "try again")
        return (204 if method == "DELETE" else 200), {}, b"<CompleteMultipartUploadResult/>"
    return handle


def test_multipart_protocol(fake: FakeS3, tmp_path: Path) -> None:
    data = bytes(range(256)) * (50 * 1024)  # 12.5 MiB: parts 5, 5, 2.5 MiB
    path = tmp_path / "big.whl"
    path.write_bytes(data)
    fake.handler = multipart_handler(error_in_complete=True)
    rec = Recorder()
    client_for(fake.url, rec).put_file("pkgs/big.whl", str(path), len(data),
                                       multipart_threshold=MIB, metadata={"sha256": "abc"},
                                       content_type="application/zip")
    create, *parts, complete, complete_again = fake.requests
    assert create[1] == "/bkt/pkgs/big.whl?uploads="
    assert create[2]["x-amz-meta-sha256"] == "abc"
    assert create[2]["content-type"] == "application/zip"
    assert [len(p[3]) for p in parts] == [5 * MIB, 5 * MIB, len(data) - 10 * MIB]
    for number, (method, target, headers, body) in enumerate(parts, start=1):
        assert target == f"/bkt/pkgs/big.whl?partNumber={number}&uploadId=u%2B%2F%3D1"
        assert headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
        assert headers["content-length"] == str(len(body))
    assert b"".join(p[3] for p in parts) == data
    assert complete[3] == complete_again[3] and complete[3].count(b"<Part>") == 3
    assert rec.sleeps == [0.2]  # the <Error> inside a 200 was retried


def test_multipart_aborts_on_failure(fake: FakeS3, tmp_path: Path) -> None:
    path = tmp_path / "big.whl"
    path.write_bytes(b"x" * (11 * MIB))
    fake.handler = multipart_handler(fail_part=2)
    with pytest.raises(pytail.S3Error, match="AccessDenied"):
        client_for(fake.url, Recorder()).put_file("big.whl", str(path), 11 * MIB,
                                                  multipart_threshold=MIB)
    assert [r[0] for r in fake.requests] == ["POST", "PUT", "PUT", "DELETE"]
    assert fake.requests[-1][1] == "/bkt/big.whl?uploadId=u%2B%2F%3D1"


def test_put_file_single_streams_and_hashes(fake: FakeS3, tmp_path: Path) -> None:
    path = tmp_path / "f.tar.gz"
    path.write_bytes(b"abc" * 1000)
    client_for(fake.url, Recorder()).put_file("f.tar.gz", str(path), 3000, cache_control="no-cache")
    (method, target, headers, body), = fake.requests
    assert (method, body, headers["cache-control"]) == ("PUT", b"abc" * 1000, "no-cache")
    assert headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()


def test_put_file_shorter_than_size_is_not_sent(fake: FakeS3, tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"abc")
    with pytest.raises(pytail.PublishError, match="ended before byte"):
        client_for(fake.url, Recorder()).put_file("k", str(path), 10)
    assert fake.requests == []


# =============================================================================
# 9. S3 client against moto_server with SigV4 checking on
# =============================================================================

MOTO_RAW_URI = (5, 2, 5)  # first moto that checks SigV4 against the request URI as sent


class Moto:
    """A running moto_server with SigV4 checking on, its bucket and IAM credentials."""

    def __init__(self, url: str, bucket: str, creds: pytail.Credentials,
                 version: tuple[int, ...]) -> None:
        self.url, self.bucket, self.creds, self.version = url, bucket, creds, version


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 20) -> None:
    """Bounded polling until `url` answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def bootstrap_moto(endpoint: str, bucket: str) -> pytail.Credentials:
    """IAM user with s3:*, its key, the bucket; then switch signature checking on."""
    import boto3  # test-only: pytail itself never uses it

    kw: dict[str, Any] = dict(endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam, client = boto3.client("iam", **kw), boto3.client("s3", **kw)
    iam.create_user(UserName="ci")
    iam.put_user_policy(UserName="ci", PolicyName="s3-all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="ci")["AccessKey"]
    client.create_bucket(Bucket=bucket)
    urllib.request.urlopen(urllib.request.Request(
        endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
        headers={"Content-Type": "text/plain"}), timeout=10).read()
    return pytail.Credentials(key["AccessKeyId"], key["SecretAccessKey"])


def moto_version(python: str) -> tuple[int, ...] | None:
    """moto's version as importable by `python` (with its server extra), or None."""
    probe = subprocess.run([python, "-c", "import moto, moto.server; print(moto.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode:
        return None
    return tuple(int(n) for n in re.findall(r"\d+", probe.stdout)[:3])


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """moto_server on a free 127.0.0.1 port, run by $PYTAIL_MOTO_PYTHON or this interpreter."""
    python = os.environ.get("PYTAIL_MOTO_PYTHON") or sys.executable
    version = moto_version(python)
    if version is None:
        if REQUIRE_CLIENTS:
            pytest.fail(f"moto[server] is not importable by {python} (run .ci/run)")
        pytest.skip(f"moto[server] is not importable by {python}")
    port = free_port()
    logfile = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=logfile, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(url + "/moto-api/")
        yield Moto(url, "pytail-test", bootstrap_moto(url, "pytail-test"), version)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        logfile.close()


@pytest.fixture
def client(moto: Moto) -> pytail.S3Client:
    return pytail.S3Client(moto.url, moto.bucket, moto.creds, "auto", retries=0)


@pytest.fixture
def prefix() -> str:
    """A unique key prefix per test (no '/', see test_moto_round_trip_odd_keys)."""
    return f"t-{uuid.uuid4().hex[:8]}-"


def test_moto_wrong_secret_is_one_line_signature_error(moto: Moto, prefix: str) -> None:
    bad = pytail.Credentials(moto.creds.access_key, "wrong-" + moto.creds.secret_key)
    with pytest.raises(pytail.S3Error) as info:
        pytail.S3Client(moto.url, moto.bucket, bad, retries=0).put_object(prefix + "x", b"x")
    text = str(info.value)
    assert text.startswith("S3 SignatureDoesNotMatch: ")
    assert text.endswith(f"(PUT {prefix}x, HTTP 403)")
    assert "\n" not in text and bad.secret_key not in text
    assert info.value.code == "SignatureDoesNotMatch"


def round_trip(client: pytail.S3Client, prefix: str, keys: list[str]) -> None:
    """put with headers and metadata, then list, head and get every key back."""
    bodies = {prefix + key: f"<html>{i}</html>".encode() for i, key in enumerate(keys)}
    for key, body in bodies.items():
        client.put_object(key, body, content_type="text/html", cache_control="max-age=60",
                          metadata={"sha256": hashlib.sha256(body).hexdigest()})
    listed = client.list_objects(prefix)
    assert sorted(listed) == sorted(bodies)
    for key, body in bodies.items():
        head = client.head_object(key)
        assert head is not None
        assert head["x-amz-meta-sha256"] == hashlib.sha256(body).hexdigest()
        assert (head["content-type"], head["cache-control"]) == ("text/html", "max-age=60")
        assert client.get_object(key) == body
        assert (listed[key].size, listed[key].etag) == (len(body), hashlib.md5(body).hexdigest())


def test_moto_round_trip(client: pytail.S3Client, prefix: str) -> None:
    round_trip(client, prefix, ["simple/", "simple/foo/", "simple/foo/index.html",
                                "pkgs/foo-1.0-py3-none-any.whl", "a//b/./c/../d"])


def test_moto_round_trip_odd_keys(moto: Moto, client: pytail.S3Client, prefix: str) -> None:
    if moto.version < MOTO_RAW_URI:
        pytest.skip("moto < 5.2.5 checks SigV4 against werkzeug's IRI-decoded URL, so every"
                    " correct signer (botocore too) gets SignatureDoesNotMatch for reserved or"
                    " UTF-8 key characters and '/' in query values; run with"
                    " PYTAIL_MOTO_PYTHON=<python with moto[server]>=5.2.5>")
    round_trip(client, prefix + "odd/", ["a b+c~(1).txt", "ünï/çødé.txt",
                                         "odd!*'=&:@$,;.txt", "x%2Fy", "sp ace/"])


def test_moto_missing_objects(client: pytail.S3Client, prefix: str) -> None:
    assert client.head_object(prefix + "nope") is None
    with pytest.raises(pytail.S3Error, match=rf"^S3 NoSuchKey: .*\(GET {prefix}nope, HTTP 404\)$"):
        client.get_object(prefix + "nope")
    assert client.list_objects(prefix) == {}


def test_moto_pagination(client: pytail.S3Client, prefix: str,
                         caplog: pytest.LogCaptureFixture) -> None:
    keys = [f"{prefix}p{i}" for i in range(5)]
    for key in keys:
        client.put_object(key, b"")
    caplog.set_level(logging.DEBUG, logger="pytail")
    assert sorted(client.list_objects(prefix + "p", page_size=2)) == keys
    assert caplog.text.count(f"S3 GET bucket {client.bucket}: HTTP 200") == 3


def test_moto_multipart_keeps_metadata(client: pytail.S3Client, prefix: str,
                                       tmp_path: Path) -> None:
    data = hashlib.sha256(b"seed").digest() * (11 * MIB // 32)  # 11 MiB: parts 5, 5, 1
    path = tmp_path / "big.whl"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    client.put_file(prefix + "big.whl", str(path), len(data), multipart_threshold=5 * MIB,
                    part_size=5 * MIB, metadata={"sha256": digest}, cache_control="immutable")
    head = client.head_object(prefix + "big.whl")
    assert head is not None
    assert head["x-amz-meta-sha256"] == digest and head["cache-control"] == "immutable"
    assert head["content-length"] == str(len(data)) and head["etag"].endswith('-3"')
    assert client.get_object(prefix + "big.whl") == data


def test_moto_multipart_failure_aborts(client: pytail.S3Client, prefix: str,
                                       tmp_path: Path) -> None:
    path = tmp_path / "short.whl"
    path.write_bytes(b"y" * (11 * MIB))  # promised 12 MiB: part 3 cannot be read
    with pytest.raises(pytail.PublishError, match="ended before byte"):
        client.put_file(prefix + "short.whl", str(path), 12 * MIB, multipart_threshold=MIB,
                        part_size=5 * MIB)
    pending = ET.fromstring(client._request("GET", None, [("uploads", "")]).body)
    keys = [u.findtext("{*}Key") for u in pending.iterfind("{*}Upload")]
    assert prefix + "short.whl" not in keys
    assert client.list_objects(prefix) == {}


def test_moto_delete(client: pytail.S3Client, prefix: str) -> None:
    client.put_object(prefix + "gone", b"x")
    client.delete_object(prefix + "gone")
    assert client.head_object(prefix + "gone") is None
    client.delete_object(prefix + "gone")  # deleting a missing key is not an error


# =============================================================================
# 9. Manifest and publishing (against moto, then served back as a static index)
# =============================================================================


def test_manifest_is_deterministic_and_documented(packages: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    wheel = make_wheel(packages, "pub-a", "1.0", requires_python=">=3.9")
    make_sdist(packages, "pub-a", "0.9")
    (packages / f"{wheel.name}.yanked").write_text("oops")
    out = tmp_path / "manifest-v1.json"
    assert pytail.main(["manifest", str(packages), "-o", str(out),
                        "--cache-dir", str(tmp_path / "c1")]) == 0
    assert pytail.main(["manifest", str(packages), "--cache-dir", str(tmp_path / "c2")]) == 0
    assert capsys.readouterr().out.encode() == out.read_bytes()  # same dir, same bytes
    doc = json.loads(out.read_bytes())
    assert doc["manifest-version"] == 1
    files = {f["filename"]: f for f in doc["projects"]["pub-a"]["files"]}
    entry = files[wheel.name]
    assert entry == {"filename": wheel.name, "sha256": sha(wheel.read_bytes()),
                     "size": wheel.stat().st_size, "requires-python": ">=3.9",
                     "upload-time": entry["upload-time"],
                     "core-metadata-sha256": sha(wheel_metadata_bytes(wheel)), "yanked": "oops"}
    assert files["pub_a-0.9.tar.gz"]["core-metadata-sha256"] is None
    assert doc["projects"]["pub-a"]["versions"] == ["0.9", "1.0"]
    readme = (HERE / "README.md").read_text()
    for key in ("manifest-version", "core-metadata-sha256", "upload-time", "yanked"):
        assert key in readme


def test_manifest_missing_dir_is_one_line(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    assert pytail.main(["manifest", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.startswith("pytail: error: package directory")


@pytest.mark.parametrize("endpoint,allow,ok", [
    ("https://acct.r2.cloudflarestorage.com", False, True),
    ("http://127.0.0.1:9000", False, True), ("http://localhost:9000", False, True),
    ("http://10.0.0.5:9000", False, False), ("http://10.0.0.5:9000", True, True),
    ("ftp://x", True, False),
])
def test_plain_http_only_for_loopback(endpoint: str, allow: bool, ok: bool) -> None:
    if ok:
        assert pytail.check_endpoint(endpoint, allow) == endpoint
    else:
        with pytest.raises(pytail.ConfigError):
            pytail.check_endpoint(endpoint, allow)


def test_rclone_remote() -> None:
    text = ("[r2]\ntype = s3\nprovider = Cloudflare\naccess_key_id = AK\n"
            "secret_access_key = SK\nendpoint = https://acct.r2.cloudflarestorage.com\n"
            "[gd]\ntype = drive\n")
    creds, endpoint, region = pytail.rclone_remote(text, "r2")
    assert (creds.access_key, creds.secret_key, endpoint, region) == \
        ("AK", "SK", "https://acct.r2.cloudflarestorage.com", None)
    for remote in ("gd", "missing"):
        with pytest.raises(pytail.ConfigError):
            pytail.rclone_remote(text, remote)


@pytest.fixture
def bucket_env(moto: Moto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Any]:
    """Runs `pytail publish` against moto with credentials in the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.creds.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.creds.secret_key)
    prefix = f"pub-{uuid.uuid4().hex[:8]}"

    def run(directory: Path, *extra: str) -> int:
        return pytail.main(["publish", str(directory), "--bucket", moto.bucket, "--endpoint",
                            moto.url, "--prefix", prefix, "--cache-dir", str(tmp_path / "pc"),
                            *extra])
    run.prefix = prefix  # type: ignore[attr-defined]
    return run


def uploaded(out: str) -> list[str]:
    return sorted(line.split()[1] for line in out.splitlines() if line.startswith("uploaded "))


def test_publish_is_incremental(bucket_env: Callable[..., Any], packages: Path, moto: Moto,
                                capsys: pytest.CaptureFixture[str]) -> None:
    make_wheel(packages, "pub-a", "1.0")
    make_sdist(packages, "pub-b", "2.0")
    assert bucket_env(packages) == 0
    out = capsys.readouterr().out
    p = bucket_env.prefix + "/"  # type: ignore[attr-defined]
    assert uploaded(out) == sorted(p + k for k in [
        "packages/pub_a-1.0-py3-none-any.whl", "packages/pub_a-1.0-py3-none-any.whl.metadata",
        "packages/pub_b-2.0.tar.gz", "simple/pub-a/", "simple/pub-a/index.html",
        "simple/pub-b/", "simple/pub-b/index.html", "simple/", "simple/index.html",
        "simple/manifest-v1.json"])
    assert out.splitlines()[-1].startswith("published: 10 uploaded, 0 skipped, 0 deleted, ")
    assert out.splitlines()[-2] == f"uploaded {p}simple/manifest-v1.json " \
        f"({len(S3View(moto, p).get('simple/manifest-v1.json'))} bytes)"  # manifest last
    assert bucket_env(packages) == 0
    again = capsys.readouterr().out
    assert uploaded(again) == [] and "0 uploaded, 10 skipped" in again
    make_wheel(packages, "pub-a", "1.1")
    assert bucket_env(packages) == 0
    assert uploaded(capsys.readouterr().out) == sorted(p + k for k in [
        "packages/pub_a-1.1-py3-none-any.whl", "packages/pub_a-1.1-py3-none-any.whl.metadata",
        "simple/pub-a/", "simple/pub-a/index.html", "simple/manifest-v1.json"])
    view = S3View(moto, p)
    head = view.client.head_object(p + "packages/pub_a-1.1-py3-none-any.whl")
    assert head is not None and head["cache-control"] == pytail.IMMUTABLE
    assert head["x-amz-meta-sha256"] == sha((packages / "pub_a-1.1-py3-none-any.whl").read_bytes())
    assert "content-encoding" not in view.client.head_object(p + "packages/pub_b-2.0.tar.gz")
    page = view.client.head_object(p + "simple/pub-a/")
    assert page["content-type"] == "text/html; charset=utf-8"
    body = view.get("simple/pub-a/")
    assert b"data-upload-time=" in body and b"data-size=" in body  # HTML-9 for uv
    assert "must-revalidate" in page["cache-control"]


class S3View:
    """Read access to what a publish left in the bucket."""

    def __init__(self, moto: Moto, prefix: str) -> None:
        self.client = pytail.S3Client(moto.url, moto.bucket, moto.creds, retries=0)
        self.prefix = prefix

    def keys(self) -> list[str]:
        return sorted(k[len(self.prefix):] for k in self.client.list_objects(self.prefix))

    def get(self, key: str) -> bytes:
        return self.client.get_object(self.prefix + key)


def test_publish_wrong_secret_is_one_clear_line(bucket_env: Callable[..., Any], packages: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    make_wheel(packages, "pub-a", "1.0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    assert bucket_env(packages) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("pytail: error: S3 SignatureDoesNotMatch: ")
    assert len(captured.err.strip().splitlines()) == 1
    assert "definitely-wrong-secret" not in captured.err + captured.out


def test_publish_without_credentials(packages: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    assert pytail.main(["publish", str(packages), "--bucket", "b", "--endpoint",
                        "https://x.example"]) == 1
    assert "AWS_ACCESS_KEY_ID" in capsys.readouterr().err


def test_publish_dry_run_changes_nothing(bucket_env: Callable[..., Any], packages: Path,
                                         moto: Moto, capsys: pytest.CaptureFixture[str]) -> None:
    make_wheel(packages, "pub-a", "1.0")
    assert bucket_env(packages, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "would upload" in out and out.splitlines()[-1].startswith("dry run: 7 uploaded")
    assert moto.creds.secret_key not in out
    assert S3View(moto, bucket_env.prefix + "/").keys() == []  # type: ignore[attr-defined]


def test_publish_multipart_over_threshold(bucket_env: Callable[..., Any], packages: Path,
                                          moto: Moto) -> None:
    big = make_wheel(packages, "pub-big", "1.0", payload=11 * 1024 * 1024)
    assert bucket_env(packages, "--multipart-threshold", "5MiB") == 0
    view = S3View(moto, bucket_env.prefix + "/")  # type: ignore[attr-defined]
    head = view.client.head_object(view.prefix + f"packages/{big.name}")
    assert head is not None and re.search(r'-\d+"$', head["etag"])  # multipart ETag
    assert head["x-amz-meta-sha256"] == sha(big.read_bytes())
    assert view.get(f"packages/{big.name}") == big.read_bytes()


def test_interrupted_publish_completes_on_rerun(bucket_env: Callable[..., Any], packages: Path,
                                                moto: Moto, tmp_path: Path) -> None:
    for i in range(3):
        make_wheel(packages, f"pub-{i}", "1.0")
    prefix = bucket_env.prefix + "/"  # type: ignore[attr-defined]
    client = pytail.S3Client(moto.url, moto.bucket, moto.creds, retries=0)
    lines: list[str] = []

    def dies_after_four(line: str) -> None:
        lines.append(line)
        if len(lines) > 4:
            raise KeyboardInterrupt  # as if cron's job were killed mid-run

    catalogue, _ = pytail.scan_directory(str(packages), str(tmp_path / "pc"))
    with pytest.raises(KeyboardInterrupt):
        pytail.Publisher(client, prefix=prefix, out=dies_after_four).run(str(packages), catalogue)
    view = S3View(moto, prefix)
    assert len(view.keys()) == 4 and "simple/manifest-v1.json" not in view.keys()
    assert not any(k.startswith("simple/") for k in view.keys())  # no page before its files
    assert bucket_env(packages) == 0
    assert len(view.keys()) == 6 + 6 + 2 + 1  # 3 wheels + 3 metadata, 6 pages, root x2, manifest
    manifest = json.loads(view.get("simple/manifest-v1.json"))
    for project in manifest["projects"].values():
        for f in project["files"]:
            assert sha(view.get(f"packages/{f['filename']}")) == f["sha256"]


def test_publish_delete_removes_stale_objects_last(bucket_env: Callable[..., Any],
                                                   packages: Path, moto: Moto,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    keep = make_wheel(packages, "pub-keep", "1.0")
    gone = make_wheel(packages, "pub-gone", "1.0")
    assert bucket_env(packages) == 0
    gone.unlink()
    view = S3View(moto, bucket_env.prefix + "/")  # type: ignore[attr-defined]
    view.client.put_object(view.prefix + "unrelated.txt", b"not ours")
    assert bucket_env(packages) == 0  # without --delete nothing is removed
    assert f"packages/{gone.name}" in view.keys()
    capsys.readouterr()
    assert bucket_env(packages, "--delete") == 0
    out = capsys.readouterr().out.splitlines()
    deleted = [line.split()[1][len(view.prefix):] for line in out if line.startswith("deleted ")]
    assert sorted(deleted) == sorted([f"packages/{gone.name}", f"packages/{gone.name}.metadata",
                                      "simple/pub-gone/", "simple/pub-gone/index.html"])
    first_delete = next(i for i, line in enumerate(out) if line.startswith("deleted "))
    assert all(not line.startswith("uploaded ") for line in out[first_delete:])
    assert "unrelated.txt" in view.keys() and f"packages/{keep.name}" in view.keys()


class StaticBucket:
    """Serves a bucket's objects by exact key, as a public R2 bucket or custom domain does."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                key = urllib.parse.unquote(self.path.split("?")[0].lstrip("/"))
                body = objects.get(key)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.send_header("Content-Type", "text/html" if key.startswith("simple/")
                                 else "application/octet-stream")
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.running = start(self.server)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.mark.parametrize("client", ["pip", "uv"])
def test_published_bucket_works_as_an_index(client: str, bucket_env: Callable[..., Any],
                                            packages: Path, moto: Moto, tmp_path: Path) -> None:
    make_wheel(packages, "pub-app", "1.0", requires=("pub-lib>=2",))
    make_wheel(packages, "pub-lib", "2.0")
    make_wheel(packages, "pub-lib", "3.0", requires_python=">=3.99")
    assert bucket_env(packages) == 0
    view = S3View(moto, bucket_env.prefix + "/")  # type: ignore[attr-defined]
    static = StaticBucket({key: view.get(key) for key in view.keys()})
    try:
        target = tmp_path / "target"
        (pip_install if client == "pip" else uv_install)(
            static.url + "/simple/", target, tmp_path, "pub-app")
        assert installed_version(target, "pub_app") == "1.0"
        assert installed_version(target, "pub_lib") == "2.0"
    finally:
        static.running.stop()


def test_presign_prints_a_signed_url(moto: Moto, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-not-printed")
    assert pytail.main(["presign", "packages/a b.whl", "--bucket", "bkt", "--endpoint",
                        "https://acct.r2.cloudflarestorage.com", "--expires", "600"]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith("https://acct.r2.cloudflarestorage.com/bkt/packages/a%20b.whl?")
    assert "X-Amz-Expires=600" in url and "X-Amz-Signature=" in url
    assert "secret-not-printed" not in url


# =============================================================================
# Review findings: robustness of the mirror and of publishing
# =============================================================================


def test_unreadable_local_file_still_shadows_upstream(local_proxy: Proxy, packages: Path,
                                                      upstream: FakeUpstream,
                                                      dists: Path) -> None:  # UP-12
    upstream.add("corp-utils", make_wheel(dists, "corp-utils", "9.9"))
    (packages / "corp_utils-1.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 still copying")
    status, _, body = local_proxy.request("/simple/corp-utils/")
    assert status == 404 and b"own project" in body
    assert upstream.count("/simple/corp-utils") == 0


def test_corrupt_archives_do_not_break_other_pages(local_proxy: Proxy, packages: Path) -> None:
    make_wheel(packages, "good", "1.0")
    (packages / "bad-1.0.tar.xz").write_bytes(b"\xfd7zXZ\x00\x00garbage")
    wheel = make_wheel(packages, "inflate", "1.0")
    data = bytearray(wheel.read_bytes())
    start = data.find(b"Metadata-Version")  # corrupt a stored member: CRC error on read
    data[start:start + 4] = b"XXXX"
    wheel.write_bytes(bytes(data))
    assert local_proxy.request("/simple/good/")[0] == 200
    assert local_proxy.request("/simple/")[0] == 200
    assert local_proxy.request("/simple/inflate/")[0] == 404


@pytest.mark.parametrize("path", ["/simple/%ff/", "/packages/%c3%28.whl"])
def test_undecodable_paths_are_400(proxy: Proxy, path: str) -> None:
    assert proxy.request(path)[0] == 400


def test_absurd_range_is_ignored(proxy: Proxy, alpha: Path) -> None:
    url = proxy.file_url("alpha", alpha.name)
    status, _, body = proxy.request(url, headers={"Range": "bytes=" + "9" * 5000 + "-"})
    assert status == 200 and body == alpha.read_bytes()


def test_request_with_a_body_closes_the_connection(proxy: Proxy) -> None:  # HTTP-2
    status, headers, _ = proxy.request("/simple/", method="GET",
                                       headers={"Content-Length": "0"})
    assert "connection" not in headers
    conn = http.client.HTTPConnection("127.0.0.1", proxy.server.server_address[1], timeout=5)
    conn.request("POST", "/simple/", body=b"GET /evil HTTP/1.1\r\n\r\n")
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("Connection") == "close"
    conn.close()


@pytest.mark.parametrize("body", [
    b'{"meta": [], "files": [{"filename": "alpha-1.0.tar.gz", "url": 5, "hashes": "x"}]}',
    b'{"files": [{"filename": "alpha-1.0.tar.gz", "url": "/files/alpha-1.0.tar.gz", '
    b'"hashes": [], "requires-python": 3, "size": "big", "yanked": {}}], "versions": 7}',
    b'{"files": 12}', b"\xff\xfe", b"[1, 2",
])
def test_hostile_upstream_json_never_gives_500(proxy_factory: Callable[..., Proxy],
                                               body: bytes, tmp_path: Path) -> None:
    class Hostile(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    hostile = start(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile))
    try:
        proxy = proxy_factory(upstream=f"http://127.0.0.1:{hostile.server.server_address[1]}")
        for accept in (UV_ACCEPT, "text/html"):
            status, _, _ = proxy.request("/simple/alpha/", headers={"Accept": accept})
            assert status in (200, 502)
    finally:
        hostile.stop()


def test_upstream_credentials_are_sent_and_never_shown(proxy_factory: Callable[..., Proxy],
                                                       upstream: FakeUpstream,
                                                       alpha: Path) -> None:
    url = upstream.url.replace("http://", "http://ci-user:s3cr3t@")
    proxy = proxy_factory(upstream=url)
    assert proxy.request("/simple/alpha/")[0] == 200
    auth = upstream.requests[-1][2].get("Authorization", "")
    assert auth == "Basic " + __import__("base64").b64encode(b"ci-user:s3cr3t").decode()
    upstream.fail = "500"
    status, _, body = proxy.request("/simple/other/")
    assert status == 502 and b"s3cr3t" not in body
    assert pytail.redact_url(url) == upstream.url.replace("http://", "http://***@")
    assert pytail.redact_url("https://glpat-token@h.example/x") == "https://***@h.example/x"


def test_range_on_a_big_uncached_file_is_relayed(proxy: Proxy, upstream: FakeUpstream,
                                                 dists: Path) -> None:  # FILE-6
    big = make_wheel(dists, "huge", "1.0", payload=2_000_000)
    upstream.add("huge", big)
    url = proxy.file_url("huge", big.name)
    upstream.gate = threading.Event()  # the full download stalls; ranges do not
    size = big.stat().st_size
    status, headers, body = proxy.request(url, headers={"Range": f"bytes={size - 100}-{size - 1}"})
    assert status == 206 and body == big.read_bytes()[-100:]
    assert headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
    upstream.gate.set()
    wait_until(lambda: proxy.request(url)[1].get("x-pytail-cache") == "HIT")


def test_publish_refuses_to_replace_published_bytes(bucket_env: Callable[..., Any],
                                                    packages: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    make_wheel(packages, "pub-same", "1.0")
    assert bucket_env(packages) == 0
    make_wheel(packages, "pub-same", "1.0", payload=10)  # rebuilt under the same name
    capsys.readouterr()
    assert bucket_env(packages) == 1
    err = capsys.readouterr().err
    assert "already published with other bytes" in err and "pub_same-1.0" in err
    assert bucket_env(packages, "--overwrite") == 0
    assert "uploaded" in capsys.readouterr().out


def test_publish_delete_refused_when_files_are_unreadable(bucket_env: Callable[..., Any],
                                                          packages: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    make_wheel(packages, "pub-ok", "1.0")
    (packages / "pub_broken-1.0-py3-none-any.whl").write_bytes(b"nope")
    assert bucket_env(packages, "--delete") == 1
    assert "refusing --delete" in capsys.readouterr().err


# =============================================================================
# Operating: air-gapped hosts, cache commands, health, metrics, landing page
# =============================================================================


@pytest.mark.parametrize("client", ["pip", "uv"])
def test_air_gapped_workflow(client: str, upstream: FakeUpstream, alpha_beta: None,
                             tmp_path: Path, clock: Clock) -> None:
    """Warm a cache with prefetch, carry it over, serve it offline, install from it."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("alpha==1.0\nbeta==1.0 ; python_version >= '3'\n")
    connected = tmp_path / "connected-cache"
    assert pytail.main(["prefetch", "-r", str(requirements), "--upstream-base-url",
                        upstream.url, "--cache-dir", str(connected)]) == 0
    assert pytail.main(["prefetch", "-r", str(requirements), "--upstream-base-url",
                        upstream.url, "--cache-dir", str(connected)]) == 0  # idempotent
    carried = tmp_path / "air-gapped-cache"
    shutil.copytree(connected, carried)  # what a USB stick would do
    upstream.fail = "reset"  # the network is gone
    before = len(upstream.requests)
    config = pytail.ServeConfig(bind_port=0, upstream=None, cache_dir=str(carried))
    proxy = Proxy(config, clock)
    try:
        target = tmp_path / "target"
        (pip_install if client == "pip" else uv_install)(proxy.url + "/simple/", target,
                                                         tmp_path, "alpha")
        assert installed_version(target, "alpha") == "1.0"
        assert installed_version(target, "beta") == "1.0"
        assert len(upstream.requests) == before
    finally:
        proxy.stop()


def test_offline_lists_only_cached_files(proxy: Proxy, upstream: FakeUpstream, dists: Path,
                                         cfg: pytail.ServeConfig, clock: Clock,
                                         tmp_path: Path) -> None:
    upstream.add("gamma", make_wheel(dists, "gamma", "1.0"), make_wheel(dists, "gamma", "2.0"))
    pip_install(proxy.url + "/simple/", tmp_path / "t1", tmp_path, "gamma==1.0")
    proxy.stop()
    import dataclasses
    offline = Proxy(dataclasses.replace(cfg, upstream=None), clock)
    try:
        assert offline.get_json("/simple/gamma/")["versions"] == ["1.0"]
        for client in (pip_install, uv_install):
            target = tmp_path / f"t-{client.__name__}"
            client(offline.url + "/simple/", target, tmp_path, "gamma")
            assert installed_version(target, "gamma") == "1.0"
    finally:
        offline.stop()


def test_prefetch_from_lock_files(upstream: FakeUpstream, alpha_beta: None, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    beta = next(f for f in upstream.projects["beta"] if f.filename == "beta-1.0-py3-none-any.whl")
    uv_lock = tmp_path / "uv.lock"
    uv_lock.write_text(f'''version = 1
[[package]]
name = "app"
version = "0.1.0"
source = {{ editable = "." }}

[[package]]
name = "beta"
version = "1.0"
source = {{ registry = "https://pypi.org/simple" }}
wheels = [{{ url = "https://files.example/beta-1.0-py3-none-any.whl", hash = "sha256:{sha(beta.data)}" }}]
''')
    pylock = tmp_path / "pylock.toml"
    pylock.write_text(f'''lock-version = "1.0"
[[packages]]
name = "beta"
version = "9.9"
[[packages.wheels]]
url = "https://files.example/beta-9.9-py3-none-any.whl"
hashes = {{ sha256 = "{"0" * 64}" }}
''')
    cache = tmp_path / "c"
    assert pytail.main(["prefetch", "--lock", str(uv_lock), "--upstream-base-url", upstream.url,
                        "--cache-dir", str(cache)]) == 0
    assert "fetched beta-1.0-py3-none-any.whl" in capsys.readouterr().out
    assert upstream.count("/files/beta-1.0.tar.gz") == 0  # only what is pinned
    assert pytail.main(["prefetch", "--lock", str(pylock), "--upstream-base-url", upstream.url,
                        "--cache-dir", str(cache)]) == 1  # pinned, but not on the index
    assert "match no file on the index" in capsys.readouterr().out


def test_cache_stats_prune_verify(proxy: Proxy, alpha: Path, cfg: pytail.ServeConfig,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    wheel_url = proxy.file_url("alpha", alpha.name)
    proxy.request(wheel_url)
    sdist_url = proxy.file_url("alpha", "alpha-0.9.tar.gz")
    proxy.request(sdist_url)
    proxy.stop()
    cache = ["--cache-dir", cfg.cache_dir]
    assert pytail.main(["cache", "stats", *cache]) == 0
    out = capsys.readouterr().out
    assert "projects: 1" in out and "files: 2" in out
    on_disk = Path(cfg.cache_dir, "+files", wheel_url.lstrip("/"))
    on_disk.write_bytes(b"rotten")
    assert pytail.main(["cache", "verify", *cache]) == 1
    out = capsys.readouterr().out
    assert "sha256 mismatch" in out and not on_disk.exists()
    assert pytail.main(["cache", "verify", *cache]) == 0
    assert pytail.main(["cache", "prune", "--max-size", "0", "--dry-run", *cache]) == 0
    assert "would remove" in capsys.readouterr().out
    assert pytail.main(["cache", "prune", "--max-size", "0", *cache]) == 0
    assert "removed" in capsys.readouterr().out
    assert not Path(cfg.cache_dir, "+files", sdist_url.lstrip("/")).exists()
    assert pytail.main(["cache", "prune", *cache]) == 1  # says what is missing


def test_health_metrics_and_landing_page(proxy: Proxy, alpha: Path,
                                         upstream: FakeUpstream) -> None:
    health = json.loads(proxy.request("/health")[2])
    assert health["status"] == "ok" and health["upstream"] == "never asked"
    proxy.request("/simple/alpha/")
    proxy.request("/simple/alpha/")
    proxy.request(proxy.file_url("alpha", alpha.name))
    health = json.loads(proxy.request("/health")[2])
    assert health["upstream"] == "ok" and health["cache_bytes"] == alpha.stat().st_size
    status, headers, body = proxy.request("/metrics")
    text = body.decode()
    assert headers["content-type"].startswith("text/plain")
    assert 'pytail_requests_total{route="project",status="200"}' in text
    assert 'pytail_cache_total{outcome="HIT"}' in text
    assert 'pytail_cache_total{outcome="MISS"}' in text
    assert re.search(r"^pytail_upstream_requests_total \d+", text, re.MULTILINE)
    assert re.search(r"^pytail_bytes_served_total \d+", text, re.MULTILINE)
    upstream.fail = "500"
    proxy.request("/simple/other/")
    assert json.loads(proxy.request("/health")[2])["upstream"] == "failing"
    status, headers, page = proxy.request("/", headers={"Host": "pypi.internal:3141"})
    assert status == 200 and b"http://pypi.internal:3141/simple/" in page
    for tool in (b"pip install --index-url", b"uv pip install", b"poetry source add",
                 b"tool.pdm.source"):
        assert tool in page
    assert b"<script" not in page


def test_no_cache_request_revalidates(proxy: Proxy, upstream: FakeUpstream, alpha: Path,
                                      clock: Clock) -> None:  # CACHE-3
    proxy.request("/simple/alpha/")
    proxy.request("/simple/alpha/", headers={"Cache-Control": "no-cache"})
    assert upstream.count("/simple/alpha/") == 1  # just fetched: no second request
    clock.now += pytail.REFRESH_MIN_AGE + 1
    proxy.request("/simple/alpha/", headers={"Cache-Control": "max-age=0"})  # old pips
    assert upstream.count("/simple/alpha/") == 1  # always send this: not honoured
    _, headers, _ = proxy.request("/simple/alpha/", headers={"Cache-Control": "no-cache"})
    assert upstream.count("/simple/alpha/") == 2 and headers["x-pytail-cache"] == "REVALIDATED"


# =============================================================================
# Hardening: upstream faults, crashes, a full disk, hostile requests, load
# =============================================================================


def cache_is_clean(cache_dir: str, url_path: str) -> bool:
    """No partial file anywhere: nothing in +tmp, nothing at the file's place."""
    return not list(Path(cache_dir, "+tmp").iterdir()) and \
        not Path(cache_dir, "+files", url_path.lstrip("/")).exists()


@pytest.mark.parametrize("fault,expected", [
    ("reset_mid", "error"), ("short", "error"), ("500", 502), ("slow", 502),
    ("redirect", 200), ("loop", 502),
])
def test_file_faults_leave_a_clean_cache(fault: str, expected: Any,
                                         proxy_factory: Callable[..., Proxy],
                                         upstream: FakeUpstream, dists: Path,
                                         cfg: pytail.ServeConfig) -> None:
    """What the client sees, what is cached afterwards, and that the next request works."""
    proxy = proxy_factory(timeout=1.0)
    wheel = make_wheel(dists, "faulty", "1.0", payload=300_000)
    upstream.add("faulty", wheel)
    url = proxy.file_url("faulty", wheel.name)
    upstream.file_fault = fault
    try:
        status, _, body = proxy.request(url)
    except (http.client.HTTPException, OSError):
        status, body = "error", b""  # the connection was cut short: never a success
    if expected == 200:
        assert status == 200 and body == wheel.read_bytes()
        return
    assert status == expected or (expected == "error" and status in ("error", 502))
    assert body != wheel.read_bytes()
    wait_until(lambda: cache_is_clean(cfg.cache_dir, url))
    upstream.file_fault = None
    status, _, body = proxy.request(url)
    assert status == 200 and body == wheel.read_bytes()


def test_fifty_megabyte_page(proxy: Proxy, upstream: FakeUpstream, alpha: Path) -> None:
    upstream.pad = 50 * 1024 * 1024
    doc = proxy.get_json("/simple/alpha/")
    assert {f["filename"] for f in doc["files"]} == {alpha.name, "alpha-0.9.tar.gz"}
    assert "x-padding" not in doc


@pytest.mark.parametrize("gzip_pages", [None, "ok"])  # "ok": a gzip bomb, 64 MB from 65 KB
def test_oversized_page_is_refused(proxy: Proxy, upstream: FakeUpstream, alpha: Path,
                                   gzip_pages: str | None) -> None:
    upstream.pad = pytail.MAX_PAGE_BYTES + 1
    upstream.gzip_pages = gzip_pages
    status, _, body = proxy.request("/simple/alpha/")
    assert status == 502 and b"larger than" in body


@pytest.mark.parametrize("method", ["FOO", "PROPFIND", "PUT", "DELETE", "OPTIONS"])
def test_odd_methods_get_405(proxy: Proxy, method: str) -> None:  # URL-8
    status, headers, _ = proxy.request("/simple/", method=method)
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_huge_headers_get_4xx(proxy: Proxy) -> None:
    with socket.create_connection(proxy.server.server_address[:2], timeout=5) as sock:
        sock.sendall(b"GET /simple/ HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        status = sock.recv(100).split(b" ")[1]
    assert status.startswith(b"4")


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET /simple/ HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", b"400"),
    (b"GET /simple/ HTTP/1.1\r\nX-A : 1\r\n\r\n", b"400"),
    (b"GET /simple/ HTTP/1.1\r\nno colon\r\n\r\n", b"400"),
    (b"GET /simple/ HTTP/1.1\r\nRange: bytes=0-1\rX: y\r\n\r\n", b"400"),
    (b"GET /simple/ HTTP/2.0\r\n\r\n", b"505"),
    (b"GET /simple/ HTTP/1\r\n\r\n", b"400"),
    (b"GET /simple/\r\n\r\n", b"400"),
    (b"GET /simple/ HTTP/1.1\r\n" + b"X-N: 1\r\n" * 101 + b"\r\n", b"431"),
])
def test_malformed_request_heads(proxy: Proxy, request_bytes: bytes, status: bytes) -> None:
    with socket.create_connection(proxy.server.server_address[:2], timeout=5) as sock:
        sock.sendall(request_bytes)
        assert sock.recv(100).split(b" ")[1] == status


def test_reset_mid_headers_prints_no_traceback(proxy: Proxy,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    for _ in range(3):
        sock = socket.create_connection(proxy.server.server_address[:2], timeout=5)
        sock.sendall(b"GET /simple/ HTTP/1.1\r\nX-A: 1\r\n")
        time.sleep(0.05)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST while the server reads the headers
    time.sleep(0.3)
    assert proxy.request("/health")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_request_headers_any_case_first_wins_connection_close(proxy: Proxy, alpha: Path) -> None:
    head = (b"GET /simple/alpha/ HTTP/1.1\r\nhost: x\r\naCCEPT: application/vnd.pypi.simple.v1+json"
            b"\r\nAccept: text/html\r\nConnection: Close\r\n\r\n")
    with socket.create_connection(proxy.server.server_address[:2], timeout=5) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):  # the server closes: Connection: close honoured
            data += chunk
    assert b"Content-Type: application/vnd.pypi.simple.v1+json" in data
    with socket.create_connection(proxy.server.server_address[:2], timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")  # HTTP/1.0: closed after one answer
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")


def test_access_log_lines_are_batched_to_stderr(cfg: pytail.ServeConfig, clock: Clock,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("pytail").setLevel(logging.INFO)
    try:
        proxy = Proxy(cfg, clock)
    finally:
        logging.getLogger("pytail").setLevel(logging.NOTSET)
    try:
        assert proxy.server.access.enabled
        proxy.request("/health")
        raw_request(proxy, b"GET /simple/\xe9?x HTTP/1.1\r\nConnection: close\r\n\r\n")
        err: list[str] = []
        wait_until(lambda: err.append(capfd.readouterr().err) or '"GET /simple/??x" 404' in
                   "".join(err))
        assert re.search(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO 127\.0\.0\.1 "GET /health" '
                         r'200 \d+ - [\d.]+ms$', "".join(err), re.M)
    finally:
        proxy.stop()


def test_slow_headers_are_cut_off(proxy: Proxy) -> None:  # slowloris
    proxy.server.request_deadline = 1.0
    started = time.monotonic()
    with socket.create_connection(proxy.server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"GET /simple/ HTTP/1.1\r\n")
        closed = False
        while time.monotonic() - started < 8 and not closed:
            try:
                sock.sendall(b"X-Drip: 1\r\n")
                sock.settimeout(0.3)
                closed = sock.recv(100) == b""
            except socket.timeout:
                pass
            except OSError:
                closed = True
    assert closed and time.monotonic() - started < 5


def test_too_many_connections_get_503(proxy_factory: Callable[..., Proxy]) -> None:
    proxy = proxy_factory(max_threads=2)
    held = [socket.create_connection(proxy.server.server_address[:2]) for _ in range(2)]
    try:
        wait_until(lambda: proxy.server._slots._value == 0)  # type: ignore[attr-defined]
        with socket.create_connection(proxy.server.server_address[:2], timeout=5) as sock:
            answer = sock.recv(200)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
    finally:
        for sock in held:
            sock.close()


def serve_subprocess(cache_dir: Path, upstream_url: str, *extra: str,
                     preexec: Callable[[], None] | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "pytail.py"), "serve", "--bind", "127.0.0.1:0",
         "--cache-dir", str(cache_dir), "--upstream-base-url", upstream_url, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    match = re.search(r"(http://127\.0\.0\.1:\d+)/simple/", line)
    assert match, line + proc.stderr.read()  # type: ignore[union-attr]
    return proc, match.group(1)


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def quiet_fetch(url: str) -> None:
    """fetch() for a background thread whose server is about to die."""
    try:
        fetch(url)
    except (OSError, http.client.HTTPException):
        pass


def test_sigkill_mid_download_then_restart(tmp_path: Path, upstream: FakeUpstream,
                                           dists: Path) -> None:
    wheel = make_wheel(dists, "killme", "1.0", payload=1_000_000)
    upstream.add("killme", wheel)
    cache = tmp_path / "cache"
    proc, base = serve_subprocess(cache, upstream.url)
    try:
        page = json.loads(urllib.request.urlopen(urllib.request.Request(
            base + "/simple/killme/", headers={"Accept": UV_ACCEPT}), timeout=10).read())
        url = urllib.parse.urljoin(base + "/simple/killme/", page["files"][0]["url"])
        upstream.gate = threading.Event()
        threading.Thread(target=quiet_fetch, args=(url,), daemon=True).start()
        wait_until(lambda: any((cache / "+tmp").iterdir()))  # half a file is on disk
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    finally:
        proc.kill()
        proc.wait()
    upstream.gate.set()
    proc, base = serve_subprocess(cache, upstream.url)
    try:
        assert list((cache / "+tmp").iterdir()) == []  # leftovers removed at start
        url = urllib.parse.urljoin(base + "/simple/killme/", page["files"][0]["url"])
        assert fetch(url) == (200, wheel.read_bytes())
        import sqlite3
        with sqlite3.connect(cache / "index.sqlite3") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        proc.terminate()
        proc.wait(10)


def test_full_disk_during_download(tmp_path: Path, upstream: FakeUpstream, dists: Path) -> None:
    import resource
    big = make_wheel(dists, "bigone", "1.0", payload=3_000_000)
    small = make_wheel(dists, "smallone", "1.0")
    upstream.add("bigone", big)
    upstream.add("smallone", small)
    cache = tmp_path / "cache"

    def limit_file_size() -> None:  # a disk with 2 MB left, as far as this process can tell
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))

    proc, base = serve_subprocess(cache, upstream.url, preexec=limit_file_size)
    try:
        def file_url(project: str) -> str:
            page = json.loads(urllib.request.urlopen(urllib.request.Request(
                base + f"/simple/{project}/", headers={"Accept": UV_ACCEPT}), timeout=10).read())
            return urllib.parse.urljoin(base + f"/simple/{project}/", page["files"][0]["url"])
        big_url = file_url("bigone")
        try:
            status, body = fetch(big_url)
        except (http.client.HTTPException, OSError):
            status, body = 0, b""
        assert status != 200 or body != big.read_bytes()
        assert status in (0, 503)
        wait_until(lambda: list((cache / "+tmp").iterdir()) == [])
        assert not list((cache / "+files").rglob("bigone-*"))
        assert fetch(file_url("smallone")) == (200, small.read_bytes())  # still serving
    finally:
        proc.terminate()
        proc.wait(10)


SECRET = "pytail-secret-token-4f1c"
PATH_PARTS = ["", "simple", "packages", "root", "pypi", "+f", "%2Bf", "+simple", "..", ".",
              "%2e%2e", "%2E", "%2f", "%2F", "%5c", "%00", "\\", "/", "//", "a", "alpha",
              "alpha-1.0-py3-none-any.whl", "secret.txt", "etc", "passwd", ".metadata", "%ff",
              "%", "abc", "0123456789abc", "_url", "?format=text/html", "?x=%00", "~", ";"]


@pytest.fixture
def hostile_target(tmp_path: Path, proxy_factory: Callable[..., Proxy], alpha: Path,
                   packages: Path) -> Proxy:
    """A server with a secret file beside (not inside) its cache and packages directories."""
    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "cache" / "secret.txt").write_text(SECRET)
    make_wheel(packages, "local-one", "1.0")
    proxy = proxy_factory(packages_dir=str(packages))
    proxy.request(proxy.file_url("alpha", alpha.name))
    return proxy


def raw_request(proxy: Proxy, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes; return the status and everything the server sent back."""
    with socket.create_connection(proxy.server.server_address[:2], timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(match.group(1)) if match else 0), data


def test_hostile_requests_property(hostile_target: Proxy) -> None:
    """Generated paths and headers: always an answer below 500, never the secret."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    header_value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
    headers = st.dictionaries(
        st.sampled_from(["Range", "Accept", "Accept-Encoding", "If-None-Match", "Cache-Control",
                         "Content-Length", "Host", "Transfer-Encoding", "X-Junk"]),
        st.one_of(header_value, st.sampled_from(["bytes=0-", "bytes=-5", "bytes=9-1", "*/*",
                                                 "gzip", "*", "no-cache", "bytes=0-0,5-9"])),
        max_size=4)
    paths = st.lists(st.sampled_from(PATH_PARTS), min_size=0, max_size=7).map(
        lambda parts: "/" + "/".join(parts))
    methods = st.sampled_from(["GET", "HEAD", "GET", "POST", "BREW", "OPTIONS"])

    @hypothesis.settings(max_examples=300, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(method=methods, path=paths, headers=headers)
    def check(method: str, path: str, headers: dict[str, str]) -> None:
        calls.append(path)
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k not in ("Host", "Connection")]
        status, data = raw_request(hostile_target, ("\r\n".join(lines) + "\r\n\r\n").encode())
        assert 100 <= status < 500, (method, path, headers, data[:300])
        assert SECRET.encode() not in data
        assert b"Traceback" not in data

    calls: list[str] = []
    check()
    assert len(calls) >= 100


SOAK = os.environ.get("PYTAIL_SOAK") == "1"


@pytest.mark.skipif(not SOAK, reason="load check: run with PYTAIL_SOAK=1 (about 40 s)")
def test_soak_200_concurrent_clients_on_warm_pages(proxy: Proxy, upstream: FakeUpstream,
                                                   dists: Path) -> None:
    names = [f"soak{i}" for i in range(20)]
    for name in names:
        upstream.add(name, make_wheel(dists, name, "1.0"))
        proxy.request(f"/simple/{name}/")
    deadline = time.monotonic() + 30
    counts = {"ok": 0, "errors": 0}
    lock = threading.Lock()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.server.server_address[1], timeout=30)
        n = 0
        while time.monotonic() < deadline:
            try:
                conn.request("GET", f"/simple/{names[(i + n) % len(names)]}/",
                             headers={"Accept": UV_ACCEPT, "Accept-Encoding": "gzip"})
                resp = conn.getresponse()
                resp.read()
                good = resp.status == 200
            except (OSError, http.client.HTTPException):
                good = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", proxy.server.server_address[1],
                                                  timeout=30)
            with lock:
                counts["ok" if good else "errors"] += 1
            n += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"\nsoak: 200 clients, 30 s: {counts['ok']} responses "
          f"({counts['ok'] / 30:.0f}/s), {counts['errors']} errors")
    assert counts["errors"] == 0


@pytest.mark.skipif(not SOAK, reason="memory check: run with PYTAIL_SOAK=1 (about 60 s)")
def test_soak_memory_with_slow_clients_on_a_big_file(tmp_path: Path, upstream: FakeUpstream,
                                                     dists: Path) -> None:
    """8 slow clients stream a 500 MB file (cold, then cached): peak RSS stays bounded."""
    big = tmp_path / "dists" / "huge-1.0-py3-none-any.whl"
    with zipfile.ZipFile(big, "w") as zf:  # stored, incompressible: 500 MB on disk
        with zf.open("huge/blob.bin", "w", force_zip64=True) as blob:
            for _ in range(500):
                blob.write(os.urandom(1024 * 1024))
        zf.writestr("huge-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: huge\n"
                                                     "Version: 1.0\n")
    upstream.add("huge", big)
    proc, base = serve_subprocess(tmp_path / "cache", upstream.url, "-q")
    try:
        page = json.loads(urllib.request.urlopen(urllib.request.Request(
            base + "/simple/huge/", headers={"Accept": UV_ACCEPT}), timeout=30).read())
        url = urllib.parse.urljoin(base + "/simple/huge/", page["files"][0]["url"])

        def slow_client() -> int:
            total = 0
            with urllib.request.urlopen(url, timeout=60) as resp:
                while chunk := resp.read(1024 * 1024):
                    total += len(chunk)
                    time.sleep(0.05)  # about 20 MB/s each
            return total

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            sizes = list(pool.map(lambda _: slow_client(), range(8)))
        assert sizes == [big.stat().st_size] * 8
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) // 1024  # type: ignore
        print(f"\nsoak: 8 slow clients x 500 MB: peak RSS {peak} MB")
        assert peak < 150
    finally:
        proc.terminate()
        proc.wait(10)


# =============================================================================
# Second review: symlinks, upstream back-off, strict JSON, version pins
# =============================================================================


def test_symlinked_local_file_is_refused_but_still_shadows(local_proxy: Proxy, packages: Path,
                                                           upstream: FakeUpstream,
                                                           dists: Path, tmp_path: Path) -> None:
    upstream.add("linked", make_wheel(dists, "linked", "9.9"))
    outside = make_wheel(tmp_path, "linked", "1.0")
    (packages / outside.name).symlink_to(outside)
    assert local_proxy.request("/simple/linked/")[0] == 404
    assert local_proxy.request(f"/packages/{outside.name}")[0] == 404
    assert upstream.count("/simple/linked") == 0
    catalogue, unreadable = pytail.scan_directory(str(packages), str(tmp_path / "c"))
    assert [f.filename for f in unreadable] == [outside.name]


def test_upstream_outage_backs_off(proxy: Proxy, upstream: FakeUpstream, alpha: Path,
                                   clock: Clock) -> None:
    proxy.request("/simple/alpha/")
    clock.now += 901
    upstream.fail = "500"
    assert proxy.request("/simple/alpha/")[1]["x-pytail-cache"] == "STALE"
    asked = upstream.count("/simple/alpha/")
    for _ in range(5):
        assert proxy.request("/simple/alpha/")[1]["x-pytail-cache"] == "STALE"
    assert upstream.count("/simple/alpha/") == asked  # no request piles up behind upstream
    clock.now += pytail.UPSTREAM_BACKOFF + 1
    upstream.fail = None
    assert proxy.request("/simple/alpha/")[1]["x-pytail-cache"] in ("REVALIDATED", "MISS")


@pytest.mark.parametrize("body", [
    '{"files":[{} {}]}', '{"files":[{},]}', '{"files":[], "n": NaN}', '{"files":[]} {}',
    '{"files":' + "[" * 5000 + "]" * 5000 + "}",
])
def test_json_pages_must_be_strict_json(body: str) -> None:
    with pytest.raises(ValueError):
        pytail.parse_project_json("a", body.encode(), "http://x/")


def _pieces(text: str, cuts: list[int]) -> Iterator[str]:
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return (text[a:b] for a, b in zip(bounds, bounds[1:]))


def test_json_pages_parse_the_same_however_the_text_is_cut() -> None:
    """The streaming reader sees pages in 64 KB pieces: a cut anywhere (inside a number,
    a string, a key, white space) changes nothing."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                                    allow_infinity=False) \
        | st.text(max_size=8)
    docs = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)
    files = st.lists(st.dictionaries(st.text(max_size=5), scalars, max_size=3), max_size=4)

    @hypothesis.settings(max_examples=300, deadline=None, database=None)
    @hypothesis.given(doc=docs, items=files, indent=st.sampled_from([None, 1]),
                      cuts=st.lists(st.integers(0, 10**6), max_size=12))
    def check(doc: object, items: list[dict], cuts: list[int], indent: int | None) -> None:
        text = json.dumps({"meta": doc, "files": items, "n": 12345}, indent=indent)
        seen: list[object] = []

        def on_file(item: object, offset: int) -> None:
            assert text[offset] == "{"  # where the object starts (ProjectPage.offsets)
            seen.append(item)

        members: dict[str, object] = {}
        for item, offset in pytail.iter_json_files(_pieces(text, cuts), members):
            on_file(item, offset)
        assert seen == items and members == {"meta": doc, "files": [], "n": 12345}
        with pytest.raises(ValueError):
            for item, offset in pytail.iter_json_files(_pieces(text[:-1], cuts), {}):
                on_file(item, offset)

    check()


@pytest.mark.parametrize("sent", [None, "ok"])
def test_pages_are_stored_gzip_whatever_upstream_sends(proxy: Proxy, upstream: FakeUpstream,
                                                       alpha: Path, sent: str | None) -> None:
    upstream.gzip_pages = sent
    assert sorted(f["filename"] for f in proxy.get_json("/simple/alpha/")["files"]) == \
        ["alpha-0.9.tar.gz", "alpha-1.0-py3-none-any.whl"]
    assert upstream.requests[-1][2].get("Accept-Encoding") == "gzip"
    with sqlite3.connect(Path(proxy.config.cache_dir, "index.sqlite3")) as db:
        (body,), = db.execute("SELECT body FROM projects WHERE name = 'alpha'")
    assert body[:2] == b"\x1f\x8b" and b"alpha-1.0" in gzip.decompress(body)


@pytest.mark.parametrize("fault", ["bad", "trailing"])
def test_broken_gzip_from_upstream_is_an_upstream_error(proxy: Proxy, upstream: FakeUpstream,
                                                        alpha: Path, fault: str) -> None:
    upstream.gzip_pages = fault
    status, _, body = proxy.request("/simple/alpha/")
    assert status == 502 and b"gzip" in body


@pytest.mark.parametrize("member", [{"x-big": 1e999}, {"x-big": [1, -1e999]}])
def test_a_number_json_cannot_hold_makes_the_page_unusable(proxy: Proxy, upstream: FakeUpstream,
                                                           alpha: Path, member: dict) -> None:
    """1e999 would be decoded as infinity and written back as `Infinity`: not JSON."""
    upstream.extra = member
    status, _, body = proxy.request("/simple/alpha/", headers={"Accept": UV_ACCEPT})
    assert status == 502 and b"unusable" in body


def test_odd_project_status_values_are_dropped_not_a_crash(proxy: Proxy, upstream: FakeUpstream,
                                                          alpha: Path) -> None:  # HTML-8
    upstream.extra = {"project-status": {"status": ["archived"]}}
    upstream.projects["alpha"][0].requires_python = ">=3.8\ud800"  # a lone surrogate
    doc = proxy.get_json("/simple/alpha/")
    assert "project-status" not in doc
    assert doc["files"][0]["requires-python"] == ">=3.8\ud800"
    status, _, body = proxy.request("/simple/alpha/", headers={"Accept": "text/html"})
    assert status == 200 and b'data-requires-python="&gt;=3.8?"' in body


def test_upstream_connections_are_reused(proxy: Proxy, upstream: FakeUpstream,
                                         alpha: Path) -> None:
    upstream.gzip_pages = "ok"
    for name in ("alpha", "beta", "gamma"):
        upstream.projects.setdefault(name, upstream.projects["alpha"])
        assert proxy.request(f"/simple/{name}/", headers={"Accept": UV_ACCEPT})[0] == 200
    url = proxy.file_url("alpha", alpha.name)
    assert proxy.request(url)[0] == 200 and proxy.request(url + ".metadata")[0] == 200
    assert upstream.connections == 1


def _gzip_helpers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pytail-gzip"]


@pytest.mark.parametrize("count", [3, pytail.STORED_FILES + 1, pytail.STORED_FILES + 50])
@pytest.mark.parametrize("accept", [UV_ACCEPT, "text/html"])
@pytest.mark.parametrize("known", [False, True])  # files of the page already in the index
def test_a_cold_page_is_rendered_as_it_arrives_like_any_later_render(
        proxy: Proxy, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch,
        count: int, accept: str, known: bool) -> None:
    """A page fetched for a request is parsed, indexed and rendered in one pass while it
    arrives (ProjectCache._ingest), compressed on a helper thread; the bytes and ETag are
    the same as those of the usual render from the stored page."""
    monkeypatch.setattr(pytail, "HELPER_BYTES", 1)  # every render uses the helper thread
    upstream.gzip_pages = "ok"
    upstream.sizes = not known  # sizes then come from the index (decoration)
    upstream.projects["big"] = [UpFile(f"big-{i}.0.tar.gz", b"data %d" % i, yanked=i == 1)
                                for i in range(count)]
    upstream.projects["big"].append(UpFile("big-0.0.tar.gz", b"data 0"))  # a duplicate
    upstream.projects["big"].append(UpFile("../evil-1.0.tar.gz", b"x"))  # unusable
    headers = {"Accept": accept, "Accept-Encoding": "gzip"}
    if known:  # a file downloaded before, then the page forgotten: the index knows its size
        path = "/" + pytail.sha_path(sha(b"data 2"), "big-2.0.tar.gz")
        assert proxy.request("/simple/big/")[0] == 200 and proxy.request(path)[0] == 200
        with sqlite3.connect(Path(proxy.config.cache_dir, "index.sqlite3")) as db:
            db.execute("DELETE FROM projects")
        proxy.server.cache._memory.clear()
    ingested = []
    real_ingest = pytail.ProjectCache._ingest
    monkeypatch.setattr(pytail.ProjectCache, "_ingest", lambda self, *args: ingested.append(
        args[2]) or real_ingest(self, *args))
    cold = proxy.request("/simple/big/", headers=headers)
    assert cold[0] == 200 and cold[1]["x-pytail-cache"] == "MISS"
    assert ingested[-1][0] == (pytail.JSON_V1 if accept == UV_ACCEPT else pytail.TEXT_HTML)
    proxy.server.cache._memory.clear()  # loaded again from SQLite, rendered the usual way
    again = proxy.request("/simple/big/", headers=headers)
    assert again[1]["x-pytail-cache"] == "HIT" and upstream.count("/simple/big/") == 1 + known
    assert cold[1]["etag"] == again[1]["etag"] and cold[2] == again[2]
    body = gzip.decompress(cold[2]) if cold[1].get("content-encoding") else cold[2]
    assert body.count(b"big-") >= count and (b"yanked" in body or b"data-yanked" in body)
    if accept == UV_ACCEPT:
        doc = json.loads(body)
        assert [f["filename"] for f in doc["files"]] == [f"big-{i}.0.tar.gz" for i in range(count)]
        assert len(doc["versions"]) == count
        sizes = [f.get("size") for f in doc["files"]]
        assert sizes == ([None, None, 6] + [None] * (count - 3) if known else
                         [len(b"data %d" % i) for i in range(count)])
        assert doc["meta"]["api-version"] == (pytail.API_VERSION_NO_SIZE if known
                                              else pytail.API_VERSION)
    assert not _gzip_helpers()
    path = pytail.sha_path(sha(b"data 2"), "big-2.0.tar.gz")
    assert proxy.request("/" + path)[2] == b"data 2"


@pytest.mark.parametrize("fault", ["cut", "reset"])
@pytest.mark.parametrize("gzip_pages", [None, "ok"])
def test_a_page_that_breaks_off_is_a_502_and_leaves_nothing(
        proxy: Proxy, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, fault: str,
        gzip_pages: str | None) -> None:
    monkeypatch.setattr(pytail, "HELPER_BYTES", 1)
    upstream.projects["big"] = [UpFile(f"big-{i}.0.tar.gz", b"data %d" % i) for i in range(50)]
    upstream.page_fault, upstream.gzip_pages = fault, gzip_pages
    status, _, body = proxy.request("/simple/big/", headers={"Accept": UV_ACCEPT})
    assert status == 502 and b"big" in body and not _gzip_helpers()
    assert "big" not in proxy.server.cache._memory and proxy.server.cache.index.project("big") is None
    upstream.page_fault = None
    assert len(proxy.get_json("/simple/big/")["files"]) == 50


@pytest.mark.parametrize("json_pages", [True, False])
def test_big_pages_are_kept_as_their_body_not_as_entries(proxy: Proxy, upstream: FakeUpstream,
                                                         json_pages: bool) -> None:
    """Past STORED_FILES files a page is held as its gzip body: renders stay identical and
    any file is still found (by offset for JSON, by a scan for HTML)."""
    upstream.json = json_pages
    count = pytail.STORED_FILES + 100
    upstream.projects["big"] = [UpFile(f"big-{i}.0.tar.gz", b"data %d" % i)
                                for i in range(count)]
    first = proxy.request("/simple/big/", headers={"Accept": UV_ACCEPT})[2]
    state, _ = proxy.server.cache.lookup("big")
    files = state.page.files
    html = proxy.request("/simple/big/")[2]  # rendered again from the body: nothing held
    if not json_pages:  # an HTML page has no offsets to find a file by: it stays a list
        assert isinstance(files, list) and html.count(b"<a href=") == count
        return
    assert isinstance(files, pytail.StoredFiles) and len(files) == count
    assert files._held is None
    docs = [json.loads(first), json.loads(
        proxy.request("/root/pypi/+simple/big/", headers={"Accept": UV_ACCEPT})[2])]
    for item in docs[0]["files"] + docs[1]["files"]:
        item["url"] = item["url"].rsplit("+f/", 1)[1]
    assert docs[0] == docs[1]
    assert html.count(b"<a href=") == count
    for i in (0, count // 2, count - 1):
        path = pytail.sha_path(sha(b"data %d" % i), f"big-{i}.0.tar.gz")
        assert files.find(path).filename == f"big-{i}.0.tar.gz"  # type: ignore[union-attr]
        status, _, body = proxy.request("/" + path)
        assert status == 200 and body == b"data %d" % i
    assert files.find(pytail.sha_path("0" * 64, "big-1.0.tar.gz")) is None


def test_page_memory_is_bounded_by_bytes(proxy: Proxy, upstream: FakeUpstream,
                                         alpha_beta: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pytail, "RENDER_CACHE_BYTES", 1)  # only the newest page stays
    for name in ("alpha", "beta", "alpha", "beta"):
        status, _, body = proxy.request(f"/simple/{name}/", headers={"Accept": UV_ACCEPT})
        assert status == 200 and json.loads(body)["name"] == name
        assert list(proxy.server.cache._memory) == [name]
    assert upstream.count("/simple/") == 2  # forgotten pages come back from SQLite
    state, _ = proxy.server.cache.lookup("beta")
    assert 0 < state.weight() < 100_000


def test_pages_are_kept_gzip_and_parse_from_either_form() -> None:
    body = json.dumps({"files": [{"filename": f"pkg-{i}.0.tar.gz", "url": f"https://f/pkg-{i}.0.tar.gz",
                                  "hashes": {"sha256": f"{i:064x}"}} for i in range(3000)]}).encode()
    packed = gzip.compress(body)
    assert len(packed) < len(body) // 4
    for form in (body, packed):
        page = pytail.parse_project_json("pkg", form, "https://x/")
        assert len(page.files) == 3000 and page.files[-1].sha256 == f"{2999:064x}"
    body = json.dumps({"files": [{"filename": f"pkg-{i}.0.tar.gz", "url": f"https://f/{i}",
                                  "yanked": "bad é 😀 " * (i % 3)} for i in range(30000)]},
                      ensure_ascii=False).encode()
    page = pytail.parse_project_json("pkg", gzip.compress(body), "https://x/")
    for i in (0, 1, 20000, 29999):  # offsets count characters, across 64 KB pieces
        assert page.offsets is not None
        entry = pytail.json_file_at(gzip.compress(body), page.offsets[i], "https://x/")
        assert entry == page.files[i]
    for damaged in (packed[:-9], packed[:40] + b"x" * 10 + packed[50:]):
        with pytest.raises(ValueError):
            pytail.parse_project_json("pkg", damaged, "https://x/")


@pytest.mark.parametrize("a,b,same", [
    ("1.0", "1", True), ("1.0.0", "1", True), ("V1.0", "1", True), ("1.10", "1.1", False),
    ("2.0rc1", "2.0rc1", True), ("1.0", "1.0.1", False), ("10", "1", False),
])
def test_same_version(a: str, b: str, same: bool) -> None:
    assert pytail.same_version(a, b) is same


def test_prefetch_reports_version_pins_that_match_nothing(upstream: FakeUpstream,
                                                          alpha_beta: None, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    requirements = tmp_path / "r.txt"
    requirements.write_text("beta==99.0\n")
    assert pytail.main(["prefetch", "-r", str(requirements), "--upstream-base-url",
                        upstream.url, "--cache-dir", str(tmp_path / "c")]) == 1
    assert "beta==99.0" in capsys.readouterr().out


def test_metrics_keep_full_precision() -> None:
    metrics = pytail.Metrics()
    metrics.add("pytail_bytes_served_total", 1_234_567_890)
    text = metrics.render({"pytail_uptime_seconds": 12.5}).decode()
    assert "pytail_bytes_served_total 1234567890" in text
    assert "pytail_uptime_seconds 12.5" in text


def test_running_offline_server_sees_a_prune(proxy: Proxy, alpha: Path, cfg: pytail.ServeConfig,
                                             clock: Clock, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    proxy.request(proxy.file_url("alpha", alpha.name))
    proxy.stop()
    import dataclasses
    offline = Proxy(dataclasses.replace(cfg, upstream=None), clock)
    try:
        assert [f["filename"] for f in offline.get_json("/simple/alpha/")["files"]] == [alpha.name]
        assert pytail.main(["cache", "prune", "--max-size", "0", "--cache-dir",
                            cfg.cache_dir]) == 0
        wait_until(lambda: offline.get_json("/simple/alpha/")["files"] == [], timeout=5)
    finally:
        offline.stop()


def test_cache_refresh_reaches_a_running_server(proxy: Proxy, upstream: FakeUpstream,
                                                alpha: Path, dists: Path,
                                                cfg: pytail.ServeConfig) -> None:
    assert proxy.get_json("/simple/alpha/")["versions"] == ["0.9", "1.0"]
    upstream.add("alpha", make_wheel(dists, "alpha", "2.0"))
    assert pytail.main(["cache", "refresh", "alpha", "--upstream-base-url", upstream.url,
                        "--cache-dir", cfg.cache_dir]) == 0
    wait_until(lambda: "2.0" in proxy.get_json("/simple/alpha/")["versions"], timeout=5)
