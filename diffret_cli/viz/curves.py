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
    """One ``loss:<stage>`` panel per stage (its losses differ in kind and scale: InfoNCE,
    then the generation loss) against the optimizer step, and a ``validation`` panel (the
    model-selection score after each epoch, per stage)."""
    from matplotlib.ticker import MaxNLocator

    stages = sorted({r["stage"] for r in records if "stage" in r and "loss" in r})
    fig = new_figure(3.3 * (len(stages) + 1) + 0.4, 3.0)
    axes = fig.subplots(1, len(stages) + 1, squeeze=False)[0]
    for ax, stage in zip(axes, stages):
        ax.set_label(f"loss:{stage}")
        pts = [(r.get("global_step", r.get("step")), r["loss"]) for r in records
               if r.get("stage") == stage and "loss" in r]
        x, y = np.array(pts, dtype=float).T
        ax.plot(x, y, color=STAGE_COLORS.get(stage), linewidth=1)
        ax.set_title(f"stage {stage}: training loss", fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
    val_ax = axes[-1]
    val_ax.set_label("validation")
    for stage in sorted({r["stage"] for r in records if "stage" in r and "val_score" in r}):
        val = [(r["epoch"] + 1, r["val_score"]) for r in records if r.get("stage") == stage and "val_score" in r]
        x, y = np.array(val, dtype=float).T
        val_ax.plot(x, y, marker="o", color=STAGE_COLORS.get(stage), label=f"stage {stage}")
    val_ax.set_xlabel("epoch", fontsize=8)
    val_ax.set_ylabel("validation t2v Rsum", fontsize=8)
    val_ax.set_title("validation (model selection)", fontsize=9)
    val_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if val_ax.get_lines():
        val_ax.legend(fontsize=7)
    for ax in axes:
        ax.tick_params(labelsize=7)
    return fig
