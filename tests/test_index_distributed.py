"""``diffret index build`` under torchrun: each rank encodes its chunks, rank 0 merges
them into the index a single process builds (2 gloo ranks on CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from search_helpers import folder_index, world
from train_helpers import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_build_the_single_process_index(tmp_path_factory, tmp_path):
    w = world(tmp_path_factory.getbasetemp() / "search-world")
    ref = folder_index(w, w["ckpt"].parent / "idx-folder")  # one process, chunks of 2
    out = tmp_path / "idx"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "diffret_cli.cli.main", "index", "build",
           "--checkpoint", str(w["ckpt"]), "--videos", str(w["videos"]), "--out", str(out), "--chunk-size", "2",
           "--batch-size", "2", "--device", "cpu", "--captions", str(tmp_path / "caps.txt"), "--json"]
    (tmp_path / "caps.txt").write_text("a grey square fades in\nlight rises slowly\na dark frame\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads(proc.stdout)  # printed once, by rank 0
    assert meta["videos"]["count"] == 3 and meta["failed"] == 1
    for name in ("features.npy", "weights.npy", "lengths.npy", "pooled.npy", "thumbs.idx.npy"):
        assert np.array_equal(np.load(out / "videos" / name), np.load(ref / "videos" / name)), name
    assert (out / "videos" / "items.jsonl").read_text() == (ref / "videos" / "items.jsonl").read_text()
    assert json.loads((out / "failures.json").read_text()) == json.loads((ref / "failures.json").read_text())
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())  # the build folder is gone
