"""Throughput of ``diffret data prepare`` against the field's usual preprocessing.

The usual first step (CLIP4Clip's ``compress_video.py``, reused by DiffusionRet and most
later work) runs one ``ffmpeg`` process per video that re-encodes it at 3 fps with the
short side scaled to 224 and audio dropped. The result is still a video: every training
epoch decodes it again. ``diffret data prepare`` decodes once, samples frames by
timestamp, resizes, and stores JPEG frames that training reads directly.

This script generates videos with PyAV (H.264, 10 s, mostly 320x240 and some 640x360;
nothing is downloaded), then times on the same videos, with the same number of
parallel workers, in this process:

  ffmpeg 3 fps   ``ffmpeg -y -i in -r 3 -vf scale=<CLIP4Clip's expression> -an out.mp4``
                 one subprocess per video, ``--workers`` at a time (the baseline)
  diffret 3 fps  ``prepare(..., fps=3, short_side=224)``: as many output frames as the
                 baseline, so frames/s compares like with like
  diffret 1 fps  ``prepare(..., fps=1)``: DiffusionRet's sampling, the default

and prints, per method, frames, the median seconds over ``--rounds`` rounds, frames/s,
videos/s, the frames/s ratio to the baseline, and CPU milliseconds per output frame
(ffmpeg: its processes' user + system time; diffret: its workers' CPU time plus this
process's). Each round runs the three methods in a rotated order, so that a change in
the machine's load between rows does not favour one of them; the load average is
printed with the table. On a shared machine the CPU column is the steadier comparison;
the frames/s ratio is the one the issue states. Without ``ffmpeg`` on PATH it says so
and prints only diffret's rows (exit status 0). ``apt-get install -y ffmpeg`` provides
it on Debian/Ubuntu.

    python bench/bench_prepare.py
    python bench/bench_prepare.py --videos 48 --workers 4 --rounds 5 --keep /tmp/bench_videos --json out.json

Measured with ``--workers 2`` on the idle 2-core machine, six runs: 3 fps 4.0-4.7x the
baseline's frames/s and 4.2-4.6x less CPU per frame; 1 fps 1.77-2.07x its frames/s,
1.9-2.2x less CPU per frame and 5.7-6.6x its videos/s (a third of the frames for the
same decoding: the reference frames between two picks must be decoded either way).
With ``--videos 48`` (the per-run fixed cost spread over more videos), three runs: 3 fps
4.6-4.8x, 1 fps 1.95-2.06x.
Before one scaler per pass (a new swscale context per frame), on 2 cores shared with
other jobs: 3 fps 4.8-5.5x, 1 fps 1.7-2.1x; before the in-decoder scaling and
non-reference skipping, in the same conditions: 3 fps 2.4-2.6x, 1 fps 1.3-1.7x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np

from diffret_cli.data.types import SplitAnnotations, VideoEntry
from diffret_cli.data.plugin import DatasetPlugin

# CLIP4Clip's scale: short side 224, the other side even and aspect-preserving for
# landscape input (its portrait branch is the one that squashes; our videos are landscape).
FFMPEG_SCALE = "scale='if(gt(a,1),trunc(oh*a/2)*2,224)':'if(gt(a,1),224,trunc(ow*a/2)*2)'"


class BenchVideos(DatasetPlugin):
    """Every ``*.mp4`` of the source folder, one test split, one caption each."""

    name: ClassVar[str] = "bench-videos"
    splits: ClassVar[tuple[str, ...]] = ("test",)
    protocol: ClassVar[str] = "single"

    def config(self) -> dict:
        return {}

    def annotation_files(self, split: str) -> list[str]:
        return ["list.json"]

    def load_split(self, source: Path, split: str) -> SplitAnnotations:
        ids = json.loads((Path(source) / "list.json").read_text())
        return SplitAnnotations(self.name, split, self.protocol, [VideoEntry(i, (f"video {i}",)) for i in ids])

    def locate_video(self, source: Path, entry: VideoEntry) -> Path | None:
        p = Path(source) / f"{entry.video_id}.mp4"
        return p if p.is_file() else None


def make_videos(folder: Path, *, count: int, seconds: float, fps: int = 30) -> list[Path]:
    """``count`` H.264 MP4s of moving gradients: two thirds 320x240, one third 640x360."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        w, h = (640, 360) if n % 3 == 2 else (320, 240)
        path = folder / f"video{n:03d}.mp4"
        paths.append(path)
        if path.is_file():
            continue
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"preset": "veryfast"}
            for i in range(int(seconds * fps)):
                phase = (i + 7 * n) / fps
                img = np.stack([128 + 100 * np.sin(x / 23 + phase), 128 + 100 * np.cos(y / 17 - phase),
                                128 + 100 * np.sin((x + y) / 31 + 2 * phase)], axis=-1).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    (folder / "list.json").write_text(json.dumps([p.stem for p in paths]))
    return paths


def count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_ffmpeg(videos: list[Path], out: Path, *, workers: int) -> tuple[float, int, float]:
    """The baseline: one ffmpeg re-encode per video, ``workers`` at a time.
    (seconds, frames, CPU seconds of the ffmpeg processes)"""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> Path:
        dst = out / path.name
        subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(path), "-r", "3", "-vf", FFMPEG_SCALE,
                        "-an", str(dst)], check=True, stdout=subprocess.DEVNULL)
        return dst

    cpu0, t0 = _children_cpu(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outputs = list(pool.map(one, videos))
    seconds, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    return seconds, sum(count_frames(p) for p in outputs), cpu


def run_diffret(source: Path, root: Path, *, fps: float, workers: int) -> tuple[float, int, float]:
    """``prepare`` into a fresh ``root``: (seconds, frames, CPU seconds of workers + this process)."""
    from diffret_cli.data.prepare import prepare

    shutil.rmtree(root, ignore_errors=True)
    cpu0, t0 = time.process_time(), time.perf_counter()
    report = prepare(BenchVideos.name, data_root=root, source=source, fps=fps, short_side=224,
                     workers=workers, progress=False)
    seconds = time.perf_counter() - t0
    bad = report.skipped
    if bad:
        raise SystemExit(f"prepare skipped videos in the benchmark: {bad}")
    own = time.process_time() - cpu0
    # in-process runs (workers=1) count the per-video work in both terms
    cpu = own + report.cpu_seconds if workers > 1 and report.videos > 1 else own
    return seconds, report.frames_written, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--rounds", type=int, default=3, help="Each method runs this many times; medians are shown.")
    ap.add_argument("--keep", type=Path, default=None, help="Generate (and reuse) the videos here.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from diffret_cli.registry import registry

    console = Console(width=max(Console().width, 116))
    registry().register("datasets", BenchVideos.name, BenchVideos)
    tmp = Path(tempfile.mkdtemp(prefix="diffret-bench-"))
    try:
        src = args.keep or tmp / "videos"
        console.print(f"generating {args.videos} videos of {args.seconds:g} s in {src} ...")
        videos = make_videos(src, count=args.videos, seconds=args.seconds)
        ffmpeg = shutil.which("ffmpeg")
        methods = {}  # name -> () -> (seconds, frames, cpu)
        if ffmpeg:
            run_ffmpeg(videos[:1], tmp / "warm", workers=1)  # page cache and binary warm
            methods["ffmpeg 3 fps (CLIP4Clip)"] = lambda: run_ffmpeg(videos, tmp / "ffmpeg", workers=args.workers)
        else:
            console.print("[yellow]ffmpeg not found on PATH: the baseline is skipped[/yellow] "
                          "(install it, e.g. `apt-get install -y ffmpeg`, to compare)")
        for fps in (3.0, 1.0):
            methods[f"diffret {fps:g} fps"] = (lambda fps=fps: run_diffret(src, tmp / f"root{fps:g}", fps=fps,
                                                                           workers=args.workers))
        # Warm-up: starts the worker server (imports numpy/PyAV/torch once per process), a
        # fixed cost of a few seconds per `prepare` run, not a per-video one.
        warm = tmp / "warm-src"
        warm.mkdir()
        for v in videos[:2]:  # two: one video would run in-process, without the pool
            os.symlink(v, warm / v.name)
        (warm / "list.json").write_text(json.dumps([v.stem for v in videos[:2]]))
        run_diffret(warm, tmp / "warm-root", fps=1.0, workers=args.workers)

        load_before = os.getloadavg()
        runs: dict[str, list[tuple[float, int, float]]] = {m: [] for m in methods}
        names = list(methods)
        for r in range(max(1, args.rounds)):
            for m in names[r % len(names):] + names[:r % len(names)]:  # rotated order
                runs[m].append(methods[m]())
        load_after = os.getloadavg()

        rows = []
        for m, rs in runs.items():
            frames = rs[0][1]
            seconds = statistics.median(x[0] for x in rs)
            cpu = statistics.median(x[2] for x in rs)
            rows.append({"method": m, "videos": len(videos), "frames": frames, "seconds": seconds,
                         "seconds_all": [round(x[0], 3) for x in rs], "frames_per_s": frames / seconds,
                         "videos_per_s": len(videos) / seconds, "cpu_ms_per_frame": 1000 * cpu / frames})
        base = rows[0] if ffmpeg else None
        for row in rows:
            row["ratio"] = row["frames_per_s"] / base["frames_per_s"] if base else None
            row["cpu_ratio"] = base["cpu_ms_per_frame"] / row["cpu_ms_per_frame"] if base else None

        table = Table(title=f"prepare throughput: {args.videos} videos x {args.seconds:g} s, {args.workers} "
                            f"worker(s), short side 224, median of {max(1, args.rounds)} round(s)")
        for col in ("method", "videos", "frames", "seconds", "frames/s", "videos/s", "ratio", "CPU ms/frame",
                    "CPU ratio"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for row in rows:
            table.add_row(row["method"], str(row["videos"]), str(row["frames"]), f"{row['seconds']:.2f}",
                          f"{row['frames_per_s']:.1f}", f"{row['videos_per_s']:.2f}",
                          f"{row['ratio']:.2f}x" if base else "-", f"{row['cpu_ms_per_frame']:.1f}",
                          f"{row['cpu_ratio']:.2f}x" if base else "-")
        console.print(table)
        load = (f"load average (1/5/15 min) {' '.join(f'{x:.1f}' for x in load_before)} before, "
                f"{' '.join(f'{x:.1f}' for x in load_after)} after, on {os.cpu_count()} CPU(s)")
        console.print(load)
        console.print("ratio: frames/s relative to the ffmpeg baseline; CPU ratio: the baseline's CPU time per "
                      "frame over this row's. The baseline's output is still video that training decodes again "
                      "every epoch; diffret's is the frames themselves.")
        if args.json:
            args.json.write_text(json.dumps({"videos": args.videos, "seconds": args.seconds,
                                             "workers": args.workers, "rounds": max(1, args.rounds),
                                             "cpus": os.cpu_count(), "load_before": load_before,
                                             "load_after": load_after, "rows": rows}, indent=2) + "\n")
    finally:
        registry().unregister("datasets", BenchVideos.name)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
