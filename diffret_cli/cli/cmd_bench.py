"""``diffret bench``: how fast evaluation, stage-2 training and encoding run here.

A thin layer over :mod:`diffret_cli.bench`: each subcommand parses its options, calls
the library and prints a table, or the library's dict as JSON with ``--json``. Figures
come from random features of the official shapes and random weights (no dataset, no
download); they measure this machine, not a model's accuracy.
"""

from __future__ import annotations

import json

import click

_EXAMPLES = """\b
Examples:
  diffret bench eval --gallery 1000 --topk 32 --steps 50
  diffret bench eval --gallery 1000 --no-diffusion --json
  diffret bench train-stage2 --batch 128
  diffret bench encode --batch 64 --device cuda
"""

_DEVICE = click.option("--device", default="cpu", show_default=True,
                       help="cpu, or cuda (cuda:N) for a GPU.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
_THREADS = click.option("--threads", type=click.IntRange(1, None), default=None,
                        help="CPU threads for torch (default: torch's choice).")


@click.group("bench", epilog=_EXAMPLES)
def bench() -> None:
    """Measure diffret's speed on this machine.

    Each subcommand reports seconds per phase (wall; CPU time beside it), the total and
    the peak memory (CUDA allocator peak on a GPU, resident set size on CPU).
    """


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _emit(result: dict, as_json: bool, headline: list[tuple[str, str]]) -> None:
    if as_json:
        click.echo(json.dumps(result, sort_keys=False))
        return
    for label, value in headline:
        click.echo(f"{label:<22}{value}")
    phases, cpu = result.get("phases", {}), result.get("cpu_phases", {})
    if phases:
        click.echo(f"{'phase':<22}{'wall s':>10}{'cpu s':>10}")
        for name, seconds in phases.items():
            click.echo(f"{name:<22}{seconds:>10.3f}{cpu.get(name, float('nan')):>10.3f}")
        click.echo(f"{'total':<22}{result['total']:>10.3f}{result.get('cpu_total', float('nan')):>10.3f}")
    click.echo(f"{'peak memory':<22}{result['peak_memory_mb']:.0f} MB ({result['memory_kind']})")
    env = result["environment"]
    click.echo(f"torch {env['torch']}, {env['device']}{' ' + env['gpu'] if 'gpu' in env else ''}, "
               f"{env['threads']} threads")


@bench.command("eval", epilog=_EXAMPLES)
@click.option("--gallery", type=click.IntRange(1, None), default=1000, show_default=True,
              help="Texts = videos in the gallery.")
@click.option("--topk", type=click.IntRange(1, None), default=32, show_default=True,
              help="Candidates re-ranked per query.")
@click.option("--steps", type=click.IntRange(1, None), default=50, show_default=True, help="DDIM steps.")
@click.option("--diffusion/--no-diffusion", default=True, show_default=True,
              help="Re-rank with the denoisers, or stop after the stage-1 similarity.")
@click.option("--chunk-size", type=click.IntRange(1, None), default=64, show_default=True,
              help="Queries sampled together.")
@_DEVICE
@_THREADS
@_JSON
def eval_cmd(gallery: int, topk: int, steps: int, diffusion: bool, chunk_size: int, device: str,
             threads: int | None, as_json: bool) -> None:
    """Evaluation from cached features: similarity, then both re-ranking directions.

    Official shapes (32 word slots with 8-20 used, 12 frames, width 512), random values.
    On CPU the re-ranking step runs as a C kernel built on first use; DIFFRET_NATIVE=0
    runs torch ops instead (the line "re-ranking step" says which ran).
    """
    from diffret_cli.bench import bench_eval

    _set_threads(threads)
    res = bench_eval(gallery=gallery, topk=topk, steps=steps, device=device, diffusion=diffusion,
                     chunk_size=chunk_size)
    _emit(res, as_json, [("gallery", f"{gallery} texts x {gallery} videos"),
                         ("re-ranking", f"top {res['topk']}, {res['steps']} DDIM steps" if diffusion else "off"),
                         ("re-ranking step", res["rerank_step"])])


@bench.command("train-stage2", epilog=_EXAMPLES)
@click.option("--batch", type=click.IntRange(2, None), default=128, show_default=True,
              help="Global batch B; every query gets K = B candidates.")
@click.option("--steps", type=click.IntRange(1, None), default=3, show_default=True,
              help="Timed optimiser steps (after one warm-up step).")
@click.option("--gathered", is_flag=True,
              help="Gather [B,K,T,D] candidate features (diffret's earlier path) instead of indexing.")
@_DEVICE
@_THREADS
@_JSON
def train_stage2(batch: int, steps: int, gathered: bool, device: str, threads: int | None, as_json: bool) -> None:
    """Samples/s of the stage-2 step from cached features (the encoder is frozen).

    Per step: similarity over the batch, hard negatives, both denoisers' losses,
    backward, gradient clipping, AdamW. Phases are seconds per step.
    """
    from diffret_cli.bench import bench_train_stage2

    _set_threads(threads)
    res = bench_train_stage2(batch=batch, device=device, steps=steps, indexed=not gathered)
    _emit(res, as_json, [("batch", f"{batch} pairs, K = {batch} candidates"),
                         ("path", "gathered" if gathered else "indexed"),
                         ("samples/s", f"{res['samples_per_s']:.1f}")])


@bench.command("encode", epilog=_EXAMPLES)
@click.option("--batch", type=click.IntRange(1, None), default=64, show_default=True, help="Frames per call.")
@click.option("--model", default=None,
              help="An open_clip model name (random weights), or 'small'. Default: ViT-B-32-quickgelu "
              "on a GPU, a small 4-layer ViT on CPU.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Autocast precision (default: fp32 on CPU, bf16 on a GPU).")
@click.option("--steps", type=click.IntRange(1, None), default=3, show_default=True, help="Timed calls.")
@_DEVICE
@_THREADS
@_JSON
def encode(batch: int, model: str | None, precision: str | None, steps: int, device: str, threads: int | None,
           as_json: bool) -> None:
    """Frames/s through the encoder's image tower (TFLOP/s from counted FLOPs)."""
    from diffret_cli.bench import bench_encode

    _set_threads(threads)
    res = bench_encode(batch=batch, device=device, model=model, steps=steps, precision=precision)
    _emit(res, as_json, [("model", f"{res['model']} ({res['parameters_m']} M parameters, {res['image_size']} px)"),
                         ("precision", res["precision"]), ("frames/s", f"{res['frames_per_s']:.1f}"),
                         ("TFLOP/s", f"{res['tflops']:.3f} ({res['gflops_per_frame']} GFLOP/frame)")])


@bench.command("search", epilog="\b\nExamples:\n  diffret bench search --gallery 100000 --checkpoint runs/quickstart\n"
               "  diffret bench search --gallery 1000000 --workdir /data/b1m --reuse --json")
@click.option("--gallery", type=click.IntRange(1, None), default=100_000, show_default=True,
              help="Videos in the index (synthetic features shaped like a trained model's).")
@click.option("--checkpoint", default=None,
              help="A model trained on `synthetic` (default: the newest such run under ./runs).")
@click.option("--workdir", default=None, help="Keep the index here (default: a temp folder, deleted).")
@click.option("--reuse", is_flag=True, help="Measure the index already in --workdir.")
@click.option("--queries", type=click.IntRange(1, None), default=200, show_default=True)
@click.option("--recall-queries", type=click.IntRange(1, None), default=100, show_default=True)
@click.option("--shortlist", type=click.IntRange(1, None), default=None, help="First-stage shortlist (default 1000).")
@click.option("--first-stage", type=click.Choice(["auto", "flat", "ivf", "hnsw"]), default="auto", show_default=True)
@click.option("--nprobe", type=click.IntRange(1, None), default=None)
@_DEVICE
@click.option("--threads", type=click.IntRange(1, None), default=2, show_default=True)
@_JSON
def search(gallery: int, checkpoint: str | None, workdir: str | None, reuse: bool, queries: int, recall_queries: int,
           shortlist: int | None, first_stage: str, nprobe: int | None, device: str, threads: int,
           as_json: bool) -> None:
    """Search at scale: build time, p50/p95 query latency end to end, recall of the
    exhaustive top 10, bytes per video on disk and in memory."""
    from diffret_cli.search.bench import bench_search, summary_lines

    res = bench_search(gallery=gallery, device=device, checkpoint=checkpoint, workdir=workdir, reuse=reuse,
                       queries=queries, recall_queries=recall_queries, shortlist=shortlist, first_stage=first_stage,
                       nprobe=nprobe, threads=threads, log=lambda s: click.echo(s, err=True))
    click.echo(json.dumps(res) if as_json else "\n".join(summary_lines(res)))
