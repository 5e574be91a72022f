"""``diffret report``: one HTML file, parsed: every image embedded as a PNG data URI, no
reference that leaves the file, the saved metric tables and the diagnostics in it."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from diffret_cli.diagnostics import rerank_diagnostics
from viz_helpers import tiny_run, tiny_view

URL_ATTRS = {"src", "href", "srcset", "action", "data", "poster", "background", "formaction", "xlink:href"}


class Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in_style = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        (self.styles if self._in_style else self.text).append(data)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def page(run):
    from diffret_cli.report import REPORT_FILE, build_report
    from diffret_cli.fileio import atomic_write_text

    text = build_report(tiny_view(run), progress=False)
    atomic_write_text(run.run_dir / REPORT_FILE, text)
    return text


def test_every_image_is_embedded_and_nothing_leaves_the_file(page):
    p = Page(page)
    imgs = [a for t, a in p.tags if t == "img"]
    # 2 moves figures (in + out of domain), the curves, Figure 4, two Figure 5s, Figure B,
    # Figure C in domain and out of domain
    assert len(imgs) == 9
    for a in imgs:
        head, _, data = a["src"].partition(",")
        assert head == "data:image/png;base64"
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.format == "PNG" and min(im.size) > 100
        assert a.get("alt")
    for tag, attrs in p.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for k, v in attrs.items():
            if k in URL_ATTRS and not (tag == "img" and k == "src"):
                assert v.startswith("#"), (tag, k, v)  # in-page anchors only
    css = "".join(p.styles)
    assert "url(" not in css and "@import" not in css and "@font-face" not in css
    assert not re.search(r"(?i)(https?:|//[a-z0-9.-]+\.[a-z]{2,}/)", re.sub(r"data:image/png;base64,[^\"']+", "", page))


def test_tables_hold_the_saved_evaluations(run, page):
    p = Page(page)
    text = " ".join(p.text)
    for name in ("in-domain", "out-of-domain", "QB-Norm", "Recipe", "Re-ranking diagnostics", "Training"):
        assert name in text
    ev = json.loads((run.run_dir / "eval" / "synthetic-test.json").read_text())
    cells = re.findall(r"<tr><td class=\"l\">synthetic test[^<]*</td><td class=\"l\">(\w[\w+]*)</td>"
                       r"<td class=\"l\">(t2v|v2t)</td>((?:<td>[^<]*</td>)+)</tr>", page)
    got = {(row, d): re.findall(r"<td>([^<]*)</td>", tds) for row, d, tds in cells}
    assert set(got) == {("stage1", "t2v"), ("stage1", "v2t"), ("diffusion", "t2v"), ("diffusion", "v2t"),
                        ("stage1+qbnorm", "t2v")}
    for (row, d), values in got.items():
        m = ev["rows"][row][d]
        assert values == [f"{m[c]:.1f}" for c in ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "Rsum")]
    assert "tiny" in text and "synthetic-shift" in text  # the recipe, with its out-of-domain target


def test_diagnostics_are_the_scored_ones(run, page):
    view = tiny_view(run)
    s = view.scores()
    d = rerank_diagnostics(s.stage1, (s.t2v, s.v2t), s.caption_video, record=s.record)
    rows = re.findall(r"<h3>synthetic test</h3><table>.*?</table>", page, flags=re.S)
    assert len(rows) == 1
    for direction in ("t2v", "v2t"):
        m = d[direction]["moves"]
        cells = re.search(rf"<tr><td class='l'>{direction}</td>((?:<td>[^<]*</td>)+)</tr>", rows[0]).group(1)
        values = re.findall(r"<td>([^<]*)</td>", cells)
        assert values[:4] == [str(m["queries"]), str(m["up"]), str(m["down"]), str(m["same"])]
        assert int(values[1]) + int(values[2]) + int(values[3]) == int(values[0])
        assert values[6].startswith(f"{d[direction]['ceiling']['percent']:.1f}%")


def test_cli_report_without_figures_uses_saved_diagnostics(run, tmp_path):
    """--no-figures needs no data: tables, curves, and diagnostics an evaluation saved."""
    from click.testing import CliRunner

    from diffret_cli.cli.main import cli
    from diffret_cli.fileio import atomic_write_json

    s = tiny_view(run).scores()
    path = run.run_dir / "eval" / "synthetic-test.json"
    original = path.read_text()
    saved = json.loads(original)
    saved["diagnostics"] = rerank_diagnostics(s.stage1, (s.t2v, s.v2t), s.caption_video, record=s.record)
    atomic_write_json(path, saved)
    out = tmp_path / "r.html"
    try:
        res = CliRunner().invoke(cli, ["report", str(run.run_dir), "--no-figures", "--quiet", "--out", str(out),
                                       "--data-root", str(tmp_path / "nothing-here")], catch_exceptions=False)
    finally:
        path.write_text(original)
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(out)
    text = out.read_text()
    assert "<h3>synthetic test (saved)</h3>" in text
    assert len([t for t, _ in Page(text).tags if t == "img"]) == 1  # the training curves
