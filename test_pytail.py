"""Tests for pytail.py, in the order of its sections.

Real servers on 127.0.0.1:0 in-process (pytail, a fake upstream index, moto for S3), real
pip and uv for installs. Checklist IDs refer to shared/spec/simple-api-checklist.md.
"""
from __future__ import annotations

import ast
import concurrent.futures
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
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
            return "application/vnd.pypi.simple.v1+json", json.dumps(doc).encode()
        links = "".join(self._anchor(f) for f in files)
        return "text/html", f"<!DOCTYPE html><html><body>{links}</body></html>".encode()

    def _json_file(self, f: UpFile) -> dict[str, Any]:
        item = {"filename": f.filename, "url": f"/files/{f.filename}",
                "hashes": {"sha256": sha(f.data)}, "requires-python": f.requires_python,
                "size": len(f.data), "upload-time": "2024-01-02T03:04:05.000000Z",
                "yanked": f.yanked, "provenance": None, "x-unknown": {"kept": True}}
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
            self._send(200, body, ctype, headers)

        def _file(self, filename: str) -> None:
            found = up.file(filename)
            if found is None:
                return self._send(404, b"", "text/plain")
            data, _ = found
            if up.gate is not None:
                up.gate.wait(10)
            if filename in up.corrupt:
                data = b"X" + data[1:]
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


def test_metadata_from_upstream_is_verified(proxy: Proxy, upstream: FakeUpstream,
                                            alpha: Path) -> None:  # META-1/2/6
    page = proxy.get_json("/simple/alpha/")
    wheel = next(f for f in page["files"] if f["filename"] == alpha.name)
    meta = wheel_metadata_bytes(alpha)
    assert wheel["core-metadata"] == {"sha256": sha(meta)}
    url = "/" + wheel["url"].removeprefix("../../") + ".metadata"
    status, headers, body = proxy.request(url)
    assert status == 200 and body == meta
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
    assert proxy.request(url + ".metadata")[2] == meta
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
    for flag in set(re.findall(r"(--[a-z-]+)", out)) - {"--help"}:
        assert flag in readme, f"{flag} is not in the README"


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
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        log = proc.stderr.read()  # type: ignore[union-attr]
        assert '"GET /simple/alpha/" 200' in log and "MISS" in log  # one line per request
        assert "Traceback" not in log
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
