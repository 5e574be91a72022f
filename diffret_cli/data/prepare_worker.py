"""The per-video work of ``diffret data prepare`` and the process pool that runs it.

One work item is one video: locate, decode (or generate), store in the frame cache,
report a small dict. Workers write their frames straight to the cache, atomically; the
parent only collects the dicts. A worker that dies (a decoder crash) costs only the
videos it held: each is retried alone, and one that kills it again is recorded as
``decoder-crash``. Kept apart from :mod:`diffret_cli.data.prepare`, which plans the run
and writes the manifests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from diffret_cli.data.framecache import FrameCache, CachedItem
from diffret_cli.data.types import VideoEntry
from diffret_cli.errors import DecodeError, DiffretError
from diffret_cli.data.plugin import DatasetPlugin

#: bump when the meaning of cached frames changes, so old caches are rebuilt
#: (2: resized by FFmpeg's scaler in the decoder instead of PIL bicubic)
CACHE_VERSION = 2


def fingerprint(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]



# ------------------------------------------------------------------------------ worker
@dataclass
class WorkerState:
    plugin: DatasetPlugin
    source: Path
    frames_root: Path
    fps: float
    short_side: int
    quality: int
    generated: bool
    plugin_fp: str
    owner_pid: int = 0  # the process running ``prepare``; workers exit when it is gone
    owner_start: str = ""  # its start time (from /proc), so a reused pid is not mistaken for it
    # One decoder thread per video: the cores are shared out as worker processes (a
    # thread pool per decoder only adds switching, 10-20% more CPU time per video), and
    # what a damaged stream reports (which packet failed) then does not depend on the
    # number of cores or workers: frame threads surface an error a few packets late.
    decoder_threads: int = 1


_STATE: WorkerState | None = None


def init_worker(state: WorkerState) -> None:
    """Set the worker's state; in a worker process, also tie its life to the owner's."""
    global _STATE
    _STATE = state
    if state.owner_pid and state.owner_pid != os.getpid():
        _die_with_owner(state.owner_pid, state.owner_start)


# ---------------------------------------------------------------- worker lifetime
# A worker must not outlive the ``prepare`` that started it, whatever ended that process
# (Ctrl-C, SIGTERM, kill -9, a crash). With the forkserver start method the workers are
# children of the fork server, not of ``prepare``; each holds the server's "alive" pipe
# and the resource tracker's pipe open, so orphaned workers keep all three alive (1.7 GB
# seen). Two guards, both in the worker: PR_SET_PDEATHSIG (Linux) kills it when its
# parent dies, and a watchdog thread exits it within WATCH_INTERVAL_S of the owner's
# death. Once the workers are gone the fork server and the tracker see EOF and exit.
WATCH_INTERVAL_S = 0.5
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def process_start_time(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot ("" where /proc is absent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def process_alive(pid: int, start: str = "") -> bool:
    """Whether ``pid`` is running and is the process that started at ``start`` (a zombie,
    dead but not yet reaped by its parent, counts as gone)."""
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            return False
        if fields[0] in (b"Z", b"X"):
            return False
        return not start or fields[19].decode() == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no libc symbol: the watchdog alone still works
        pass


def _die_with_owner(pid: int, start: str) -> None:
    _set_parent_death_signal()
    if not process_alive(pid, start):  # the owner died before the guard was set
        os._exit(1)

    def watch() -> None:
        while process_alive(pid, start):
            time.sleep(WATCH_INTERVAL_S)
        os._exit(1)  # no cleanup: cache files are written atomically, nothing is half-done

    threading.Thread(target=watch, name="diffret-owner-watchdog", daemon=True).start()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt, so ``kill PID`` cleans up like
    Ctrl-C (workers stopped, lock released, exit code 130). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _skip(video_id: str, code: str, detail: str = "", path: str = "") -> dict[str, Any]:
    return {"video_id": video_id, "status": "skipped", "reason": code + (f": {detail}" if detail else ""),
            "video_path": path, "duration": None, "num_frames": 0, "cached": False, "written": 0, "repaired": ""}


def _from_cache(video_id: str, item: CachedItem, path: str) -> dict[str, Any]:
    return {"video_id": video_id, "status": item.get("status", "ok"), "reason": item.get("reason", ""),
            "video_path": path, "duration": item.get("duration"), "num_frames": item.num_frames,
            "cached": True, "written": 0, "repaired": ""}


def _intact(cache: FrameCache, video_id: str, item: CachedItem | None) -> tuple[bool, str]:
    """(reusable, problem): a cached file is reused only when its checksum still holds; a
    damaged one (a flipped bit, a truncated copy) is decoded again."""
    if item is None:  # missing (never written), or there but unreadable (truncated, emptied)
        path = cache.path(video_id)
        return False, (f"{path}: unreadable cache file" if path.exists() else "")
    problem = cache.verify(video_id, expected_frames=item.num_frames)
    return problem is None, problem or ""


def _settings_key(st: WorkerState, entry: VideoEntry, source_fp: str) -> dict[str, Any]:
    """What must match for a cached file to be reused."""
    return {"cache_version": CACHE_VERSION, "fps": st.fps, "short_side": st.short_side, "quality": st.quality,
            "start": entry.start, "end": entry.end, "source_fp": source_fp}


def _is_current(item: CachedItem | None, key: dict[str, Any]) -> bool:
    return item is not None and all(item.get(k) == v for k, v in key.items())


def _downscale(frames: np.ndarray, short_side: int) -> np.ndarray:
    """Shrink (never enlarge) so the short side is ``short_side``; bicubic like CLIP's transform."""
    from PIL import Image

    h, w = frames.shape[1:3]
    if min(h, w) <= short_side:
        return frames
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC)) for f in frames])


def process_video(entry: VideoEntry) -> dict[str, Any]:
    """One work item (runs in a worker): frames of ``entry`` into the cache; a small result dict.

    Never raises for a problem with the video itself; that becomes a ``skipped`` result.
    ``cpu_s`` in the result is the CPU time the item took in its worker.
    """
    t0 = time.process_time()
    result = _process_video(entry)
    result["cpu_s"] = time.process_time() - t0
    return result


def _process_video(entry: VideoEntry) -> dict[str, Any]:
    st = _STATE
    assert st is not None, "worker not initialised"
    vid = entry.video_id
    cache = FrameCache(st.frames_root, quality=st.quality, codec="png" if st.generated else "jpeg")
    if st.generated:
        key = _settings_key(st, entry, fingerprint([st.plugin_fp, entry.to_dict()]))
        item = cache.info(vid)
        ok, repaired = _intact(cache, vid, item) if item is None or _is_current(item, key) else (False, "")
        if ok:
            return _from_cache(vid, item, "")
        try:
            frames = st.plugin.generate(entry)
        except DiffretError as exc:
            return _skip(vid, "generate-error", exc.message.replace("\n", " "))
        if frames is None or len(frames) == 0:
            return _skip(vid, "no-frames", "the generator returned no frames")
        frames = _downscale(np.ascontiguousarray(frames, dtype=np.uint8), st.short_side)
        # a generator renders at its own rate (DatasetPlugin.generated_fps), not at --fps
        rate = float(getattr(st.plugin, "generated_fps", st.fps) or st.fps)
        ts = np.arange(len(frames), dtype=np.float64) / rate
        meta = {**key, "status": "ok", "reason": "", "duration": len(frames) / rate, "backend": "generated"}
        cache.write(vid, frames, ts, metadata=meta)
        return {"video_id": vid, "status": "ok", "reason": "", "video_path": "", "duration": meta["duration"],
                "num_frames": len(frames), "cached": False, "written": len(frames), "repaired": repaired}

    try:
        path = st.plugin.locate_video(st.source, entry)
    except (DiffretError, OSError) as exc:
        return _skip(vid, "missing-video", str(exc).replace("\n", " "))
    if path is None or not Path(path).is_file():
        return _skip(vid, "missing-video", f"no video file for {vid!r} under {st.source}")
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return _skip(vid, "empty-file", "0 bytes", str(path))
    from diffret_cli.data.video import SAMPLING_RULE, decode_sampled

    key = {**_settings_key(st, entry, fingerprint([path.name, size])), "sampling_rule": SAMPLING_RULE}
    item = cache.info(vid)
    ok, repaired = _intact(cache, vid, item) if item is None or _is_current(item, key) else (False, "")
    if ok:
        return _from_cache(vid, item, str(path))
    try:
        dec = decode_sampled(path, fps=st.fps, short_side=st.short_side, start=entry.start, end=entry.end,
                             min_frames=1, threads=st.decoder_threads)
    except DecodeError as exc:
        code = getattr(exc, "reason", None) or ("no-video-stream" if "no video stream" in exc.message.lower()
                                                else "decode-error")
        return _skip(vid, code, exc.message.replace("\n", " "), str(path))
    except ValueError as exc:  # start/end from the annotations that make no clip
        code = "bad-clip" if entry.start is not None or entry.end is not None else "decode-error"
        return _skip(vid, code, str(exc), str(path))
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not stop the run
        return _skip(vid, "decode-error", f"{type(exc).__name__}: {exc}".replace("\n", " "), str(path))
    frames = np.asarray(dec.frames)
    if frames.ndim != 4 or len(frames) == 0:
        return _skip(vid, "decode-error", f"decoder returned frames of shape {frames.shape}", str(path))
    duration = _span(dec, entry)
    status = "partial" if dec.partial else "ok"
    reason = ""
    if dec.partial:
        reason = "partial: " + ("; ".join(str(w) for w in dec.warnings) or "decoding stopped early")
    meta = {**key, "status": status, "reason": reason, "duration": duration, "backend": str(dec.backend),
            "warnings": [str(w) for w in dec.warnings]}
    cache.write(vid, frames, dec.timestamps, metadata=meta)
    return {"video_id": vid, "status": status, "reason": reason, "video_path": str(path), "duration": duration,
            "num_frames": len(frames), "cached": False, "written": len(frames), "repaired": repaired}


def _span(dec: Any, entry: VideoEntry) -> float | None:
    """Seconds of video the frames cover: the clip for ``start``/``end`` entries, else the file."""
    total = getattr(getattr(dec, "info", None), "duration", None)
    total = float(total) if total else None
    if entry.start is None and entry.end is None:
        return total
    start = entry.start or 0.0
    end = entry.end if entry.end is not None else total
    if end is None:
        return None
    if total is not None:
        end = min(end, total)
    return max(0.0, end - start)


# ---------------------------------------------------------------------------- running
def _mp_context():
    """forkserver where available: workers fork from a clean server, not from a parent that
    already runs threads (rich's progress refresh, torch's pools)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


#: What every worker imports on its first video (see run_pool).
_WORKER_IMPORTS = ("diffret_cli.data.video", "decord", "PIL.JpegImagePlugin", "PIL.PngImagePlugin",
                   "safetensors.numpy")


def run_pool(entries: list[VideoEntry], state: WorkerState, workers: int,
              on_result: Callable[[dict[str, Any]], None]) -> None:
    """Run ``process_video`` over ``entries`` with at most ``4 * workers`` items in flight.

    Keeping the window small means that when a decoder crashes its process (a segfault
    in a codec), only the few in-flight items are in doubt: each is retried alone, and
    the one that crashes again is recorded as ``decoder-crash``.
    """
    ctx = _mp_context()
    if ctx.get_start_method() == "forkserver":
        # Imported once in the server, not per worker; "__main__" (multiprocessing's
        # default) lets a plugin class defined in a script be unpickled by the workers.
        # The decoders and the JPEG/safetensors writers too: imported in each worker they
        # cost 0.25 s of CPU apiece, per `prepare` run (a missing one is skipped).
        ctx.set_forkserver_preload(list(dict.fromkeys(["__main__", "diffret_cli.data.prepare", *_WORKER_IMPORTS,
                                                       type(state.plugin).__module__])))
    todo = list(reversed(entries))
    doubtful: list[VideoEntry] = []
    first = True
    while todo:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                                   initargs=(state,))
        inflight: dict[Future, VideoEntry] = {}
        if first:  # workers that cannot start at all must not turn every video into a "crash"
            first = False
            try:
                pool.submit(_ping).result()
            except Exception as exc:  # noqa: BLE001 - BrokenProcessPool, PicklingError, ...
                pool.shutdown(wait=False, cancel_futures=True)
                raise WorkersUnavailable(f"{type(exc).__name__}: {exc}") from exc
        try:
            broken = False
            while (todo or inflight) and not broken:
                while todo and len(inflight) < 4 * workers:
                    entry = todo.pop()
                    inflight[pool.submit(process_video, entry)] = entry
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    entry = inflight.pop(fut)
                    try:
                        on_result(fut.result())
                    except BrokenProcessPool:
                        broken = True
                        doubtful.append(entry)
            if broken:
                doubtful.extend(inflight.values())
                inflight.clear()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        for entry in doubtful:  # alone, so a crash names its culprit
            on_result(_run_isolated(entry, state, ctx))
        doubtful.clear()


class WorkersUnavailable(Exception):
    """Worker processes could not start (e.g. a plugin that cannot be pickled, or a
    ``__main__`` that cannot be re-imported, as in ``python - < script``)."""


def _ping() -> bool:
    return _STATE is not None


def _run_isolated(entry: VideoEntry, state: WorkerState, ctx) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=init_worker, initargs=(state,)) as pool:
        try:
            return pool.submit(process_video, entry).result()
        except BrokenProcessPool:
            return _skip(entry.video_id, "decoder-crash", "the decoder process died on this video")


