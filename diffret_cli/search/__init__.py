"""Search your own video collection with a trained model.

- :func:`diffret_cli.search.build.build_index`: encode a folder of videos (or a prepared
  dataset) once into an index (``diffret index build``);
- :class:`SearchIndex`: text-to-video and video-to-text queries (``diffret search``);
- :mod:`diffret_cli.search.server`: a local web page over an index (``diffret serve``);
- :mod:`diffret_cli.search.bench`: build time, latency, recall and bytes per video at
  any gallery size (``diffret bench search``).
"""

from diffret_cli.search.engine import SearchIndex

__all__ = ["SearchIndex"]
