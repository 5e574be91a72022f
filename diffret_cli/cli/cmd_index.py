"""``diffret index``: build a search index of a video collection, and describe one."""

from __future__ import annotations

import json
from pathlib import Path

import click

_EXAMPLES = """\b
Examples:
  diffret index build --checkpoint runs/quickstart --videos ~/Videos --out ~/videos.index
  diffret index build --checkpoint runs/msrvtt --dataset msrvtt --split test --out msrvtt.index
  diffret index build --checkpoint runs/q --videos clips/ --captions captions.txt --out clips.index
  torchrun --nproc_per_node 4 -m diffret_cli.cli.main index build --checkpoint C --videos DIR --out I
  diffret index info ~/videos.index
"""


@click.group("index", epilog=_EXAMPLES)
def index() -> None:
    """Build a search index of your videos (then `diffret search` / `diffret serve` it)."""


@index.command("build", epilog=_EXAMPLES)
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path, exists=True),
              help="Run directory or checkpoint of a trained DiffusionRet model.")
@click.option("--videos", type=click.Path(path_type=Path), default=None,
              help="A folder of video files (searched recursively; any container decord or PyAV reads).")
@click.option("--dataset", default=None, help="A prepared dataset (`diffret data prepare NAME`) instead.")
@click.option("--split", default="test", show_default=True, help="The dataset split to index.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option("--captions", "captions_file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None, help="A text file, one caption a line, to index for video-to-text search.")
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="The index folder.")
@click.option("--first-stage", type=click.Choice(["auto", "flat", "ivf", "hnsw"]), default="auto", show_default=True,
              help="FAISS first stage; auto: exact (flat) up to 100k items, IVF above.")
@click.option("--nlist", type=click.IntRange(1, None), default=None, help="IVF cells (default ~sqrt(N)).")
@click.option("--nprobe", type=click.IntRange(1, None), default=None, help="IVF cells scanned per query.")
@click.option("--batch-size", type=click.IntRange(1, None), default=16, show_default=True)
@click.option("--chunk-size", type=click.IntRange(1, None), default=256, show_default=True,
              help="Videos per resumable chunk.")
@click.option("--workers", type=click.IntRange(0, None), default=0, show_default=True,
              help="Decoding processes (0: in this process).")
@click.option("--backend", type=click.Choice(["auto", "decord", "pyav"]), default="auto", show_default=True,
              help="Video decoder for --videos.")
@click.option("--device", default="auto", show_default=True)
@click.option("--no-thumbnails", is_flag=True, help="Skip the thumbnail strips `diffret serve` shows.")
@click.option("--json", "as_json", is_flag=True, help="Print the index description as JSON.")
def build(checkpoint: Path, videos: Path | None, dataset: str | None, split: str, data_root: Path | None,
          captions_file: Path | None, out: Path, first_stage: str, nlist: int | None, nprobe: int | None,
          batch_size: int, chunk_size: int, workers: int, backend: str, device: str, no_thumbnails: bool,
          as_json: bool) -> None:
    """Encode every video of a folder (or a prepared dataset's split) once, into OUT.

    Interrupted? Run the same command again: finished chunks are kept. A video that
    cannot be decoded is recorded in OUT/failures.json and skipped.
    """
    from diffret_cli import api
    from diffret_cli.checkpoint import resolve_checkpoint_dir
    from diffret_cli.search.build import BuildSettings, build_index
    from diffret_cli.search.sources import dataset_source, folder_source

    if (videos is None) == (dataset is None):
        raise click.UsageError("give exactly one of --videos DIR or --dataset NAME")
    ckpt = resolve_checkpoint_dir(checkpoint).resolve()
    model = api.load(ckpt)
    mf = model.config["max_frames"]
    if videos is not None:
        source = folder_source(videos, backend=backend, short_side=model.encoder.image_size, max_frames=mf)
    else:
        source = dataset_source(dataset, split=split, data_root=data_root, max_frames=mf)
    extra = []
    if captions_file is not None:
        extra = [ln.strip() for ln in captions_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    settings = BuildSettings(batch_size=batch_size, chunk_size=chunk_size, workers=workers, device=device,
                             first_stage=first_stage, nlist=nlist, nprobe=nprobe, thumbnails=not no_thumbnails,
                             extra_captions=extra)
    meta = build_index(model, source, out, settings=settings, checkpoint=str(ckpt))
    if meta is None:  # not rank 0
        return
    if as_json:
        click.echo(json.dumps(meta, indent=2))
        return
    _describe(out, meta)


def _describe(out: Path, meta: dict) -> None:
    from diffret_cli.search.store import Part

    v, c = meta.get("videos"), meta.get("captions")
    click.echo(f"index: {out}")
    if v:
        part = Part.open(out / "videos")
        size = part.disk_bytes()
        click.echo(f"  videos:   {v['count']:,} (first stage {v['first_stage']['kind']}), "
                   f"{size / 1e6:.1f} MB on disk, {size / v['count'] / 1e3:.1f} kB per video")
    if c:
        click.echo(f"  captions: {c['count']:,} (first stage {c['first_stage']['kind']})")
    if meta.get("failed"):
        click.echo(f"  failed:   {meta['failed']} video(s) could not be decoded; see {out / 'failures.json'}")
    if "build_seconds" in meta:
        click.echo(f"  built in {meta['build_seconds']:.1f} s")


@index.command("info")
@click.argument("index_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def info(index_dir: Path, as_json: bool) -> None:
    """What an index holds: counts, first stage, size on disk, failures."""
    from diffret_cli.search.engine import read_meta

    meta = read_meta(index_dir)
    if as_json:
        click.echo(json.dumps(meta, indent=2))
    else:
        _describe(index_dir, meta)
