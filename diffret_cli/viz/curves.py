"""Training curves from a run's ``metrics.jsonl``: loss per step and the validation score
per epoch, one colour per stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffret_cli.errors import ConfigError
from diffret_cli.viz.frames import new_figure

__all__ = ["read_metrics", "curves_figure"]

STAGE_COLORS = {1: "#2b8cbe", 2: "#e6550d"}


def read_metrics(path: str | Path) -> list[dict]:
    """Every record of a ``metrics.jsonl``; a torn last line (a run killed mid-write) is
    skipped, any other bad line is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found", hint="pass a run directory written by `diffret train`")
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines):
                break
            raise ConfigError(f"{path}:{i} is not JSON ({exc.msg})", hint="the file is damaged") from exc
    return out


def curves_figure(records: list[dict]):
    """Two panels: ``loss`` (training loss against the step within the run, per stage) and
    ``validation`` (the validation score after each epoch, per stage)."""
    fig = new_figure(9.0, 3.0)
    loss_ax, val_ax = fig.subplots(1, 2)
    loss_ax.set_label("loss")
    val_ax.set_label("validation")
    for stage in sorted({r["stage"] for r in records if "stage" in r}):
        color = STAGE_COLORS.get(stage)
        pts = [(r.get("global_step", r.get("step")), r["loss"]) for r in records
               if r.get("stage") == stage and "loss" in r]
        if pts:
            x, y = np.array(pts, dtype=float).T
            loss_ax.plot(x, y, color=color, linewidth=1, label=f"stage {stage}")
        val = [(r["epoch"] + 1, r["val_score"]) for r in records if r.get("stage") == stage and "val_score" in r]
        if val:
            x, y = np.array(val, dtype=float).T
            val_ax.plot(x, y, marker="o", color=color, label=f"stage {stage}")
    loss_ax.set_xlabel("optimizer step", fontsize=8)
    loss_ax.set_ylabel("training loss", fontsize=8)
    loss_ax.set_title("training loss", fontsize=9)
    val_ax.set_xlabel("epoch", fontsize=8)
    val_ax.set_ylabel("validation t2v Rsum", fontsize=8)
    val_ax.set_title("validation (model selection score)", fontsize=9)
    for ax in (loss_ax, val_ax):
        ax.tick_params(labelsize=7)
        if ax.get_lines():
            ax.legend(fontsize=7)
    return fig
