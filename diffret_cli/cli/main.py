"""The ``diffret`` command: a thin Click layer over the Python API.

Each subcommand lives in its own module (``cmd_<name>.py``) and is imported only when
it runs, so ``diffret --help`` stays fast and a broken optional dependency of one
command never breaks the others.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
import threading

import click

from diffret_cli import __version__
from diffret_cli.errors import DiffretError

# ------------------------------------------------------------------------ errors
# Every error a user can meet ends here (the one handler): what went wrong, the value,
# the allowed range and the fix, without a traceback; the traceback only with --debug
# (anywhere on the command line) or DIFFRET_DEBUG=1, which every message mentions.
DEBUG_ENV = "DIFFRET_DEBUG"
EXIT_ERROR = 2  # a DiffretError: bad input or environment
EXIT_FAILURE = 1  # anything else (a bug, the OS, the hardware)


# name -> (module, attribute, one-line help shown by `diffret --help`)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "plugins": ("diffret_cli.cli.cmd_plugins", "plugins", "List and inspect installed plugins."),
    "data": ("diffret_cli.cli.cmd_data", "data", "Prepare, inspect and verify datasets."),
    "train": ("diffret_cli.cli.cmd_train", "train", "Train a recipe (stage 1, stage 2, or both)."),
    "eval": ("diffret_cli.cli.cmd_eval", "eval_cmd", "Evaluate a run or checkpoint."),
    "recipes": ("diffret_cli.cli.cmd_recipes", "recipes", "List, show and validate recipes."),
    "convert": ("diffret_cli.cli.cmd_convert", "convert", "Convert an official DiffusionRet best.pth."),
    "viz": ("diffret_cli.cli.cmd_viz", "viz", "Draw the paper's figures for a run (PNG files)."),
    "report": ("diffret_cli.cli.cmd_report", "report", "Write a self-contained HTML report of a run."),
    "bench": ("diffret_cli.cli.cmd_bench", "bench", "Measure evaluation, stage-2 training, encoding and search speed."),
    "index": ("diffret_cli.cli.cmd_index", "index", "Build a search index of your videos."),
    "search": ("diffret_cli.cli.cmd_search", "search", "Search an index with text (or a video)."),
    "serve": ("diffret_cli.cli.cmd_serve", "serve", "A local web page to search an index."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, attr, _ = SUBCOMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="diffret")
@click.option("--debug", is_flag=True, help=f"Show the full traceback of an error (or set {DEBUG_ENV}=1).")
def cli(debug: bool) -> None:
    """diffret: generative text-video retrieval (DiffusionRet, DITS).

    \b
    Examples:
      diffret plugins list
      diffret data prepare synthetic
      diffret train --recipe quickstart --run-dir runs/quickstart
      diffret eval runs/quickstart
      diffret eval runs/quickstart --dataset synthetic-shift
      diffret eval runs/msrvtt --out-domain msrvtt:didemo
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup (``finally`` blocks, worker
    shutdown, atomic writes) runs the same way."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _on_sigterm(signum, frame):  # pragma: no cover - exercised through subprocess tests
    raise Terminated(signum)


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(--debug given or DIFFRET_DEBUG set, argv without --debug). ``--debug`` is accepted
    anywhere before a ``--`` separator, so it can be added to any command as it was typed."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    cut = argv.index("--") if "--" in argv else len(argv)
    flag = "--debug" in argv[:cut]
    return env or flag, [a for i, a in enumerate(argv) if not (a == "--debug" and i < cut)]


def _debug_note() -> str:
    return f"(for the traceback, add --debug or set {DEBUG_ENV}=1)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def report_error(exc: BaseException) -> int:
    """Print ``exc`` for a user (no traceback) and return the exit code."""
    err = lambda text, **kw: click.secho(text, err=True, **kw)  # noqa: E731
    if isinstance(exc, DiffretError):
        err(f"error: {exc.message}", fg="red")
        if exc.hint:
            err(f"  fix: {exc.hint}")
        err(f"  {_debug_note()}", dim=True)
        return EXIT_ERROR
    if isinstance(exc, torch_oom_errors()):
        err(f"error: out of memory: {_first_line(exc)}", fg="red")
        err("  fix: lower the batch size (--batch-size, eval.batch_size, stage1.batch_size / stage2.batch_size) "
            "or run on a device with more memory (--device / train.device)")
        err(f"  {_debug_note()}", dim=True)
        return EXIT_FAILURE
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        err(f"error: {exc.strerror or _first_line(exc)}{where}", fg="red")
        hint = {errno.ENOSPC: "free some disk space (or point --run-dir / --data-root at a larger disk) and "
                              "rerun; atomic writes left the files as they were",
                errno.EACCES: "check the permissions of that path, or choose another --run-dir / --data-root",
                errno.EROFS: "that filesystem is read-only: choose another --run-dir / --data-root"}.get(exc.errno)
        if hint:
            err(f"  fix: {hint}")
        err(f"  {_debug_note()}", dim=True)
        return EXIT_FAILURE
    err(f"internal error: {type(exc).__name__}: {_first_line(exc)}", fg="red")
    err(f"  this is a bug in diffret or one of its plugins, not in your input; {_debug_note()[1:-1]}, "
        "and report it with that traceback")
    return EXIT_FAILURE


def torch_oom_errors() -> tuple[type[BaseException], ...]:
    """Out-of-memory exception types (torch's only when torch is already imported: the
    handler never imports it for a command that did not)."""
    kinds: list[type[BaseException]] = [MemoryError]
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    if isinstance(oom, type):
        kinds.append(oom)
    return tuple(kinds)


#: What continues an interrupted command, for those that resume (the others just stopped).
_CONTINUE = {
    ("train",): "; continue the run with the same command plus --resume (and its --run-dir)",
    ("data", "prepare"): "; run the same command again: the videos already prepared are kept",
    ("index", "build"): "; run the same command again: the chunks already encoded are kept",
}


def _how_to_continue(argv: list[str]) -> str:
    words = tuple(a for a in argv if not a.startswith("-"))
    return next((hint for command, hint in _CONTINUE.items() if words[:len(command)] == command), "")


def main(argv: list[str] | None = None) -> None:
    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))
    # SIGTERM cleans up like Ctrl-C (a handler can only be set from the main thread)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        rc = cli.main(args=argv, prog_name="diffret", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # click turns Ctrl-C (and our SIGTERM) inside a command into Abort; both end the
        # same way: every cleanup has run, exit code 130
        cause = exc if isinstance(exc, KeyboardInterrupt) else (exc.__cause__ or exc.__context__)
        how = " (SIGTERM)" if isinstance(cause, Terminated) else ""
        click.echo(f"aborted{how}: stopped cleanly{_how_to_continue(argv)}", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # e.g. `diffret eval RUN --json | head`
        sys.stderr.close()
        sys.exit(EXIT_FAILURE)
    except Exception as exc:
        if debug:
            raise
        sys.exit(report_error(exc))
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


if __name__ == "__main__":  # pragma: no cover
    main()
