"""The public plugin SDK: the one module a plugin package imports from diffret.

Everything a plugin of any kind needs, re-exported from the module that defines it
(so ``diffret_cli.sdk.FullSampler is diffret_cli.full_sampler.FullSampler``)::

    from diffret_cli.sdk import FullSampler, NoiseSchedule, ConfigError

- base classes, one per plugin kind (entry-point group ``diffret.<kind>``):
  :class:`Encoder` (encoders), :class:`Denoiser` with :class:`DenoiserContext`
  (denoisers), :class:`NoiseSchedule` (schedules), :class:`Sampler` with
  :class:`SampleResult`, :data:`ModelFn` and :func:`uniform_step` (samplers),
  :class:`DatasetPlugin` and :class:`AnnotatedDataset` with :class:`DownloadSource`
  (datasets); all derive from
  :class:`ConfigurablePlugin` (``config()`` and the ``example_args()`` hook of the
  contract tests);
- the full-sampler machinery: :class:`FullSampler` (subclass it and write ``update``;
  a multistep solver keeps its per-chain memory in ``update``'s ``state`` dict),
  :func:`space_timesteps`, :func:`respaced_coefficients`,
  :class:`DiffusionCoefficients`, :func:`extract`;
- dataset entry types (:class:`VideoEntry`, :class:`SplitAnnotations`,
  :class:`ItemProblem`, :data:`Protocol`) and the annotation readers of
  :mod:`diffret_cli.data.readers` (:func:`load_json`, :func:`read_csv`,
  :func:`read_id_list`, :func:`clean_caption`, :func:`build_entries`, ...);
- the errors: :class:`DiffretError` and its kinds. Raise them with the file, the item,
  the allowed values and a ``hint=`` saying how to fix it.

Importing this module imports torch (the model-layer bases need it) but no plugin.
Anything not listed in ``__all__`` is internal and may change without notice.
"""

from __future__ import annotations

from diffret_cli.configurable import ConfigurablePlugin
from diffret_cli.data.plugin import COMMON_SUBDIRS, AnnotatedDataset, DatasetPlugin, DownloadSource
from diffret_cli.data.readers import (
    Caption,
    build_entries,
    clean_caption,
    clean_captions,
    decode_text,
    group_rows,
    is_valid_utf8,
    load_json,
    load_json_id_list,
    read_bytes,
    read_csv,
    read_id_list,
    read_lines,
    read_text,
    read_tsv,
    require_keys,
    require_list,
    require_str,
    show_bad_text,
)
from diffret_cli.data.types import ItemProblem, Protocol, SplitAnnotations, VideoEntry
from diffret_cli.diffusion import DiffusionCoefficients, extract
from diffret_cli.errors import (
    AnnotationError,
    CheckpointError,
    ConfigError,
    DecodeError,
    DiffretError,
    OfflineError,
    PluginError,
)
from diffret_cli.full_sampler import FullSampler, respaced_coefficients, space_timesteps
from diffret_cli.interfaces import (
    Denoiser,
    DenoiserContext,
    Encoder,
    ModelFn,
    NoiseSchedule,
    SampleResult,
    Sampler,
    uniform_step,
)

__all__ = [
    # plugin bases
    "ConfigurablePlugin", "Encoder", "Denoiser", "DenoiserContext", "NoiseSchedule", "Sampler",
    "SampleResult", "ModelFn", "uniform_step", "DatasetPlugin", "AnnotatedDataset", "DownloadSource",
    # full-sampler machinery
    "FullSampler", "space_timesteps", "respaced_coefficients", "DiffusionCoefficients", "extract",
    # dataset entry types
    "VideoEntry", "SplitAnnotations", "ItemProblem", "Protocol",
    # annotation readers
    "COMMON_SUBDIRS", "Caption", "decode_text", "is_valid_utf8", "show_bad_text", "clean_caption",
    "read_bytes", "read_text", "load_json", "require_keys", "require_list", "require_str",
    "load_json_id_list", "read_lines", "read_id_list", "read_csv", "read_tsv", "group_rows",
    "clean_captions", "build_entries",
    # errors
    "DiffretError", "PluginError", "ConfigError", "CheckpointError", "AnnotationError",
    "DecodeError", "OfflineError",
]
