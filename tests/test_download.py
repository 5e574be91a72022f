"""The download path against a fake HTTP server on 127.0.0.1 (nothing else is contacted)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest

from diffret_cli.data import download as dl
from diffret_cli.data.download import (DownloadError, DownloadInterrupted, SourceMissingError, download_file,
                                       extract_archive, fetch_sources)
from diffret_cli.data.types import SplitAnnotations, VideoEntry
from diffret_cli.errors import OfflineError
from diffret_cli.data.plugin import DatasetPlugin, DownloadSource


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


# incompressible payload so the archive is big enough to cut in the middle
PAYLOAD = _zip_bytes({"bundle/annos.json": json.dumps({"train": {"v1": ["a cat"], "v2": ["a dog"]}}).encode(),
                      "bundle/blob.bin": hashlib.sha256(b"x").digest() * 8192})
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class FakeServer:
    """Serves PAYLOAD at /data.zip with Range support; can drop the first connection."""

    def __init__(self, *, cut_after: int | None = None, honour_range: bool = True):
        self.cut_after = cut_after
        self.honour_range = honour_range
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.requests.append({"path": self.path, "range": self.headers.get("Range", "")})
                if self.path != "/data.zip":
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and server.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    cut, server.cut_after = server.cut_after, None  # only the first time
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_interrupted_download_resumes_with_range_and_verifies(tmp_path):
    dest = tmp_path / "data.zip"
    half = len(PAYLOAD) // 2
    with FakeServer(cut_after=half) as srv:
        with pytest.raises(DownloadInterrupted) as err:
            download_file([srv.url + "/data.zip"], dest, sha256=SHA, retries=0, progress=False, timeout=5)
        assert "re-run" in str(err.value)
        part = tmp_path / "data.zip.part"
        assert part.stat().st_size == half and not dest.exists()
        # the re-run asks only for the rest and checks the checksum of the whole
        download_file([srv.url + "/data.zip"], dest, sha256=SHA, retries=0, progress=False, timeout=5)
    assert [r["range"] for r in srv.requests] == ["", f"bytes={half}-"]
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert (tmp_path / "data.zip.sha256").read_text().strip() == SHA
    # a third call finds the verified file and makes no request
    n = len(srv.requests)
    download_file(["http://127.0.0.1:1/never"], dest, sha256=SHA, progress=False)
    assert len(srv.requests) == n


def test_dropped_connection_is_resumed_within_one_call(tmp_path):
    dest = tmp_path / "data.zip"
    with FakeServer(cut_after=1000) as srv:
        download_file([srv.url + "/data.zip"], dest, sha256=SHA, retries=1, progress=False, timeout=5)
    assert [r["range"] for r in srv.requests] == ["", "bytes=1000-"]
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == SHA


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    dest = tmp_path / "data.zip"
    (tmp_path / "data.zip.part").write_bytes(PAYLOAD[:5000])
    with FakeServer(honour_range=False) as srv:
        download_file([srv.url + "/data.zip"], dest, sha256=SHA, progress=False, timeout=5)
    assert srv.requests[0]["range"] == "bytes=5000-"
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_gets_416_and_is_accepted(tmp_path):
    dest = tmp_path / "data.zip"
    (tmp_path / "data.zip.part").write_bytes(PAYLOAD)
    with FakeServer() as srv:
        download_file([srv.url + "/data.zip"], dest, sha256=SHA, progress=False, timeout=5)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_and_raises(tmp_path):
    dest = tmp_path / "data.zip"
    with FakeServer() as srv:
        with pytest.raises(DownloadError, match="expected 0000") as err:
            download_file([srv.url + "/data.zip"], dest, sha256="0" * 64, progress=False, timeout=5)
    assert SHA in str(err.value)
    assert not dest.exists() and not (tmp_path / "data.zip.part").exists()


def test_http_404_falls_back_to_next_url(tmp_path):
    dest = tmp_path / "data.zip"
    with FakeServer() as srv:
        download_file([srv.url + "/missing.zip", srv.url + "/data.zip"], dest, sha256=SHA, progress=False)
        with pytest.raises(DownloadError, match="HTTP 404"):
            download_file([srv.url + "/missing.zip"], tmp_path / "other.zip", progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_connection_refused_is_offline_at_once(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/data.zip"
    t0 = time.perf_counter()
    with pytest.raises(OfflineError, match="connection refused") as err:
        download_file([url], tmp_path / "data.zip", progress=False, timeout=5)
    assert time.perf_counter() - t0 < 2.0
    assert "--source" in str(err.value)


def test_dns_failure_is_offline(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", no_dns)
    with pytest.raises(OfflineError, match="DNS lookup failed"):
        download_file(["https://example.invalid/x.zip"], tmp_path / "x.zip", progress=False)


def test_timeout_is_offline(tmp_path):
    # a listening socket that never answers: the request times out
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/data.zip"
        t0 = time.perf_counter()
        with pytest.raises(OfflineError, match="timed out"):
            download_file([url], tmp_path / "data.zip", progress=False, timeout=0.5)
        assert time.perf_counter() - t0 < 3.0


# ------------------------------------------------------------------------ extraction
def test_extract_zip_once(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(PAYLOAD)
    out = extract_archive(archive, tmp_path / "src")
    assert json.loads((out / "bundle/annos.json").read_text())["train"]["v1"] == ["a cat"]
    (out / "bundle/annos.json").write_text("edited")
    extract_archive(archive, tmp_path / "src")  # marker: not extracted again
    assert (out / "bundle/annos.json").read_text() == "edited"


def test_extract_tar(tmp_path):
    import tarfile

    src = tmp_path / "in"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_text("hello")
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "d", arcname="d")
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "d" / "f.txt").read_text() == "hello"


def test_extract_refuses_path_traversal(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"../escaped.txt": b"x"}))
    with pytest.raises(DownloadError, match="outside"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


# ------------------------------------------------------------------- dataset sources
class _Loopback(DatasetPlugin):
    name: ClassVar[str] = "loopback"
    splits: ClassVar[tuple[str, ...]] = ("train",)
    protocol = "single"
    download_note: ClassVar[str] = "videos: ask the authors"

    def __init__(self, *, url: str = ""):
        self.url = url
        self.downloads = (DownloadSource("annotations", (url,), "data.zip", sha256=SHA,
                                         note="CLIP4Clip release asset"),)

    def config(self):
        return {"url": self.url}

    def annotation_files(self, split):
        return ["annos.json"]

    def load_split(self, source: Path, split: str) -> SplitAnnotations:
        data = json.loads((source / "annos.json").read_text())[split]
        return SplitAnnotations(self.name, split, self.protocol,
                                [VideoEntry(k, tuple(v)) for k, v in data.items()])

    def locate_video(self, source, entry):
        return None


def test_fetch_sources_downloads_and_extracts(tmp_path):
    with FakeServer() as srv:
        plugin = _Loopback(url=srv.url + "/data.zip")
        target = fetch_sources(plugin, tmp_path / "loopback", progress=False)
    assert target == tmp_path / "loopback" / "source"
    assert (target / "bundle" / "annos.json").is_file()
    assert (tmp_path / "loopback" / "downloads" / "data.zip").read_bytes() == PAYLOAD


def test_fetch_sources_offline_says_where_and_how(tmp_path):
    plugin = _Loopback(url=f"http://127.0.0.1:{_closed_port()}/data.zip")
    with pytest.raises(OfflineError) as err:
        fetch_sources(plugin, tmp_path / "loopback", progress=False)
    text = str(err.value)
    assert plugin.url in text and "CLIP4Clip release asset" in text and "ask the authors" in text
    assert "diffret data prepare loopback --source DIR" in text


def test_no_public_download_requires_source(tmp_path):
    class Gated(_Loopback):
        name: ClassVar[str] = "gated"
        download_note: ClassVar[str] = "licence-gated: request access from MPII"

        def __init__(self):
            self.url = ""
            self.downloads = None

    with pytest.raises(SourceMissingError) as err:
        fetch_sources(Gated(), tmp_path / "gated", progress=False)
    assert "no public download" in str(err.value) and "MPII" in str(err.value)
    assert "--source DIR" in str(err.value)
    assert not (tmp_path / "gated").exists()


def test_prepare_uses_the_download_path(tmp_path):
    """End to end: no --source and nothing local -> download, extract, parse, record."""
    from diffret_cli.data.prepare import prepare
    from diffret_cli.registry import registry

    with FakeServer() as srv:
        url = srv.url + "/data.zip"

        class Served(_Loopback):
            def __init__(self):
                super().__init__(url=url)

        registry().register("datasets", "loopback-served", Served)
        try:
            report = prepare("loopback-served", data_root=tmp_path, workers=1, progress=False)
        finally:
            registry().unregister("datasets", "loopback-served")
    assert report.source == str(tmp_path / "loopback-served" / "source" / "bundle")
    assert report.splits["train"].videos == 2
    assert report.splits["train"].skipped == {"missing-video": 2}  # the zip holds no videos
    assert dl.sha256_file(tmp_path / "loopback-served" / "downloads" / "data.zip") == SHA


def test_files_already_under_the_source_dir_are_used_without_network(tmp_path):
    from diffret_cli.data.prepare import source_root_under, prepare
    from diffret_cli.registry import registry

    dead = f"http://127.0.0.1:{_closed_port()}/data.zip"

    class Offline(_Loopback):
        def __init__(self):
            super().__init__(url=dead)

    archive = tmp_path / "a.zip"
    archive.write_bytes(PAYLOAD)
    extract_archive(archive, tmp_path / "offline" / "source")  # as a previous run left it
    registry().register("datasets", "offline", Offline)
    try:
        report = prepare("offline", data_root=tmp_path, workers=1, progress=False)
    finally:
        registry().unregister("datasets", "offline")
    assert report.source == str(tmp_path / "offline" / "source" / "bundle")
    assert report.splits["train"].videos == 2

    # files spread over sub-folders (msrvtt_data/ + a list at the top): the top folder is
    # used and the plugin's own lookup finds them; a missing file means "not here"
    base = tmp_path / "spread"
    (base / "msrvtt_data").mkdir(parents=True)
    (base / "msrvtt_data" / "MSRVTT_data.json").write_text("{}")
    (base / "MSRVTT_val.full.csv").write_text("video_id\n")
    assert source_root_under(base, ["MSRVTT_val.full.csv", "MSRVTT_data.json"]) == base
    assert source_root_under(base, ["MSRVTT_data.json"]) == base / "msrvtt_data"
    assert source_root_under(base, ["MSRVTT_data.json", "MSRVTT_train.9k.csv"]) is None
