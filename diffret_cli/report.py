"""``diffret report``: one self-contained HTML page about a run.

The page holds the recipe, the metric tables the run's evaluations saved (``eval/*.json``:
in-domain, out-of-domain, QB-Norm rows), the re-ranking diagnostics
(:mod:`diffret_cli.diagnostics`), the training curves (``metrics.jsonl``) and the paper's
figures (:mod:`diffret_cli.viz`). Every image is a PNG data URI and the style sheet is
inline, so the file opens offline and can be mailed or archived as one file; nothing in
it refers to another file or host.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from diffret_cli.errors import DiffretError

__all__ = ["REPORT_FILE", "build_report", "write_report"]

REPORT_FILE = "report.html"
METRIC_COLUMNS = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "Rsum")

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
h3{font-size:1.02em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em;max-height:28em}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.3em 0}
.note{color:#666;font-size:.88em}.warn{color:#a33}nav a{margin-right:1em}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "\u2013"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _pct(x: float | None) -> str:
    return "\u2013" if x is None else f"{x:.1f}%"


# ----------------------------------------------------------------------------- tables
def read_evals(run_dir: Path) -> list[dict]:
    """Every saved evaluation of the run (``eval/*.json``), with its file name."""
    out = []
    for p in sorted((run_dir / "eval").glob("*.json")):
        try:
            res = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(res, dict) and isinstance(res.get("rows"), dict):
            out.append({**res, "_file": p.name})
    return out


def metric_table(rows: list[tuple[str, str, str, dict]]) -> str:
    """rows: (evaluation, scores row, direction, metrics)."""
    head = "".join(f"<th>{c}</th>" for c in METRIC_COLUMNS)
    body = []
    for ev, row, d, m in rows:
        cells = "".join(f"<td>{_fmt(m.get(c))}</td>" for c in METRIC_COLUMNS)
        body.append(f'<tr><td class="l">{_e(ev)}</td><td class="l">{_e(row)}</td><td class="l">{d}</td>{cells}</tr>')
    return (f'<table><tr><th class="l">evaluation</th><th class="l">scores</th><th class="l">direction</th>{head}'
            f"</tr>{''.join(body)}</table>")


def metric_sections(evals: list[dict], in_domain: str) -> str:
    """In-domain, out-of-domain and QB-Norm tables from saved evaluations."""
    groups: dict[str, list] = {"in-domain": [], "out-of-domain": [], "QB-Norm": []}
    def dataset(res: dict) -> str:
        return res.get("dataset", res["_file"].rsplit("-", 1)[0])

    for res in sorted(evals, key=lambda r: (dataset(r) != in_domain, r["_file"])):  # in-domain first
        ds = dataset(res)
        label = f"{ds} {res.get('split', '')} ({res.get('num_captions', '?')} captions, " \
                f"{res.get('num_videos', '?')} videos)"
        domain = "in-domain" if ds == in_domain else "out-of-domain"
        for row, r in res["rows"].items():
            for d in ("t2v", "v2t"):
                if d in r:
                    groups["QB-Norm" if "qbnorm" in row else domain].append((label, row, d, r[d]))
    parts = []
    for name, rows in groups.items():
        parts.append(f"<h3>{name}</h3>")
        if rows:
            parts.append(metric_table(rows))
        elif name == "QB-Norm":
            parts.append('<p class="note">no QB-Norm rows saved: <code>diffret eval RUN --qb-norm</code> '
                         "adds them.</p>")
        else:
            parts.append(f'<p class="note">no {name} evaluation saved in eval/.</p>')
    return "\n".join(parts)


def diagnostics_table(title: str, diag: dict) -> str:
    head = ("<tr><th class='l'>direction</th><th>queries</th><th>moved up</th><th>down</th><th>same</th>"
            "<th>ranks up: mean / max</th><th>ranks down: mean / max</th><th>gt in top K</th>"
            "<th>sample-only top-1 in K</th><th>stage-1 top-1 in K</th><th>chance</th>"
            "<th>gt rank in K: sample / stage 1 / chance</th></tr>")
    body = []
    for d in ("t2v", "v2t"):
        if d not in diag:
            continue
        # a family without a shortlist (DITS rescores the whole gallery) has moves only
        m, c, s = diag[d]["moves"], diag[d].get("ceiling") or {}, diag[d].get("sample") or {}
        body.append(
            f"<tr><td class='l'>{d}</td><td>{m['queries']}</td><td>{m['up']}</td><td>{m['down']}</td>"
            f"<td>{m['same']}</td><td>{_fmt(m['ranks_up']['mean'], 2)} / {m['ranks_up']['max']}</td>"
            f"<td>{_fmt(m['ranks_down']['mean'], 2)} / {m['ranks_down']['max']}</td>"
            f"<td>{_pct(c.get('percent'))}" + (f" (K={c['k']})" if c else "") + "</td>"
            f"<td>{_pct(s.get('sample_top1'))}</td><td>{_pct(s.get('stage1_top1'))}</td>"
            f"<td>{_pct(s.get('chance_top1'))}</td>"
            f"<td>{_fmt(s.get('sample_mean_rank'), 2)} / {_fmt(s.get('stage1_mean_rank'), 2)} / "
            f"{_fmt(s.get('chance_mean_rank'), 2)}</td></tr>")
    return f"<h3>{_e(title)}</h3><table>{head}{''.join(body)}</table>"


# ----------------------------------------------------------------------------- report
class _Steps:
    """Progress on stderr (rich) while the report is built; silent when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("report"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TextColumn("{task.description}"), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("", total=total)
            self.bar.start()

    def __call__(self, what: str, fn: Callable[[], Any]) -> Any:
        if self.bar is not None:
            self.bar.update(self.task, description=what)
        try:
            return fn()
        finally:
            if self.bar is not None:
                self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def build_report(view, *, progress: bool = True, figures: bool = True) -> str:
    """The HTML of the report of an opened run (:func:`diffret_cli.viz.runview.open_run`)."""
    from diffret_cli.diagnostics import rerank_diagnostics
    from diffret_cli.viz.curves import curves_figure, read_metrics
    from diffret_cli.viz.frames import png_bytes
    from diffret_cli.viz.moves import moves_figure

    run = view.run_dir
    targets = [(t.dataset, t.split) for t in view.targets()]
    # scoring each split, the curves, then four figures and one Figure C per extra split
    steps = _Steps(total=2 * len(targets) + 5 if figures else 0, enabled=progress and figures)
    notes: list[str] = []
    try:
        sections = [f"<h1>diffret report: {_e(run.name)}</h1>",
                    f"<p class='note'>{_e(run.resolve())} &middot; generated "
                    f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>",
                    "<nav><a href='#recipe'>recipe</a><a href='#metrics'>metrics</a>"
                    "<a href='#diagnostics'>re-ranking diagnostics</a><a href='#training'>training</a>"
                    "<a href='#figures'>figures</a></nav>"]

        sections.append("<h2 id='metrics'>Metrics</h2><p class='note'>From the run's saved evaluations "
                        "(<code>eval/*.json</code>); R@K in percent, MdR / MnR in ranks.</p>")
        evals = read_evals(run)
        sections.append(metric_sections(evals, view.dataset_name))

        scored = []
        if figures:
            for name, split in targets:
                try:
                    scored.append(steps(f"scoring {name} {split}",
                                        lambda n=name, s=split: view.scores(n, s, keep_chains=True)))
                except DiffretError as exc:
                    notes.append(f"{name} {split}: not drawn ({exc.message}; fix: {exc.hint or 'prepare it'})")
        diag_parts = []
        drawn = {(s.dataset, s.split_name) for s in scored}
        for res in evals:  # diagnostics an evaluation saved, for splits not scored here
            if isinstance(res.get("diagnostics"), dict) and (res.get("dataset"), res.get("split")) not in drawn:
                diag_parts.append(diagnostics_table(f"{res.get('dataset')} {res.get('split')} (saved)",
                                                    res["diagnostics"]))
        for s in scored:
            if s.t2v is None:
                continue
            d = rerank_diagnostics(s.stage1, (s.t2v, s.v2t), s.caption_video, record=s.record)
            if d["t2v"].get("sample") is None and s.record and "v0" in s.record:
                notes.append(f"{s.dataset}: the sampler's state is a query embedding (no per-candidate sample)")
            diag_parts.append(diagnostics_table(f"{s.dataset} {s.split_name}", d))
            diag_parts.append(_img(png_bytes(moves_figure(d, title=f"{s.dataset} ")),
                                   f"rank changes by re-ranking, {s.dataset}"))
        sections.append("<h2 id='diagnostics'>Re-ranking diagnostics</h2><p class='note'>Per direction: queries "
                        "whose ground truth re-ranking moved up / down / left alone; how often the ground truth "
                        "was among the K re-ranked candidates (the ceiling of any re-ranker); and, over those "
                        "queries, how often the generated sample alone ranks a ground truth first among the K, "
                        "against stage 1's order of the same K and against chance. Recomputed here with the "
                        "settings of <code>diffret eval RUN</code> (seed = train.seed).</p>")
        sections.append("\n".join(diag_parts) or "<p class='note'>no re-ranked split to diagnose.</p>")

        sections.append("<h2 id='training'>Training</h2>")
        metrics_file = run / "metrics.jsonl"
        if metrics_file.is_file():
            records = read_metrics(metrics_file)
            png = steps("training curves", lambda: png_bytes(curves_figure(records))) if figures else \
                png_bytes(curves_figure(records))
            sections.append(_img(png, "training curves"))
        else:
            sections.append("<p class='note'>no metrics.jsonl in the run directory.</p>")

        if figures and scored:
            sections.append("<h2 id='figures'>Figures</h2>")
            for caption, png in _figures(view, scored, steps, notes):
                sections.append(f"<figure>{_img(png, caption)}<figcaption>{_e(caption)}</figcaption></figure>")
        if notes:
            sections.append("<h2>Notes</h2><ul>" + "".join(f"<li class='warn'>{_e(n)}</li>" for n in notes)
                            + "</ul>")
        recipe_text = yaml.safe_dump(view.recipe, sort_keys=False)
        sections.insert(3, f"<h2 id='recipe'>Recipe</h2><pre>{_e(recipe_text)}</pre>")
    finally:
        steps.close()
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>diffret report: {_e(run.name)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")


def _figures(view, scored, steps, notes) -> list[tuple[str, bytes]]:
    """(caption, PNG) of each paper figure; one that cannot be drawn becomes a note."""
    from diffret_cli.metrics import t2v_ranks, v2t_ranks
    from diffret_cli.viz.attention import attention_figure
    from diffret_cli.viz.diffusion import diffusion_figure
    from diffret_cli.viz.examples import examples_figure, pick_queries
    from diffret_cli.viz.frames import png_bytes
    from diffret_cli.viz.similarity import similarity_figure

    out: list[tuple[str, bytes]] = []
    src = scored[0]

    def add(caption: str, make) -> None:
        try:
            out.append((caption, steps(caption, lambda: png_bytes(make()))))
        except DiffretError as exc:
            notes.append(f"{caption}: not drawn ({exc.message})")

    cols = [(s.dataset if i == 0 else f"{src.dataset} -> {s.dataset}", s) for i, s in enumerate(scored)]
    add("Figure 4: positive vs negative pair scores, in and out of domain", lambda: similarity_figure(cols))
    if src.t2v is not None:
        q = pick_queries(t2v_ranks(src.stage1, src.caption_video), t2v_ranks(src.t2v, src.caption_video), 1)[0]
    else:
        q = 0
    add(f"Figure 5: denoising of caption {q}'s candidate distribution ({src.dataset})",
        lambda: diffusion_figure(src, query=q, direction="t2v", model=view.model))
    if src.v2t is not None:
        videos = np.unique(src.caption_video)  # the video-to-text queries, as metrics ranks them
        qv = int(videos[pick_queries(v2t_ranks(src.stage1.t(), src.caption_video),
                                     v2t_ranks(src.v2t, src.caption_video), 1)[0]])
        add(f"Figure 5, video to text: denoising of video {qv}'s candidate distribution ({src.dataset})",
            lambda: diffusion_figure(src, query=qv, direction="v2t", model=view.model))
    add(f"Figure B: text-frame attention of caption {q} ({src.dataset})",
        lambda: attention_figure(src, model=view.model, caption=q))
    add(f"Figure C: top-5 videos before and after re-ranking ({src.dataset})",
        lambda: examples_figure(src, model=view.model, count=3))
    for tgt in scored[1:]:
        add(f"Figure C out of domain: top-5 videos before and after re-ranking ({tgt.dataset})",
            lambda t=tgt: examples_figure(t, model=view.model, count=2))
    return out


def write_report(run: str | Path, *, data_root: str | Path | None = None, device: str | None = None,
                 progress: bool = True, figures: bool = True, out: str | Path | None = None) -> Path:
    """Build the report of run directory ``run`` and write it (atomically) to
    ``RUN/report.html`` or ``out``."""
    from diffret_cli.fileio import atomic_write_text
    from diffret_cli.viz.runview import open_run

    view = open_run(run, data_root=data_root, device=device)
    page = build_report(view, progress=progress, figures=figures)
    path = Path(out) if out else Path(run) / REPORT_FILE
    atomic_write_text(path, page)
    return path
