"""``diffret serve``: a local web page over a search index.

Bound to 127.0.0.1 by default. The page is one self-contained HTML document (inline CSS
and script; no remote scripts, styles or fonts). Routes, and nothing else:

=========================  ============================================================
``GET /``                  the page
``GET /api/search?q=..``   the JSON of ``diffret search INDEX q --json`` (``top=``)
``GET /api/info``          what the index holds
``GET /thumb/<row>.jpg``   the thumbnail strip of indexed video ``row``
``GET /video/<row>``       the file of indexed video ``row`` (byte ranges, for seeking)
=========================  ============================================================

Files are addressed by their row in the index, never by a path from the request, so no
file of the machine is served unless it is an indexed video; any other path is a 404.
Requests whose ``Host`` header is not this server's loopback address are refused (a
remote page cannot reach it by DNS rebinding).
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from diffret_cli.errors import DiffretError

MAX_TOP = 100
_ROW = re.compile(r"^/(thumb|video)/(\d{1,12})(\.jpg)?$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def page_html() -> bytes:
    return resources.files("diffret_cli.search").joinpath("page.html").read_bytes()


class SearchServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, index, *, host: str = "127.0.0.1", port: int = 8765, search_kwargs: dict | None = None):
        self.index = index
        self.search_kwargs = dict(search_kwargs or {})
        self.lock = threading.Lock()  # one query at a time through the model
        self.page = page_html()
        super().__init__((host, port), _Handler)
        h, p = self.server_address[:2]
        self.allowed_hosts = {f"{h}:{p}", f"localhost:{p}", f"127.0.0.1:{p}", f"[::1]:{p}"}

    @property
    def url(self) -> str:
        h, p = self.server_address[:2]
        return f"http://{h}:{p}/"

    def video_file(self, row: int) -> Path | None:
        """The file of indexed video ``row``, or None (no such row, or no file)."""
        part = self.index.videos.part if self.index.videos else None
        if part is None or not 0 <= row < len(part):
            return None
        path = part.item(row).get("path")
        if not path:
            return None
        p = Path(path)
        return p if p.is_file() else None


class _Handler(BaseHTTPRequestHandler):
    server: SearchServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:  # quiet: the CLI prints the URL once
        pass

    # ------------------------------------------------------------------ responses
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # ------------------------------------------------------------------ routing
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.headers.get("Host", "") not in self.server.allowed_hosts:
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        url = urlsplit(self.path)
        path = url.path
        if path in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8",
                              {"Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                          "script-src 'unsafe-inline'; img-src 'self'; "
                                                          "media-src 'self'"})
        if path == "/api/search":
            return self._search(parse_qs(url.query))
        if path == "/api/info":
            return self._json(HTTPStatus.OK, _info(self.server.index))
        m = _ROW.match(path)
        if m:
            row = int(m.group(2))
            if m.group(1) == "thumb" and m.group(3):
                return self._thumb(row)
            if m.group(1) == "video" and not m.group(3):
                return self._video(row)
        return self._error(HTTPStatus.NOT_FOUND, "not found")

    def _search(self, qs: dict) -> None:
        q = (qs.get("q") or [""])[0].strip()
        if not q:
            return self._error(HTTPStatus.BAD_REQUEST, "empty query: pass ?q=...")
        try:
            top = int((qs.get("top") or ["10"])[0])
        except ValueError:
            return self._error(HTTPStatus.BAD_REQUEST, "top must be an integer")
        top = max(1, min(top, MAX_TOP))
        try:
            with self.server.lock:
                [res] = self.server.index.search(q, top=top, **self.server.search_kwargs)
        except DiffretError as exc:
            return self._error(HTTPStatus.BAD_REQUEST, exc.message)
        self._json(HTTPStatus.OK, res)

    def _thumb(self, row: int) -> None:
        part = self.server.index.videos.part if self.server.index.videos else None
        jpg = part.thumbnail(row) if part is not None and 0 <= row < len(part) else None
        if not jpg:
            return self._error(HTTPStatus.NOT_FOUND, "no thumbnail")
        self._send(HTTPStatus.OK, jpg, "image/jpeg")

    def _video(self, row: int) -> None:
        path = self.server.video_file(row)
        if path is None:
            return self._error(HTTPStatus.NOT_FOUND, "no video file for this row")
        size = path.stat().st_size
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        start, end = 0, size - 1
        status = HTTPStatus.OK
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", "text/plain",
                                  {"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(0, size - int(m.group(2)))
            if start > end or start >= size:
                return self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", "text/plain",
                                  {"Content-Range": f"bytes */{size}"})
            status = HTTPStatus.PARTIAL_CONTENT
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as fh:
            fh.seek(start)
            left = length
            while left > 0:
                chunk = fh.read(min(1 << 20, left))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):  # the browser seeked away
                    return
                left -= len(chunk)


def _info(index) -> dict:
    meta = index.meta
    return {"index": os.fspath(index.root), "videos": (meta.get("videos") or {}).get("count", 0),
            "captions": (meta.get("captions") or {}).get("count", 0), "source": meta.get("source"),
            "thumbnails": bool(index.videos and index.videos.part.thumbs_idx is not None)}


def serve(index, *, host: str = "127.0.0.1", port: int = 8765, search_kwargs: dict | None = None) -> SearchServer:
    """A started-up server (call ``serve_forever()``; ``port=0`` picks a free port)."""
    return SearchServer(index, host=host, port=port, search_kwargs=search_kwargs)
