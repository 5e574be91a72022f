"""``diffret viz``: the paper's figures for a run, as PNG files."""

from __future__ import annotations

from pathlib import Path

import click

EXAMPLES = """\b
Examples:
  diffret viz diffusion runs/quickstart --dataset synthetic --query 12
  diffret viz attention runs/quickstart --query 12
  diffret viz similarity runs/quickstart --out-domain synthetic-shift
  diffret viz examples runs/quickstart --query 3 --query 40
"""


def _common(f):
    f = click.option("--device", default=None, help="cpu, cuda[:N] or auto (default: the recipe's train.device).")(f)
    f = click.option("--out", type=click.Path(path_type=Path), default=None,
                     help="Folder for the PNG files (default: RUN/figures).")(f)
    f = click.option("--data-root", type=click.Path(path_type=Path), default=None,
                     help="Prepared datasets root (default: $DIFFRET_DATA_ROOT, else the user cache).")(f)
    f = click.option("--split", default="test", show_default=True)(f)
    f = click.option("--dataset", default=None, help="Prepared dataset (default: the run's).")(f)
    f = click.argument("run", type=click.Path(path_type=Path, exists=True, file_okay=False))(f)
    return f


def _open(run: Path, data_root, device):
    from diffret_cli.viz.runview import open_run

    return open_run(run, data_root=data_root, device=device)


def _save(fig, out: Path | None, run: Path, name: str) -> None:
    from diffret_cli.viz.frames import save_png

    path = save_png(fig, (out or run / "figures") / name)
    click.echo(str(path))


@click.group("viz", epilog=EXAMPLES)
def viz() -> None:
    """Draw the paper's figures for a run (PNG files; their paths are printed)."""


@viz.command("diffusion", epilog=EXAMPLES)
@_common
@click.option("--query", type=int, default=None,
              help="Caption index (t2v) or video index (v2t); default: the query re-ranking lifted most.")
@click.option("--direction", type=click.Choice(["t2v", "v2t"]), default="t2v", show_default=True)
@click.option("--snapshots", type=int, default=4, show_default=True, help="Step snapshots drawn as bars.")
def diffusion(run, dataset, split, data_root, out, device, query, direction, snapshots) -> None:
    """One query's candidate distribution denoised from x_T to x_0 (paper Figure 5)."""
    import numpy as np

    from diffret_cli.metrics import t2v_ranks, v2t_ranks
    from diffret_cli.viz.diffusion import diffusion_figure
    from diffret_cli.viz.examples import pick_queries

    view = _open(run, data_root, device)
    s = view.scores(dataset, split, keep_chains=True)
    if query is None:
        if direction == "t2v":
            query = pick_queries(t2v_ranks(s.stage1, s.caption_video), t2v_ranks(s.t2v, s.caption_video), 1)[0]
        else:  # video-to-text queries are the videos with a caption, as the metrics rank them
            videos = np.unique(s.caption_video)
            query = int(videos[pick_queries(v2t_ranks(s.stage1.t(), s.caption_video),
                                            v2t_ranks(s.v2t, s.caption_video), 1)[0]])
    fig = diffusion_figure(s, query=query, direction=direction, snapshots=snapshots, model=view.model)
    _save(fig, out, run, f"diffusion-{s.dataset}-{split}-{direction}-{query}.png")


@viz.command("attention", epilog=EXAMPLES)
@_common
@click.option("--query", type=int, default=0, show_default=True, help="Caption index.")
@click.option("--video", type=int, default=None,
              help="Video index (default: the caption's own video and stage 1's best other one).")
def attention(run, dataset, split, data_root, out, device, query, video) -> None:
    """A caption's text-frame attention over a video's frames (paper Figure B)."""
    from diffret_cli.viz.attention import attention_figure

    view = _open(run, data_root, device)
    s = view.scores(dataset, split, rerank_scores=False)
    fig = attention_figure(s, model=view.model, caption=query, video=video)
    _save(fig, out, run, f"attention-{s.dataset}-{split}-{query}.png")


@viz.command("similarity", epilog=EXAMPLES)
@_common
@click.option("--out-domain", "out_domain", multiple=True, metavar="NAME",
              help="Out-of-domain dataset(s) (test split) drawn beside the in-domain one "
                   "(default: the recipe's eval.out_domain).")
def similarity(run, dataset, split, data_root, out, device, out_domain) -> None:
    """Positive- vs negative-pair score distributions, in and out of domain, stage 1 and
    re-ranked (paper Figure 4)."""
    from diffret_cli.viz.similarity import similarity_figure

    view = _open(run, data_root, device)
    targets = [(dataset or view.dataset_name, split)]
    targets += [(d, "test") for d in out_domain] if out_domain else view.out_domain()
    src = targets[0][0]
    splits = [(name if i == 0 else f"{src} -> {name}", view.scores(name, sp)) for i, (name, sp) in enumerate(targets)]
    fig = similarity_figure(splits)
    _save(fig, out, run, f"similarity-{src}-{split}.png")


@viz.command("examples", epilog=EXAMPLES)
@_common
@click.option("--query", "queries", type=int, multiple=True,
              help="Caption index (repeatable; default: --count queries re-ranking moved most).")
@click.option("--count", type=int, default=3, show_default=True)
@click.option("--top", type=int, default=5, show_default=True, help="Videos shown per query.")
def examples(run, dataset, split, data_root, out, device, queries, count, top) -> None:
    """Queries with their top videos as thumbnail strips, before and after re-ranking
    (paper Figure C)."""
    from diffret_cli.viz.examples import examples_figure

    view = _open(run, data_root, device)
    s = view.scores(dataset, split)
    fig = examples_figure(s, model=view.model, queries=list(queries) or None, count=count, top=top)
    _save(fig, out, run, f"examples-{s.dataset}-{split}.png")
