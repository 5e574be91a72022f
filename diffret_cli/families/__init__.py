"""Model families (DiffusionRet, DITS, third-party ones) by registered name.

A model config names its family in ``config["family"]`` (absent: ``diffusionret``, the
format of checkpoints written before families existed).
"""

from __future__ import annotations

from diffret_cli.families.base import ModelFamily, RetrievalModel

DEFAULT_FAMILY = "diffusionret"

__all__ = ["DEFAULT_FAMILY", "ModelFamily", "RetrievalModel", "build_model", "family_name", "get_family"]


def get_family(name: str) -> ModelFamily:
    from diffret_cli.registry import create

    return create("families", name)


def family_name(config: dict | None) -> str:
    return (config or {}).get("family") or DEFAULT_FAMILY


def build_model(config: dict | None, *, load_pretrained: bool = True):
    """The model a config describes, whatever its family."""
    return get_family(family_name(config)).build(config, load_pretrained=load_pretrained)
