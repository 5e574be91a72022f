"""One error handler for every command (diffret_cli.cli.main): the message, the fix, a
pointer to --debug; a traceback only with --debug or DIFFRET_DEBUG=1. Damaged checkpoint
files are errors that name the file."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch

from diffret_cli.checkpoint import MODEL_FILE, load_model, save_model
from diffret_cli.cli import main as main_mod
from diffret_cli.cli.main import debug_requested, main
from diffret_cli.errors import CheckpointError, ConfigError
from diffret_cli.training.state import STATE_FILE, last_dir, load_training_state
from train_helpers import REPO, tiny_model_config


@pytest.fixture
def failing_command(monkeypatch):
    """A `diffret boom` command that raises whatever the test puts in ``raise_[0]``."""
    raise_: list[BaseException] = []

    @click.command("boom")
    def boom() -> None:
        raise raise_[0]

    monkeypatch.setitem(main_mod.SUBCOMMANDS, "boom", ("tests_boom_module", "boom", "fails"))
    fake = type(sys)("tests_boom_module")
    fake.boom = boom
    monkeypatch.setitem(sys.modules, "tests_boom_module", fake)
    monkeypatch.delenv(main_mod.DEBUG_ENV, raising=False)
    return raise_


def _run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_a_user_error_is_the_message_and_the_fix_without_a_traceback(failing_command, capsys):
    failing_command.append(ConfigError("stage1.lr=-1 is not allowed; expected a number > 0",
                                       hint="set stage1.lr=1e-4"))
    code, err = _run(["boom"], capsys)
    assert code == 2
    assert "error: stage1.lr=-1 is not allowed; expected a number > 0" in err
    assert "fix: set stage1.lr=1e-4" in err
    assert "--debug" in err and "DIFFRET_DEBUG=1" in err and "Traceback" not in err


def test_a_bug_is_reported_as_internal_with_how_to_get_the_traceback(failing_command, capsys):
    failing_command.append(IndexError("list index out of range"))
    code, err = _run(["boom"], capsys)
    assert code == 1
    assert "internal error: IndexError: list index out of range" in err
    assert "--debug" in err and "report it" in err and "Traceback" not in err


@pytest.mark.parametrize("how", ["flag-after", "flag-before", "env"])
def test_debug_shows_the_traceback(failing_command, monkeypatch, how):
    failing_command.append(IndexError("list index out of range"))
    argv = {"flag-after": ["boom", "--debug"], "flag-before": ["--debug", "boom"], "env": ["boom"]}[how]
    if how == "env":
        monkeypatch.setenv(main_mod.DEBUG_ENV, "1")
    with pytest.raises(IndexError):  # re-raised: Python prints the traceback
        main(argv)


def test_os_errors_name_the_path_and_the_fix(failing_command, capsys):
    failing_command.append(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/checkpoints/last"))
    code, err = _run(["boom"], capsys)
    assert code == 1
    assert f"error: {os.strerror(errno.ENOSPC)}: /runs/x/checkpoints/last" in err
    assert "free some disk space" in err and "Traceback" not in err


def test_out_of_memory_says_to_lower_the_batch_size(failing_command, capsys):
    failing_command.append(MemoryError())
    code, err = _run(["boom"], capsys)
    assert code == 1 and "out of memory" in err and "--batch-size" in err


def test_debug_flag_is_taken_anywhere_before_a_separator(monkeypatch):
    monkeypatch.delenv(main_mod.DEBUG_ENV, raising=False)
    assert debug_requested(["eval", "run", "--debug"]) == (True, ["eval", "run"])
    assert debug_requested(["train", "--", "--debug"]) == (False, ["train", "--", "--debug"])
    monkeypatch.setenv(main_mod.DEBUG_ENV, "0")
    assert debug_requested(["eval"])[0] is False


def test_sigterm_is_handled_like_ctrl_c():
    """SIGTERM inside a command runs its cleanup (finally) and exits 130, like Ctrl-C."""
    code = (
        "import os, signal, sys, click\n"
        "from diffret_cli.cli import main as m\n"
        "@click.command('hang')\n"
        "def hang():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        import time; time.sleep(30)\n"
        "    finally:\n"
        "        print('cleanup ran', flush=True)\n"
        "mod = type(sys)('hang_mod'); mod.hang = hang; sys.modules['hang_mod'] = mod\n"
        "m.SUBCOMMANDS['hang'] = ('hang_mod', 'hang', '')\n"
        "m.main(['hang'])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 130, res.stderr
    assert "cleanup ran" in res.stdout and "aborted (SIGTERM)" in res.stderr and "Traceback" not in res.stderr
    assert "--resume" not in res.stderr  # only commands that resume say how to continue


@pytest.mark.parametrize("argv, hint", [
    (["train", "--recipe", "quickstart"], "--resume"),
    (["data", "prepare", "msvd"], "videos already prepared are kept"),
    (["index", "build", "--videos", "v"], "chunks already encoded are kept"),
    (["data", "verify", "msvd"], None),
    (["serve", "idx"], None),
    (["eval", "runs/x"], None),
])
def test_interrupted_commands_say_how_to_continue_only_when_they_resume(argv, hint):
    text = main_mod._how_to_continue(argv)
    assert (hint in text) if hint else text == ""


# ---------------------------------------------------------------- damaged checkpoint files
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from diffret_cli.families import build_model

    torch.manual_seed(0)
    return save_model(build_model(tiny_model_config(), load_pretrained=False), tmp_path_factory.mktemp("ckpt"))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "missing"])
def test_a_damaged_model_file_is_an_error_naming_it(checkpoint, tmp_path, damage):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    f = bad / MODEL_FILE
    data = f.read_bytes()
    if damage == "missing":
        f.unlink()
    else:
        f.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00" * 64}[damage])
    with pytest.raises(CheckpointError) as e:
        load_model(bad)
    assert str(f) in e.value.message
    assert {"empty": "empty (0 bytes)", "truncated": "damaged", "garbage": "damaged",
            "missing": "missing"}[damage] in e.value.message
    assert e.value.hint


def _state_file(run: Path, obj) -> Path:
    path = last_dir(run) / STATE_FILE
    path.parent.mkdir(parents=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("damage", ["truncated", "empty", "not-a-state"])
def test_a_damaged_resume_state_is_an_error_naming_it(tmp_path, damage):
    good = {"stage": 1, "epoch": 0, "batch": 2, "best": 0.0, "global_step": 2, "optimizer": {}, "scheduler": {},
            "rng": {"torch": torch.get_rng_state()}}
    path = _state_file(tmp_path, good if damage != "not-a-state" else {"weights": torch.zeros(2)})
    assert damage == "not-a-state" or load_training_state(tmp_path)["global_step"] == 2
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        load_training_state(tmp_path)
    assert str(path) in e.value.message and "--run-dir" in e.value.hint


class _Payload:
    """An object whose unpickling would run code (creates a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_resume_state_with_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    _state_file(tmp_path, {"stage": 1, "payload": _Payload(str(marker))})
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_training_state(tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------ recipes that must not validate
@pytest.mark.parametrize("override, expect", [
    ("train.device=mps", "not mps: the diffusion coefficients are float64"),
    ("stage2.epochs=0", "stage2.epochs: 0 trains nothing"),
    ("model.sampler.args.num_steps=1", "set model.schedule.args.num_steps"),
    ("model.sampler.args.schedule=linear", "set model.schedule.name"),
])
def test_recipes_that_would_train_nothing_or_the_wrong_thing_are_refused(override, expect):
    from diffret_cli.errors import DiffretError
    from diffret_cli.recipes import load_recipe

    with pytest.raises(DiffretError, match="problem") as e:
        load_recipe("quickstart", [override])
    assert expect in str(e.value)
    load_recipe("quickstart", ["train.stages=[1]", "stage2.epochs=0"])  # stage 2 does not run: fine


# ------------------------------------------------------------------ official checkpoints (convert)
@pytest.mark.parametrize("content, expect", [
    ("empty", "is empty (0 bytes)"),
    ("truncated", "could not read"),
    ("list", "holds list, not a state dict"),
    ("non-tensors", "entries are not tensors"),
    ("pickled", "holds pickled Python objects"),
])
def test_convert_names_the_file_and_what_is_wrong(tmp_path, capsys, content, expect):
    best = tmp_path / "best.pth"
    if content == "empty":
        best.write_bytes(b"")
    else:
        obj = {"list": [torch.zeros(2)], "non-tensors": {"clip.a": torch.zeros(2), "epoch": "7"},
               "truncated": {"clip.a": torch.zeros(1000)},
               "pickled": {"clip.a": torch.zeros(2), "args": _Payload(str(tmp_path / "pwned"))}}[content]
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
        best.write_bytes(data[: len(data) // 2] if content == "truncated" else data)
    code, err = _run(["convert", str(best), str(tmp_path / "out")], capsys)
    assert code == 2 and expect in err and str(best) in err and "fix:" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------ flipped bits
def _flip(path: Path, at: float = 0.75) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10  # inside the tensor data, past the header
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_weights_is_caught_by_the_checksum(checkpoint, tmp_path):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    _flip(bad / MODEL_FILE)
    with pytest.raises(CheckpointError, match="does not match the checksum") as e:
        load_model(bad)
    assert str(bad / MODEL_FILE) in e.value.message
    # a checkpoint written before checksums were recorded still loads (unchecked)
    old = tmp_path / "old"
    shutil.copytree(checkpoint, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["checksums"]
    (old / "config.json").write_text(json.dumps(cfg))
    load_model(old)


def test_a_flipped_bit_in_the_resume_state_is_caught(tmp_path):
    from diffret_cli.families import build_model
    from diffret_cli.training.state import save_training_state

    state = {"stage": 1, "epoch": 0, "batch": 2, "best": 0.0, "global_step": 2,
             "optimizer": {"exp_avg": torch.randn(4096)}, "scheduler": {}, "rng": {"torch": torch.get_rng_state()}}
    save_training_state(tmp_path, build_model(tiny_model_config(), load_pretrained=False), state)
    assert load_training_state(tmp_path)["global_step"] == 2
    _flip(last_dir(tmp_path) / STATE_FILE, at=0.5)
    with pytest.raises(CheckpointError, match="does not match the checksum") as e:
        load_training_state(tmp_path)
    assert "--run-dir" in e.value.hint


def test_an_emptied_run_recipe_is_named_not_taken_for_a_bare_checkpoint(tmp_path):
    from diffret_cli.evaluation import load_run_recipe

    (tmp_path / "recipe.yaml").write_text("")
    with pytest.raises(ConfigError, match="recipe.yaml holds no recipe"):
        load_run_recipe(tmp_path)


def test_a_run_dir_that_is_a_file_is_refused(tmp_path):
    from diffret_cli.training import check_run_dir

    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_run_dir(tmp_path / "afile")
