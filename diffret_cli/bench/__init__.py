"""Benchmarks behind ``diffret bench``: the library measures, the CLI parses and prints.

- :func:`bench_eval` (``diffret bench eval``): similarity and re-ranking of a gallery;
- :func:`bench_train_stage2` (``diffret bench train-stage2``): the stage-2 training step;
- :func:`bench_encode` (``diffret bench encode``): the image tower's throughput.

Each returns a JSON-ready dict with its settings, seconds per phase (``phases``, wall;
``cpu_phases``, process CPU time), ``total`` and the peak memory.
"""

from diffret_cli.bench.encoder import bench_encode
from diffret_cli.bench.evaluation import EvalParts, bench_eval, run_eval
from diffret_cli.bench.stage2 import Stage2Step, bench_train_stage2
from diffret_cli.bench.synthetic import OFFICIAL, CachedFeatures, official_shape_features
from diffret_cli.bench.timing import PeakMemory, PhaseTimer

__all__ = ["bench_eval", "run_eval", "EvalParts", "bench_train_stage2", "Stage2Step", "bench_encode",
           "official_shape_features", "CachedFeatures", "OFFICIAL", "PhaseTimer", "PeakMemory"]
