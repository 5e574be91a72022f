"""The full-size rehearsal: ``diffusionret-msrvtt`` at its real sizes, only the encoder shrunk.

What runs (tests/rehearsal_worker.py): the recipe as shipped (global batch 128, K = 128
candidates so 127 hard negatives, 32 words, 12 frames, 4 temporal layers, 50-step DDIM
re-ranking of the top 32) with a width-32 open_clip encoder, on a dataset with MSRVTT's
sizes written directly (tests/rehearsal_data.py): 9,000 training videos x 20 captions,
the 497-video validation list x 20 captions, 1,000 test videos x 1 caption, 12 tiny
frames a video. ``train.max_steps=3`` for each stage; the stage-2 cache of all 180,000
captions; the final evaluation on the 1,000 test pairs. Once in one process and once
under ``torchrun`` with 2 CPU ranks.

Run it and see its figures::

    .venv/bin/python -m pytest -q -s tests/test_rehearsal.py

What it asserts, and why each bound holds:

- the cache holds 180,000 captions and 9,000 videos in float16, laid out exactly
  (its file size is the layout's), and stage 2 reuses it instead of extracting again;
- the extraction's peak memory (each rank) stays below half the cache's size: the
  features are written batch by batch, so the peak is one batch plus the captions'
  text, while holding the cache even in float16 would need all of it (the code before
  held it in float32 and concatenated a second copy: 4x the cache);
- stage 2 reads the cache memory-mapped, a batch at a time, never whole: the
  file-backed pages it brings in stay under a third of the cache (3 steps read 3 x 128
  rows; the kernel maps up to 64 KB of already cached pages around each read, about
  50 MB here). These are shared, reclaimable page-cache pages: a whole epoch brings the
  cache in once per machine, not once per rank. Stage 2's total peak is printed, not
  bounded: it is the validation's re-ranking of 9,940 captions (evaluation's memory,
  not the cache's);
- both stages log their 3 steps with finite losses; the evaluation scores all 1,000
  queries of each direction in both rows (stage 1 and diffusion).

Not measured here (no GPU in this suite): the real ViT-B/32 in bf16, its step time,
samples/s and peak GPU memory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from launch_helpers import TESTS, run_python, torchrun
from rehearsal_data import MSRVTT_SIZES, write_dataset

pytestmark = pytest.mark.slow

WORKER = str(TESTS / "rehearsal_worker.py")
CAPTIONS = MSRVTT_SIZES["train"][0] * MSRVTT_SIZES["train"][1]  # 180,000
VIDEOS = MSRVTT_SIZES["train"][0]
MB = 1024 * 1024


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("rehearsal-data"), "msrvtt", MSRVTT_SIZES, num_frames=12,
                         frame_size=32)


def cache_bytes() -> int:
    """The float16 cache's tensors' bytes from its layout (width 32, 32 words, 12 frames)."""
    import torch

    from diffret_cli.training.feature_cache import build_header, tensor_shapes

    shapes = tensor_shapes(CAPTIONS, VIDEOS, words=32, frames=12, width=32, dtype=torch.float16)
    header, _, size = build_header(shapes, {})
    return size - len(header)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _print_report(mode: str, reports: list[dict]) -> None:
    print(f"\nrehearsal, {mode}:")
    for rep in reports:
        who = f"rank {rep['rank']}" if rep["world_size"] > 1 else "process"
        for phase, p in rep["phases"].items():
            print(f"  {who:8s} {phase:7s} {p['seconds']:7.1f} s wall {p['cpu_seconds']:7.1f} s cpu   "
                  f"peak {p['peak_mb']:7.1f} MB  (+{p['peak_over_start_mb']:.1f} MB over its start, "
                  f"file-backed +{p['file_backed_peak_over_start_mb']:.1f} MB)")


def _check_run(run_dir: Path, reports: list[dict], *, world_size: int) -> None:
    from diffret_cli.training.feature_cache import CachedFeatures

    from diffret_cli.training.feature_cache import read_header

    size = cache_bytes()
    path = run_dir / "features" / "train.safetensors"
    assert path.stat().st_size - read_header(path)[1] == size  # exactly the layout's bytes: float16
    cache = CachedFeatures(path)
    assert len(cache) == CAPTIONS and tuple(cache.video.frames.shape) == (VIDEOS, 12, 32)
    assert str(cache.text.tokens.dtype) == "torch.float16" and cache.metadata["captions"] == str(CAPTIONS)
    assert cache.caption_video[::20].tolist() == list(range(VIDEOS))  # 20 captions a video, in order

    recs = _records(run_dir)
    events = [r for r in recs if r.get("event") == "feature_cache"]
    assert [e["built"] for e in events] == [True, False]  # extracted once, reused by stage 2
    assert events[0]["world_size"] == world_size and events[0]["rank0"]["captions"] == CAPTIONS // world_size
    for stage in (1, 2):
        steps = [r for r in recs if r.get("stage") == stage and "loss" in r]
        assert [r["step"] for r in steps] == [1, 2, 3]
        assert all(math.isfinite(r["loss"]) for r in steps)
    assert all("masked_candidates" in r for r in recs if r.get("stage") == 2 and "loss" in r)

    half = size / 2 / MB
    for rep in reports:
        cache_phase = rep["phases"]["cache"]
        assert cache_phase["captions"] == CAPTIONS
        assert cache_phase["peak_over_start_mb"] < half, (cache_phase, half)
        stage2 = rep["phases"]["stage2"]
        assert stage2["file_backed_peak_over_start_mb"] < size / 3 / MB, (stage2, size / MB)
    ev = reports[0]["phases"]["eval"]
    assert ev["num_captions"] == ev["num_videos"] == MSRVTT_SIZES["test"][0]
    for row in ("stage1", "diffusion"):
        for direction in ("t2v", "v2t"):
            assert ev["rows"][row][direction]["queries"] == 1000, (row, direction)


def test_rehearsal_single_process(data_root, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    run_python([WORKER, str(data_root), str(run_dir), str(out)], cwd=tmp_path, timeout=900)
    reports = [json.loads((out / "single.json").read_text())]
    _print_report("one process", reports)
    _check_run(run_dir, reports, world_size=1)


def test_rehearsal_two_ranks(data_root, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    common = [WORKER, str(data_root), str(run_dir), str(out)]
    torchrun([*common, "--phases", "stage1"], cwd=tmp_path, timeout=900)
    torchrun([*common, "--phases", "cache,stage2,eval"], cwd=tmp_path, timeout=900)
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    _print_report("torchrun, 2 CPU ranks", reports)
    assert "eval" not in reports[1]["phases"]  # rank 0 evaluates
    _check_run(run_dir, reports, world_size=2)
