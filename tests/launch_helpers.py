"""Launching test workers in fresh processes: plainly, or under torchrun with CPU ranks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from train_helpers import REPO

TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    """The repository and tests/ importable, one OpenMP thread a process."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "OMP_NUM_THREADS": "1"}


def run_python(args: list[str], *, cwd: Path, timeout: int = 120, check: bool = True) -> subprocess.CompletedProcess:
    """``python ARGS``; asserts success unless ``check`` is False."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=worker_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def torchrun(args: list[str], *, cwd: Path, nproc: int = 2, timeout: int = 120,
             check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc ARGS`` on this machine (gloo on CPU)."""
    return run_python(["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                       "--master_port", str(free_port()), *args], cwd=cwd, timeout=timeout, check=check)
