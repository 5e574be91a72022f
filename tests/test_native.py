"""The C kernels of :mod:`diffret_cli.native` and their torch fallbacks.

- the fused re-ranking step (plugins/denoisers/query_candidate_step.c) computes what the
  torch step computes, for one step for all rows or a step per row, serial or threaded,
  and a whole re-ranking keeps its ranking;
- builds are cached per source, compiler and CPU; a damaged cache file is rebuilt; no
  compiler, a failing compiler or ``DIFFRET_NATIVE=0`` runs the torch ops, and says so.

Every test that builds uses a private cache folder and a fresh per-process table, so
nothing depends on what an earlier test or run left in ~/.cache.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffret_cli import native
from diffret_cli.registry import create
from diffret_cli.rerank import rerank_direction
from diffret_plugins.denoisers import query_candidate_sampling as qc_sampling

HAS_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
needs_cc = pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine: the torch path is tested elsewhere")


@pytest.fixture
def fresh_native(tmp_path, monkeypatch):
    """A private build cache and no kernel loaded yet in this process."""
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "native"))
    monkeypatch.delenv(native.ENV, raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_why_not", {})
    return tmp_path / "native"


def folded_case(direction: str, *, b: int = 5, k: int = 7, width: int = 24, seed: int = 0):
    torch.manual_seed(seed)
    den = create("denoisers", direction, width=width).eval()
    with torch.no_grad():
        for p in den.parameters():
            p.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(seed + 1)
    n = b * k
    text, video = torch.randn(n, width, generator=g), torch.randn(n, 4, width, generator=g)
    mask = (torch.rand(n, 4, generator=g) > 0.3).long()
    mask[:, 0] = 1
    qi = torch.randperm(n, generator=g)[:b]
    ci = torch.randint(0, n, (b, k), generator=g)
    x = torch.randn(b, k, generator=g)
    with torch.no_grad():
        gallery = den.prepare_gallery(text, video, mask, timesteps=list(range(49, -1, -1)))
        ctx = den.prepare_chunk(gallery, qi, ci)
    return den, ctx, x


def uniform(step: int, b: int) -> torch.Tensor:
    return torch.full((1,), step, dtype=torch.long).expand(b)


@needs_cc
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_fused_step_equals_the_torch_step(direction, threads, fresh_native):
    den, ctx, x = folded_case(direction)
    assert qc_sampling.native_kernel() is not None, native.describe(qc_sampling.KERNEL_NAME)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for t in (uniform(49, 5), uniform(0, 5), torch.tensor([3, 49, 0, 12, 12])):
                fused = den.step(x, t, ctx)
                with native.disabled():
                    ref = den.step(x, t, ctx)
                assert fused.shape == ref.shape == (5, 7)
                assert float((fused - ref).abs().max()) <= 2e-6 * float(ref.abs().max()), t
            assert not torch.equal(den.step(x, uniform(20, 5), ctx), den.step(x, uniform(21, 5), ctx))
    finally:
        torch.set_num_threads(before)
    assert "native C kernel" in native.describe(qc_sampling.KERNEL_NAME)


@needs_cc
@pytest.mark.parametrize("b, k", [(1, 1), (1, 9), (3, 1)])
def test_fused_step_at_the_smallest_shapes(b, k, fresh_native):
    """One query or one candidate, with more threads than queries."""
    den, ctx, x = folded_case("v2t", b=b, k=k)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            fused = den.step(x, uniform(30, b), ctx)
            with native.disabled():
                ref = den.step(x, uniform(30, b), ctx)
    finally:
        torch.set_num_threads(before)
    assert qc_sampling.native_kernel() is not None and fused.shape == (b, k)
    assert float((fused - ref).abs().max()) <= 2e-6 * float(ref.abs().max())


@needs_cc
def test_fused_step_keeps_nan_like_torch(fresh_native):
    den, ctx, x = folded_case("t2v")
    ctx.tensors["dec"][2, 3, 5] = float("nan")
    with torch.no_grad():
        fused = den.step(x, uniform(10, 5), ctx)
        with native.disabled():
            ref = den.step(x, uniform(10, 5), ctx)
    assert torch.equal(fused.isnan(), ref.isnan()) and bool(fused[2, 3].isnan())
    assert not fused[0].isnan().any()


@needs_cc
@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_a_whole_rerank_is_the_same_with_and_without_the_kernel(direction, fresh_native):
    torch.manual_seed(0)
    den = create("denoisers", direction, width=32).eval()
    g = torch.Generator().manual_seed(3)
    text, video = torch.randn(40, 32, generator=g), torch.randn(40, 6, 32, generator=g)
    mask = torch.ones(40, 6, dtype=torch.long)
    scores = torch.rand(40, 40, generator=g)
    sampler = create("samplers", "ddim", num_steps=50)

    def run():
        with torch.no_grad():
            return rerank_direction(scores, direction=direction, denoiser=den, sampler=sampler, text_cls=text,
                                    video_frames=video, video_mask=mask, topk=8, chunk_size=16,
                                    generator=torch.Generator().manual_seed(0))

    fused = run()
    assert qc_sampling.native_kernel() is not None
    with native.disabled():
        ref = run()
    assert float((fused - ref).abs().max()) <= 1e-5
    assert torch.equal(fused.argsort(dim=1, descending=True)[:, :8], ref.argsort(dim=1, descending=True)[:, :8])


def test_float64_and_gradient_steps_take_the_torch_path(fresh_native, monkeypatch):
    """The kernel reads float32 only; a float64 context (the algebra tests) or a step
    under autograd never reaches it."""
    calls = []
    real = qc_sampling._native_step
    monkeypatch.setattr(qc_sampling, "_native_step", lambda *a: calls.append(1) or real(*a))
    den, ctx, x = folded_case("v2t")
    with torch.no_grad():
        den64 = den.double()
        ctx64 = den64.prepare_chunk(den64.prepare_gallery(torch.randn(9, 24, dtype=torch.float64),
                                                          torch.randn(9, 4, 24, dtype=torch.float64),
                                                          torch.ones(9, 4, dtype=torch.long), timesteps=[3, 0]),
                                    torch.arange(2), torch.tensor([[0, 1, 2], [3, 4, 5]]))
        out64 = den64.step(torch.randn(2, 3, dtype=torch.float64), uniform(3, 2), ctx64)
    assert out64.dtype == torch.float64 and torch.isfinite(out64).all()
    if HAS_CC:
        assert calls == [1]  # offered, declined (float64), the torch ops ran
    den, ctx, x = folded_case("t2v")
    with torch.enable_grad():
        out = den.step(x, uniform(4, 5), ctx)
    assert out.requires_grad and (calls == [1] or not HAS_CC)


# ------------------------------------------------------------------ build and cache
def write_script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


SOURCE = "int answer(void) { return 42; }\n"
SIGNATURES = {"answer": (None, [])}


@needs_cc
def test_a_build_is_cached_and_reused_by_the_next_process(fresh_native, tmp_path, monkeypatch):
    import ctypes

    real_cc = next(shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c))
    log = tmp_path / "cc.log"
    monkeypatch.setenv("CC", write_script(tmp_path / "cc", f'echo "$@" >> {log}\nexec {real_cc} "$@"\n'))
    sig = {"answer": (ctypes.c_int, [])}
    kernel = native.load("demo", SOURCE, sig)
    assert kernel is not None and kernel.answer() == 42
    assert kernel.path.parent == fresh_native and kernel.path.is_file()
    compiles = [line for line in log.read_text().splitlines() if "-shared" in line]
    assert len(compiles) >= 1
    assert native.load("demo", SOURCE, sig) is kernel  # once per process
    monkeypatch.setattr(native, "_loaded", {})  # a new process: found in the cache, not built
    again = native.load("demo", SOURCE, sig)
    assert again is not None and again.path == kernel.path and again.answer() == 42
    assert [line for line in log.read_text().splitlines() if "-shared" in line] == compiles
    # another CPU (a cache shared over NFS): another file, never this one's build
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_cpu_identity", lambda: "some other CPU")
    other = native.load("demo", SOURCE, sig)
    assert other is not None and other.path != kernel.path


LOAD_IN_A_NEW_PROCESS = """
import ctypes
from diffret_cli import native
k = native.load("demo", {source!r}, {{"answer": (ctypes.c_int, [])}})
print(k.answer() if k is not None else None)
print(native.describe("demo"))
"""


@needs_cc
def test_a_damaged_cache_file_is_removed_and_rebuilt(fresh_native):
    """A cache file that is not a library (a half-copied cache) is removed and the next
    process builds it again; one that looks like a library but does not load (a noexec
    mount, a missing runtime) is left alone and the torch ops run. (In a new process each
    time: a process never loads one path twice.)"""
    import ctypes

    first = native.load("demo", SOURCE, {"answer": (ctypes.c_int, [])})
    assert first is not None
    code = LOAD_IN_A_NEW_PROCESS.format(source=SOURCE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def new_process() -> list[str]:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    first.path.unlink()  # a new file: the loaded library stays mapped, as after a rebuild
    first.path.write_bytes(b"partial download\0" * 4)
    answer, why = new_process()
    assert answer == "None" and "is damaged" in why and "the next run rebuilds it" in why
    assert not first.path.exists()
    answer, why = new_process()
    assert answer == "42" and why.startswith("native C kernel") and first.path.is_file()

    first.path.unlink()
    first.path.write_bytes(b"\x7fELF" + bytes(1020))  # a library's header, nothing loadable
    answer, why = new_process()
    assert answer == "None" and "could not be loaded" in why and first.path.is_file()


def test_a_failing_compiler_falls_back_to_torch_and_says_why(fresh_native, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", write_script(tmp_path / "badcc", 'echo "badcc: error: no such thing" >&2\nexit 1\n'))
    assert native.load("demo", SOURCE, SIGNATURES) is None
    why = native.describe("demo")
    assert why.startswith("torch ops:") and "could not build" in why and "no such thing" in why
    # nothing half-written left behind: only the C sources the compiler was given
    assert {p.suffix for p in fresh_native.iterdir()} == {".c"}
    # the re-ranking step still runs, on the torch ops
    den, ctx, x = folded_case("t2v")
    with torch.no_grad():
        out = den.step(x, uniform(7, 5), ctx)
    assert qc_sampling.native_kernel() is None and torch.isfinite(out).all()


def test_no_compiler_and_the_switch_off(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert native.load("demo", SOURCE, SIGNATURES) is None
    assert "no C compiler found" in native.describe("demo")
    monkeypatch.setenv(native.ENV, "0")
    monkeypatch.setattr(native, "_loaded", {})
    assert not native.enabled() and native.load("demo", SOURCE, SIGNATURES) is None
    assert native.describe("demo") == "torch ops (DIFFRET_NATIVE=0)"
    assert not fresh_native.exists() or not list(fresh_native.glob("*.so"))
    monkeypatch.delenv(native.ENV)
    with native.disabled():
        assert not native.enabled() and native.describe("demo") == "torch ops (disabled)"
    assert native.enabled()


@needs_cc
@pytest.mark.parametrize("flags", [("-O3", "-fopenmp"), ("-O3",)], ids=["openmp", "serial"])
def test_the_openmp_and_the_serial_build_both_equal_torch(flags, fresh_native, monkeypatch):
    """Whichever build a machine ends up with (OpenMP over queries, or serial where the
    compiler has no OpenMP), two threads give the torch step's numbers."""
    monkeypatch.setattr(native, "_attempts", lambda: (flags,))
    kernel = qc_sampling.native_kernel()
    if kernel is None and "-fopenmp" in flags:
        pytest.skip(f"this compiler builds no OpenMP: {native.describe(qc_sampling.KERNEL_NAME)}")
    assert kernel is not None and kernel.openmp == ("-fopenmp" in flags) and kernel.flags == flags
    den, ctx, x = folded_case("t2v", b=9)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            fused = den.step(x, uniform(12, 9), ctx)
            with native.disabled():
                ref = den.step(x, uniform(12, 9), ctx)
    finally:
        torch.set_num_threads(before)
    assert float((fused - ref).abs().max()) <= 2e-6 * float(ref.abs().max())


@needs_cc
def test_a_compiler_command_with_arguments(fresh_native, monkeypatch):
    """CC as a shell would split it (``ccache gcc``, ``env gcc``)."""
    import ctypes

    real_cc = next(shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c))
    monkeypatch.setenv("CC", f"env {real_cc}")
    kernel = native.load("demo", SOURCE, {"answer": (ctypes.c_int, [])})
    assert kernel is not None and kernel.answer() == 42


def test_openmp_builds_only_where_the_runtime_is_torchs(monkeypatch):
    monkeypatch.setattr(native.sys, "platform", "darwin")
    assert native._attempts() and not any("-fopenmp" in f for f in native._attempts())
    monkeypatch.setattr(native.sys, "platform", "linux")
    assert native._attempts()[0] == ("-O3", "-march=native", "-fopenmp")


def test_a_missing_kernel_source_runs_the_torch_ops(fresh_native, monkeypatch):
    """An install without the .c file (package data left out) still re-ranks."""
    monkeypatch.setattr(qc_sampling, "_KERNEL_SOURCE", fresh_native / "missing.c")
    qc_sampling._kernel_source.cache_clear()
    try:
        assert qc_sampling.native_kernel() is None
        den, ctx, x = folded_case("v2t")
        with torch.no_grad():
            assert torch.isfinite(den.step(x, uniform(3, 5), ctx)).all()
    finally:
        qc_sampling._kernel_source.cache_clear()


@needs_cc
@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="changing a file's owner needs root")
def test_a_library_owned_by_another_user_is_not_loaded(fresh_native, monkeypatch):
    import ctypes

    sig = {"answer": (ctypes.c_int, [])}
    kernel = native.load("demo", SOURCE, sig)
    assert kernel is not None
    os.chown(kernel.path, 12345, 12345)
    monkeypatch.setattr(native, "_loaded", {})
    assert native.load("demo", SOURCE, sig) is None
    assert "belongs to another user" in native.describe("demo") and native.CACHE_ENV in native.describe("demo")
