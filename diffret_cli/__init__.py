"""diffret: generative text-video retrieval.

The library is usable without the CLI; see ``diffret_cli.api`` for the public entry
points (load a model or checkpoint, encode texts and videos, score, re-rank).
"""

__version__ = "0.1.0"
