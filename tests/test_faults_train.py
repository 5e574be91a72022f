"""``diffret train`` killed (SIGKILL) or stopped (SIGTERM) at chosen points, then resumed.

The real CLI runs in a child process, in its own session (its DataLoader worker shares
its process group), on a tiny CPU recipe: 2 + 2 epochs of 4 steps, a resume point every
2 steps and at each epoch end. Each test kills one run again and again at different
points (mid-epoch in stage 1 with a frame-loading worker alive, inside a save before and
after the folder swap, during validation, mid-epoch in stage 2), resuming after each
kill; then

- every process of a killed run is gone (read from /proc);
- the resume point reads back after every kill (SIGTERM: exit 130, "aborted (SIGTERM)",
  no traceback, no temp folder left);
- the finished run equals an uninterrupted one: weights of ``last`` and ``best``,
  every logged step (same global step, same loss), every validation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from diffret_cli.checkpoint import load_tensors
from diffret_cli.fileio import is_temp_name
from diffret_cli.training import load_training_state
from process_helpers import process_group, wait_for
from train_helpers import REPO, prepare_synthetic, tiny_recipe

HELPER = Path(__file__).parent / "train_fault_helper.py"
TIMEOUT_S = 240  # one child run, at most (a tiny run takes ~10 s of CPU)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_train")
    data_root = prepare_synthetic(root / "data")
    recipe = tiny_recipe(epochs1=2, epochs2=2, checkpoint_every=2)  # 4 steps an epoch, 16 in all
    recipe["train"]["num_workers"] = 1  # a frame-loading worker process that must not outlive a kill
    recipe_file = root / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    reference = root / "reference"
    proc = _start(recipe_file, data_root, reference)
    assert proc.wait(timeout=TIMEOUT_S) == 0, _output(proc)
    return {"root": root, "data_root": data_root, "recipe": recipe_file, "reference": reference}


# ------------------------------------------------------------------------------ helpers
def _start(recipe: Path, data_root: Path, run: Path, *, resume: bool = False, fault: str | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("DIFFRET_DEBUG", "DIFFRET_TEST_FAULT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if fault:
        env["DIFFRET_TEST_FAULT"] = fault
    cmd = [sys.executable, str(HELPER), "train", "--recipe", str(recipe), "--run-dir", str(run),
           "--data-root", str(data_root), "--quiet", "--no-eval"] + (["--resume"] if resume else [])
    log = open(run.parent / f"{run.name}.log", "a")
    log.write(f"\n=== {'resume' if resume else 'start'} fault={fault}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = Path(log.name)
    log.close()
    return proc


def _output(proc) -> str:
    return proc.log_path.read_text()[-4000:]


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return out


def _logged(run: Path, stage: int, at_least: int) -> bool:
    return any(r.get("stage") == stage and "loss" in r and r["global_step"] >= at_least for r in _records(run))


def _end(proc, sig: int) -> str:
    """Wait for a run ended by ``sig``; every process it started must be gone."""
    try:
        rc = proc.wait(timeout=TIMEOUT_S)
    finally:
        for pid in process_group(proc.pid):  # never leave a stray process behind, even on failure
            if pid != proc.pid:
                os.kill(pid, signal.SIGKILL)
    out = _output(proc)
    expected = -signal.SIGKILL if sig == signal.SIGKILL else 130
    assert rc == expected, (rc, out)
    wait_for(lambda: not process_group(proc.pid), 20,
             f"the processes of the killed run to exit ({process_group(proc.pid)})")
    return out


def _kill_when(proc, sig: int, cond, what: str) -> str:
    try:
        wait_for(lambda: cond() or proc.poll() is not None, TIMEOUT_S, what)
        assert proc.poll() is None, f"the run ended before {what}: {_output(proc)}"
        os.kill(proc.pid, sig)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return _end(proc, sig)


def _resume_point(run: Path) -> dict:
    """The resume point reads back whole: its state and its weights."""
    state = load_training_state(run)
    assert state is not None
    assert len(load_tensors(run / "checkpoints" / "last" / "model.safetensors")) > 10
    return state


def _temp_folders(run: Path) -> list[str]:
    return [p.name for p in (run / "checkpoints").iterdir() if is_temp_name(p.name)]


def _assert_equals_reference(run: Path, reference: Path) -> None:
    for sub in ("last", "best"):
        a = load_tensors(reference / "checkpoints" / sub / "model.safetensors")
        b = load_tensors(run / "checkpoints" / sub / "model.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (sub, k)
    steps = lambda r: [(x["stage"], x["epoch"], x["step"], x["global_step"], x["loss"])  # noqa: E731
                       for x in _records(r) if "loss" in x]
    sa, sb = steps(reference), steps(run)
    assert [x[3] for x in sa] == list(range(1, 17))
    assert [x[:4] for x in sb] == [x[:4] for x in sa], "every step logged once, with its global step"
    assert all(abs(x[4] - y[4]) <= 1e-6 for x, y in zip(sa, sb))
    vals = lambda r: [(x["stage"], x["epoch"], x["val_score"]) for x in _records(r) if "val" in x]  # noqa: E731
    assert vals(run) == vals(reference)
    assert _records(run)[-1]["event"] == "done"


# -------------------------------------------------------------------------------- tests
def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(setup):
    recipe, data_root = setup["recipe"], setup["data_root"]
    run = setup["root"] / "killed"

    # 1. stage 1, mid-epoch, its frame-loading worker running
    proc = _start(recipe, data_root, run)
    _kill_when(proc, signal.SIGKILL, lambda: _logged(run, 1, 3) and len(process_group(proc.pid)) >= 2,
               "stage-1 step 3 with the loader worker running")
    assert _resume_point(run)["stage"] == 1

    # 2. inside a save: the new `last` written under its temp name, killed before the swap
    before = _resume_point(run)["global_step"]
    _end(_start(recipe, data_root, run, resume=True, fault="SIGKILL:save-before-swap:1"), signal.SIGKILL)
    assert _temp_folders(run), "the kill was meant to land inside a save"
    assert _resume_point(run)["global_step"] == before  # the old resume point, whole

    # 3. during an end-of-epoch validation (the temp folder of 2 is swept on the way)
    _end(_start(recipe, data_root, run, resume=True, fault="SIGKILL:validation:1"), signal.SIGKILL)
    assert not _temp_folders(run)
    _resume_point(run)

    # 4. stage 2, mid-epoch
    proc = _start(recipe, data_root, run, resume=True)
    _kill_when(proc, signal.SIGKILL, lambda: _logged(run, 2, 11), "stage-2 step 11")
    assert _resume_point(run)["stage"] == 2

    # 5. inside a save, after the swap: the new `last` is in place, the old one not yet deleted
    before = _resume_point(run)["global_step"]
    _end(_start(recipe, data_root, run, resume=True, fault="SIGKILL:save-after-swap:1"), signal.SIGKILL)
    assert _resume_point(run)["global_step"] > before

    # 6. resumed to the end
    proc = _start(recipe, data_root, run, resume=True)
    assert proc.wait(timeout=TIMEOUT_S) == 0, _output(proc)
    assert not _temp_folders(run)
    _assert_equals_reference(run, setup["reference"])


def test_sigterm_stops_cleanly_like_ctrl_c_then_resume_equals_an_uninterrupted_run(setup):
    recipe, data_root = setup["recipe"], setup["data_root"]
    run = setup["root"] / "terminated"

    # 1. stage 1, mid-epoch: exit 130 with the Ctrl-C message, no traceback, no process left
    proc = _start(recipe, data_root, run)
    out = _kill_when(proc, signal.SIGTERM, lambda: _logged(run, 1, 3), "stage-1 step 3")
    assert "aborted (SIGTERM)" in out and "Traceback" not in out
    assert _resume_point(run)["global_step"] >= 2 and not _temp_folders(run)

    # 2. inside a save, before the swap: the half-done save is cleaned up, the old point kept
    before = _resume_point(run)["global_step"]
    out = _end(_start(recipe, data_root, run, resume=True, fault="SIGTERM:save-before-swap:2"), signal.SIGTERM)
    assert "aborted (SIGTERM)" in out and "Traceback" not in out
    assert not _temp_folders(run), "SIGTERM left a temp folder behind"
    assert _resume_point(run)["global_step"] > before  # the run's first save went through

    # 3. resumed to the end
    proc = _start(recipe, data_root, run, resume=True)
    assert proc.wait(timeout=TIMEOUT_S) == 0, _output(proc)
    _assert_equals_reference(run, setup["reference"])
