"""``diffret search``: query a search index with text (or a video file)."""

from __future__ import annotations

import json
from pathlib import Path

import click

_EXAMPLES = """\b
Examples:
  diffret search ~/videos.index "a man is playing guitar"
  diffret search ~/videos.index "a red circle moves left" --top 5 --json
  diffret search msrvtt.index --video clip.mp4          # video -> captions
"""


@click.command("search", epilog=_EXAMPLES)
@click.argument("index_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("query", required=False)
@click.option("--video", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Video-to-text: the captions of the index that describe this file.")
@click.option("--top", type=click.IntRange(1, None), default=10, show_default=True)
@click.option("--shortlist", type=click.IntRange(1, None), default=None,
              help="Items the first stage hands to the token-wise similarity (default 1000).")
@click.option("--rerank", type=click.IntRange(0, None), default=None,
              help="Top K re-ranked by diffusion (default: the model's; 0: off).")
@click.option("--steps", type=click.IntRange(1, None), default=None, help="DDIM steps (default: the model's).")
@click.option("--nprobe", type=click.IntRange(1, None), default=None, help="IVF cells scanned (IVF indexes).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the diffusion noise.")
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True), default=None,
              help="The model (default: the checkpoint the index was built with).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def search(index_dir: Path, query: str | None, video: Path | None, top: int, shortlist: int | None,
           rerank: int | None, steps: int | None, nprobe: int | None, seed: int, checkpoint: Path | None,
           device: str, as_json: bool) -> None:
    """Search INDEX_DIR for QUERY: ids, paths and scores, best first."""
    from diffret_cli.search import SearchIndex

    if (query is None) == (video is None):
        raise click.UsageError("give a QUERY or --video FILE (not both)")
    index = SearchIndex.open(index_dir, checkpoint=checkpoint, device=device)
    kw = dict(top=top, shortlist=shortlist, rerank=rerank, steps=steps, seed=seed, nprobe=nprobe)
    res = index.search_video(video, **kw) if video is not None else index.search(query, **kw)[0]
    if as_json:
        click.echo(json.dumps(res, indent=2, ensure_ascii=False))
        return
    _print(res)


def _print(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t2v = res["direction"] == "t2v"
    table = Table(title=f"{res['query']}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("stage 1", justify="right")
    if t2v:
        table.add_column("id", overflow="fold")
        table.add_column("path", overflow="fold")
    else:
        table.add_column("caption", overflow="fold")
        table.add_column("video", overflow="fold")
    for h in res["results"]:
        a, b = (h["id"], h.get("path") or "-") if t2v else (h["caption"], str(h.get("video_id") or "-"))
        table.add_row(str(h["rank"]), f"{h['score']:.4f}", f"{h['stage1']:.4f}", a, b)
    Console().print(table)
    t, s = res["timing_ms"], res["settings"]
    Console(stderr=True).print(f"{t['total']:.0f} ms ({', '.join(f'{k} {v:.0f}' for k, v in t.items() if k != 'total')}); "
                               f"first stage {s['first_stage']}, shortlist {s['shortlist']}, re-ranked top {s['rerank']}",
                               style="dim")
