"""``diffret serve``: the page is self-contained, the API answers like the CLI, and no
file outside the index is ever served."""

from __future__ import annotations

import http.client
import json
import re
import threading

import pytest
from click.testing import CliRunner

from search_helpers import folder_index, world


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from diffret_cli.search import SearchIndex
    from diffret_cli.search.server import serve

    w = world(tmp_path_factory.getbasetemp() / "search-world")
    idx = folder_index(w, w["ckpt"].parent / "idx-folder")
    server = serve(SearchIndex.open(idx), port=0)  # 127.0.0.1, a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, idx, w
    server.shutdown()
    server.server_close()


def _get(server, path: str, headers: dict | None = None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), body


def test_binds_loopback_and_serves_a_self_contained_page(served):
    server, _, _ = served
    assert server.server_address[0] == "127.0.0.1"
    status, headers, body = _get(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "<input" in page and "/api/search" in page
    # nothing fetched from elsewhere: no remote URL, no external script, style or font
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.I)
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import|url\(", page, re.I)
    assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_api_search_returns_the_cli_json(served):
    from diffret_cli.cli.main import cli

    server, idx, _ = served
    q = "a grey square fades in"
    status, headers, body = _get(server, "/api/search?q=a%20grey%20square%20fades%20in&top=3")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    got = json.loads(body)
    out = CliRunner().invoke(cli, ["search", str(idx), q, "--top", "3", "--json"])
    assert out.exit_code == 0, out.output
    ref = json.loads(out.stdout)
    assert got["query"] == ref["query"] == q
    assert got["results"] == ref["results"]  # ids, paths, rows and scores
    assert got["settings"] == ref["settings"]
    assert len(got["results"]) == 3


def test_serves_indexed_videos_and_thumbnails_only(served):
    server, idx, w = served
    status, headers, body = _get(server, "/thumb/0.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    first = (w["videos"] / "a_clip.mp4").read_bytes()
    status, headers, body = _get(server, "/video/0")
    assert status == 200 and body == first and headers["Content-Type"] == "video/mp4"
    status, headers, body = _get(server, "/video/0", {"Range": "bytes=10-19"})
    assert status == 206 and body == first[10:20] and headers["Content-Range"] == f"bytes 10-19/{len(first)}"
    for bad in ("/video/../../../../etc/passwd", "/etc/passwd", "/video/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                "/video/3", "/video/-1", "/video/0.jpg", "/thumb/0", "/thumb/99.jpg", f"/video/{idx}/videos/items.jsonl",
                "/videos/items.jsonl", "/index.json", "/api/../index.json", "//etc/passwd", "/thumb/..%2f0.jpg"):
        status, _, body = _get(server, bad)
        assert status == 404, bad
        assert b"root:" not in body and b"diffret-index" not in body
    status, _, _ = _get(server, "/video/0", {"Host": "evil.example:80"})
    assert status == 403  # DNS rebinding: a foreign Host name is refused
    status, _, body = _get(server, "/api/search?q=")
    assert status == 400 and b"empty query" in body


def test_serve_command_defaults_to_loopback():
    from diffret_cli.cli.cmd_serve import serve

    host = next(p for p in serve.params if p.name == "host")
    assert host.default == "127.0.0.1"
