"""Official DiffusionRet ``best.pth`` -> diffret model (explicit, strict key mapping).

The official checkpoint is a plain state dict (load it with ``weights_only=True``). Each
official name maps to exactly one diffret name by the prefix table below; the sinusoidal
step tables (``*.sequence_pos_encoder.pe``) are deterministic buffers diffret recomputes,
and are the only tolerated extra keys. Anything else missing or unexpected is an error
that lists the keys: nothing is ever silently left at its random initialisation.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from diffret_cli.errors import CheckpointError

#: official prefix -> diffret prefix, first match wins
PREFIX_MAP: tuple[tuple[str, str], ...] = (
    ("clip.", "encoder.clip."),
    ("frame_position_embeddings.", "temporal.frame_position_embeddings."),
    ("transformerClip.resblocks.", "temporal.resblocks."),
    ("text_weight_fc.", "similarity.text_weight_fc."),
    ("video_weight_fc.", "similarity.video_weight_fc."),
    ("diffusion_model_v.", "denoiser_v2t."),
    ("diffusion_model.", "denoiser_t2v."),
)
#: official keys with no diffret counterpart, recomputed rather than loaded
TOLERATED_SUFFIXES = ("sequence_pos_encoder.pe",)
#: official CLIP buffers/metadata that are not parameters of open_clip's CLIP
DROPPED_CLIP_KEYS = ("clip.input_resolution", "clip.context_length", "clip.vocab_size")


def map_official_key(name: str) -> str | None:
    if name.endswith(TOLERATED_SUFFIXES) or name in DROPPED_CLIP_KEYS:
        return None
    for src, dst in PREFIX_MAP:
        if name.startswith(src):
            return dst + name[len(src):]
    raise KeyError(name)


def map_official_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for name, value in official.items():
        try:
            new = map_official_key(name)
        except KeyError:
            unknown.append(name)
            continue
        if new is not None:
            out[new] = value
    if unknown:
        raise CheckpointError(f"{len(unknown)} official keys have no diffret counterpart: {sorted(unknown)[:20]}",
                              hint="is this a DiffusionRet best.pth (wti interaction, seqTransf aggregation)?")
    return out


def infer_config(official: dict[str, torch.Tensor], *, max_words: int = 32, max_frames: int = 12) -> dict:
    """A diffret model config for an official state dict (architecture read from shapes)."""
    sd = official
    try:
        embed_dim = sd["clip.text_projection"].shape[1]
        width = sd["clip.ln_final.weight"].shape[0]
        vision_width = sd["clip.visual.conv1.weight"].shape[0]
        patch = sd["clip.visual.conv1.weight"].shape[-1]
        grid = round(math.sqrt(sd["clip.visual.positional_embedding"].shape[0] - 1))
        context = sd["clip.positional_embedding"].shape[0]
        vocab = sd["clip.token_embedding.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"official checkpoint lacks {exc.args[0]!r}",
                              hint="pass a complete DiffusionRet best.pth") from exc

    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})

    clip_cfg = {
        "embed_dim": int(embed_dim), "quick_gelu": True,
        "vision_cfg": {"image_size": int(grid * patch), "layers": count("clip.visual.transformer.resblocks."),
                       "width": int(vision_width), "patch_size": int(patch), "head_width": 64},
        "text_cfg": {"context_length": int(context), "vocab_size": int(vocab), "width": int(width),
                     "heads": max(int(width) // 64, 1), "layers": count("clip.transformer.resblocks.")},
    }
    vitb32 = (clip_cfg["vision_cfg"] == {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32,
                                        "head_width": 64}
              and clip_cfg["text_cfg"]["layers"] == 12 and vocab == 49408 and embed_dim == 512)
    encoder_args = ({"model": "ViT-B-32-quickgelu", "pretrained": None} if vitb32 else
                    {"model": "custom", "model_config": clip_cfg, "pretrained": None})
    return {
        "encoder": {"name": "open_clip", "args": encoder_args},
        "temporal": {"layers": count("transformerClip.resblocks."), "init_from_text": True},
        "max_words": max_words, "max_frames": max_frames,
    }


def load_official(path: Path) -> dict[str, torch.Tensor]:
    """The official state dict in ``path`` (``weights_only=True``: no pickled code runs);
    a file that is not one is a :class:`CheckpointError` naming it."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"official checkpoint not found: {path}", hint="pass the path of best.pth")
    resave = ("diffret reads plain state dicts (weights_only=True); in the official code, re-save it with "
              "torch.save(model.state_dict(), path)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)", hint="copy best.pth again from its source")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} holds pickled Python objects, not only tensors, so it is not loaded "
                              "(unpickling could run code)", hint=resave) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        detail = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"could not read {path} ({size} bytes) as a state dict: {detail}",
                              hint="the file is damaged or cut short (copy it again), or not a torch.save file; "
                              + resave) from exc
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{path} holds {type(sd).__name__ if sd is not None else 'nothing'}"
                              f"{' (empty)' if isinstance(sd, dict) else ''}, not a state dict of tensors",
                              hint=resave)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} entries are not tensors, e.g. {bad[:5]}",
                              hint="pass the model's state dict (a best.pth of DiffusionRet's training script); "
                              + resave)
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def official_name(diffret_name: str) -> str:
    """The official name of a diffret state-dict key (inverse of :data:`PREFIX_MAP`)."""
    for src, dst in PREFIX_MAP:
        if diffret_name.startswith(dst):
            return src + diffret_name[len(dst):]
    return diffret_name


def convert_official(official: dict[str, torch.Tensor], *, config_overrides: dict | None = None):
    """Build a DiffusionRet model holding the official weights (strict)."""
    from diffret_cli.model.diffusionret import DiffusionRet, merge_config

    cfg = merge_config(infer_config(official), config_overrides or {}, path="x.")
    model = DiffusionRet(cfg, load_pretrained=False)
    mapped = map_official_state_dict(official)
    expected = set(model.state_dict())
    missing = sorted(official_name(k) for k in expected - set(mapped))
    unexpected = sorted(official_name(k) for k in set(mapped) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"the official checkpoint does not match the architecture read from its shapes: "
            f"{len(missing)} missing official keys {missing[:20]}, {len(unexpected)} unexpected {unexpected[:20]}",
            hint="convert a complete DiffusionRet best.pth of the wti/seqTransf model (stage-1-only "
            "checkpoints lack the diffusion_model* keys); official -> diffret prefixes: "
            + ", ".join(f"{a}* -> {b}*" for a, b in PREFIX_MAP))
    load_strict(model, mapped, source="official checkpoint")
    return model


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model: {len(missing)} missing keys {missing[:20]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:20]}",
            hint="the checkpoint was made for another architecture; check its config.json")
    own = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
           for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} tensors have another shape, e.g. {'; '.join(bad[:5])}",
                              hint="the checkpoint was made for another architecture (check its config.json; "
                              "for `diffret convert`, --max-words / --max-frames)")
    model.load_state_dict(state, strict=True)
