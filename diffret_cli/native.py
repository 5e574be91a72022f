"""Small C kernels, compiled on first use with the machine's C compiler and loaded with ctypes.

Why: a few inner loops are chains of elementwise torch ops over the same large tensors
(the re-ranking step reads two [B,K,2D] blocks and writes a third, 50 times per chunk);
each op is a separate pass through memory. One C loop reads the data once. Nothing here
is required: without a compiler, on a compiler error, or with ``DIFFRET_NATIVE=0``,
:func:`load` returns None and the caller runs its torch ops (the same arithmetic, equal
within float32 rounding). :func:`describe` says which one a process runs, and why.

Builds are cached under ``<cache dir>/native`` (``$XDG_CACHE_HOME/diffret/native`` or
``~/.cache/diffret/native`` on Linux; ``DIFFRET_NATIVE_CACHE`` to choose another folder).
A library's file name hashes its source, the compiler and its version, the flags and the
CPU (model and feature flags), so a cache shared between machines (an NFS home) never
gives one machine a library built for another's instruction set. A build writes a temporary file and renames it: ranks that
start together may each build, none loads a half-written file. ``CC`` picks the compiler
(default ``cc``, then ``gcc``, then ``clang``); a library owned by another user is not
loaded.

OpenMP (Linux only): a kernel built with ``-fopenmp`` parallelises over its outer loop
with the thread count the caller passes (torch's, so ``--threads`` and
``OMP_NUM_THREADS`` keep their meaning); elsewhere, or where OpenMP is missing, the same
source builds serial.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from diffret_cli.data.paths import default_cache_dir
from diffret_cli.fileio import atomic_path

#: set to 0 (or "off", "false", "no") to run torch ops everywhere
ENV = "DIFFRET_NATIVE"
#: a folder for the builds instead of ``<cache dir>/native``
CACHE_ENV = "DIFFRET_NATIVE_CACHE"

#: compile attempts, best first: the first that builds is used
_ATTEMPTS: tuple[tuple[str, ...], ...] = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3", "-march=native", "-fopenmp-simd"),
    ("-O3", "-fopenmp-simd"),
    ("-O3",),
)
_COMMON = ("-std=c99", "-shared", "-fPIC")
_COMPILE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Kernel:
    """A loaded library and how it was built."""

    name: str
    lib: ctypes.CDLL
    path: Path
    flags: tuple[str, ...]

    @property
    def openmp(self) -> bool:
        return "-fopenmp" in self.flags

    def __getattr__(self, item):  # the library's functions, e.g. ``kernel.rerank_step(...)``
        return getattr(self.lib, item)


_lock = threading.Lock()
#: (name, source) -> the kernel or None; keyed by the source text itself, not a hash of
#: it: a caller passes the same str object every step, and a str caches its own hash
_loaded: dict[tuple[str, str], Kernel | None] = {}
_why_not: dict[str, str] = {}
_disabled_depth = 0


def enabled() -> bool:
    """False under ``DIFFRET_NATIVE=0`` or inside :func:`disabled`."""
    if _disabled_depth:
        return False
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "false", "no")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the torch fallbacks inside the block (benchmarks compare the two paths)."""
    global _disabled_depth
    _disabled_depth += 1
    try:
        yield
    finally:
        _disabled_depth -= 1


def cache_dir() -> Path:
    """``$DIFFRET_NATIVE_CACHE``, else ``native`` in the user cache directory."""
    override = os.environ.get(CACHE_ENV, "").strip()
    return Path(override).expanduser() if override else default_cache_dir() / "native"


def _compiler() -> list[str] | None:
    """The compiler command: ``CC`` split as a shell would (``ccache gcc`` works), else the
    first of cc, gcc, clang on PATH."""
    cc = shlex.split(os.environ.get("CC", ""))
    if cc:
        found = shutil.which(cc[0]) or (cc[0] if Path(cc[0]).is_file() else None)
        return [found, *cc[1:]] if found else None
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    return None


def _attempts() -> tuple[tuple[str, ...], ...]:
    """Compile flags to try, best first. OpenMP only on Linux, where the kernel's GNU
    OpenMP calls bind to the runtime torch already loaded; elsewhere a second OpenMP
    runtime in the process can abort it (macOS: "OMP: Error #15")."""
    if sys.platform.startswith("linux"):
        return _ATTEMPTS
    return tuple(flags for flags in _ATTEMPTS if "-fopenmp" not in flags)


def _cpu_identity() -> str:
    """What decides which instructions ``-march=native`` may emit on this machine."""
    parts = [platform.system(), platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU implementer", "CPU part"):
                    parts.append(line.strip())
                elif not line.strip() and len(parts) > 3:
                    break  # the first processor is enough
    except OSError:
        pass
    return "\n".join(parts)


def _compiler_version(cc: list[str]) -> str:
    try:
        done = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
        return done.stdout + done.stderr
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"


def _build(name: str, source: str, cc: list[str]) -> tuple[Path, tuple[str, ...]] | str:
    """(library path, flags) of a build, cached or new; or why none could be made.

    A cached build of any attempt is used before anything is compiled, so a machine where
    the best flags fail (no OpenMP) does not retry them in every process."""
    version = _compiler_version(cc)
    cpu = _cpu_identity()
    folder = cache_dir()
    builds = []
    for flags in _attempts():
        key = hashlib.sha256("\0".join([source, " ".join(cc), version, " ".join(flags + _COMMON), cpu]).encode())
        builds.append((flags, folder / f"{name}-{key.hexdigest()[:20]}.so"))
    for flags, lib in builds:
        if lib.is_file():
            return lib, flags
    errors = []
    for flags, lib in builds:
        src = lib.with_suffix(".c")
        try:
            with atomic_path(src) as tmp:
                tmp.write_text(source, encoding="utf-8")
            with atomic_path(lib) as tmp:
                done = subprocess.run([*cc, *flags, *_COMMON, str(src), "-o", str(tmp)],
                                      capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
                if done.returncode != 0:
                    raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                                       else f"exit status {done.returncode}")
            return lib, flags
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            errors.append(f"{' '.join(flags)}: {exc}")
    return f"{' '.join(cc)} could not build it in {folder} ({'; '.join(errors[-2:])})"


#: how shared libraries start: ELF, Mach-O (32/64-bit, both byte orders, fat), PE
_LIBRARY_MAGIC = (b"\x7fELF", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe",
                  b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"MZ")


def _open(name: str, path: Path, flags: tuple[str, ...], signatures) -> Kernel | str:
    """The loaded kernel, or why not. A file that is not a library at all (a damaged
    cache) is removed so that the next process rebuilds it; one that is a library but
    does not load here (a noexec mount, a missing runtime) is left alone."""
    try:
        if hasattr(os, "getuid") and path.stat().st_uid != os.getuid():
            return f"{path} belongs to another user; not loaded (set {CACHE_ENV} to a folder of your own)"
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return f"{path} could not be read ({exc})"
    if not any(head.startswith(magic) for magic in _LIBRARY_MAGIC) or path.stat().st_size < 256:
        with contextlib.suppress(OSError):
            path.unlink()
        return f"{path} is damaged (not a shared library); removed, the next run rebuilds it"
    try:
        lib = ctypes.CDLL(str(path))
        for fn, (restype, argtypes) in signatures.items():
            getattr(lib, fn).restype = restype
            getattr(lib, fn).argtypes = argtypes
    except (OSError, AttributeError) as exc:
        return f"{path} could not be loaded ({exc})"
    return Kernel(name, lib, path, flags)


def load(name: str, source: str, signatures: dict[str, tuple[object, list]]) -> Kernel | None:
    """The library built from C ``source``, its functions typed by ``signatures``
    ({function: (restype, argtypes)}); None when native kernels are off or none can be
    built or loaded here (:func:`describe` then says why). One attempt per source and
    process; nothing here raises."""
    if not enabled():
        return None
    found = _loaded.get((name, source), False)
    if found is not False:
        return found
    with _lock:
        if (name, source) in _loaded:
            return _loaded[(name, source)]
        try:
            cc = _compiler()
            if cc is None:
                outcome: Kernel | str = "no C compiler found (set CC, or install gcc or clang)"
            else:
                built = _build(name, source, cc)
                outcome = built if isinstance(built, str) else _open(name, built[0], built[1], signatures)
        except Exception as exc:  # noqa: BLE001 - an accelerator must never take the run down
            outcome = f"{type(exc).__name__}: {exc}"
        kernel = outcome if isinstance(outcome, Kernel) else None
        if kernel is None:
            _why_not[name] = str(outcome)
        _loaded[(name, source)] = kernel
        return kernel


def describe(name: str) -> str:
    """One line for reports: how kernel ``name`` runs in this process."""
    if not enabled():
        return f"torch ops ({ENV}=0)" if _disabled_depth == 0 else "torch ops (disabled)"
    kernels = [k for (n, _), k in _loaded.items() if n == name]
    if not kernels:
        return "not loaded yet"
    if kernels[-1] is None:
        return f"torch ops: {_why_not.get(name, 'unavailable')}"
    k = kernels[-1]
    return f"native C kernel ({' '.join(k.flags)}{', OpenMP' if k.openmp else ', serial'})"
