"""Training of any model family: one loop (:mod:`.loop`) runs each stage a family
declares (:mod:`.stage`); :func:`train` runs a recipe into a run directory.

A run directory holds everything (never the working directory itself)::

    recipe.yaml                  the resolved recipe
    metrics.jsonl                every logged metric, one JSON object a line
    checkpoints/last/            model + config + training_state.pt (resume point)
    checkpoints/stage<N>/best/   best model of stage N on the validation split
    checkpoints/best/            the final best model (what `diffret eval RUN` loads)
    features/                    stage-2 feature cache (DiffusionRet)
    eval/                        evaluation results (JSON)
"""

from diffret_cli.training.context import Interrupted, RunContext
from diffret_cli.training.run import check_run_dir, new_run_dir, train
from diffret_cli.training.state import load_training_state

__all__ = ["Interrupted", "RunContext", "check_run_dir", "load_training_state", "new_run_dir", "train"]
