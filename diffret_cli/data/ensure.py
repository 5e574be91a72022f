"""Open a prepared dataset, generating it first when it needs no files (``synthetic``)."""

from __future__ import annotations

from pathlib import Path


def ensure_prepared(name: str, data_root: Path | None, *, data_cfg: dict | None = None,
                    options: dict | None = None, progress: bool = True):
    """The :class:`~diffret_cli.data.manifest.PreparedDataset` ``name``. A generated
    dataset that is not prepared yet is generated on the spot (nothing to download);
    others must be prepared with ``diffret data prepare`` first, and their error says how."""
    from diffret_cli.data.manifest import PreparedDataset
    from diffret_cli.data.prepare import is_generated, make_plugin, prepare
    from diffret_cli.errors import DiffretError

    try:
        return PreparedDataset.open(data_root, name)
    except DiffretError:
        if not is_generated(make_plugin(name, options)):
            raise
    data_cfg = data_cfg or {}
    prepare(name, data_root=data_root, fps=data_cfg.get("fps", 1.0), short_side=data_cfg.get("short_side", 224),
            plugin_options=options, progress=progress)
    return PreparedDataset.open(data_root, name)
