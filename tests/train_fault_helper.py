"""``python tests/train_fault_helper.py train ...``: the real ``diffret`` CLI, with one
fault planted by ``DIFFRET_TEST_FAULT=SIGNAL:POINT:N`` (tests/test_faults_train.py runs it
in a child process):

- ``save-before-swap``: the N-th save of ``checkpoints/last`` is fully written under its
  temp name, then the signal arrives before the folder swap;
- ``save-after-swap``: the N-th swap of ``last`` has happened, the old folder (now under
  the temp name) is not deleted yet;
- ``validation``: the N-th end-of-epoch validation starts.

SIGNAL is ``SIGKILL`` or ``SIGTERM`` (sent by the process to itself, so the point is
exact). Nothing here changes what diffret does when no fault is set.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def plant(spec: str) -> None:
    import diffret_cli.fileio as fileio
    import diffret_cli.training.loop as loop
    import diffret_cli.training.state as state

    name, point, nth = spec.split(":")
    sig, nth = getattr(signal, name), int(nth)
    calls = {"n": 0}

    def hit() -> None:
        calls["n"] += 1
        if calls["n"] == nth:
            os.kill(os.getpid(), sig)  # SIGTERM: its handler raises at the next bytecode

    if point == "save-before-swap":
        real = state.replace_dir

        def replace_dir(tmp, dst):
            if Path(dst).name == "last":
                hit()
            return real(tmp, dst)

        state.replace_dir = replace_dir
    elif point == "save-after-swap":
        real_exchange = fileio._exchange

        def exchange(a, b):
            done = real_exchange(a, b)
            if done and Path(b).name == "last":
                hit()
            return done

        fileio._exchange = exchange
    elif point == "validation":
        real_validate = loop.validate

        def validate(*a, **k):
            hit()
            return real_validate(*a, **k)

        loop.validate = validate
    else:
        raise SystemExit(f"unknown fault point {point!r}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if os.environ.get("DIFFRET_TEST_FAULT"):
        plant(os.environ["DIFFRET_TEST_FAULT"])
    from diffret_cli.cli.main import main

    main(sys.argv[1:])
