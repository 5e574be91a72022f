"""``diffret convert``: an official DiffusionRet ``best.pth`` -> a diffret checkpoint.

The official code loads its checkpoints with ``strict=False``, so a key mismatch silently
leaves layers random. Here every official key maps to exactly one diffret key and the
load is strict: a missing or unexpected key stops the conversion with the list of keys.
"""

from __future__ import annotations

from pathlib import Path

import click

from diffret_cli.errors import CheckpointError


def _architecture(cfg: dict) -> list[str]:
    """Human-readable lines for the architecture read from the checkpoint's shapes."""
    enc = cfg["encoder"]["args"]
    lines = []
    if enc.get("model") == "custom":
        m = enc["model_config"]
        v, t = m["vision_cfg"], m["text_cfg"]
        lines.append(f"CLIP (custom): vision {v['layers']} layers x {v['width']} wide, patch {v['patch_size']}, "
                     f"{v['image_size']} px; text {t['layers']} layers x {t['width']} wide, "
                     f"vocab {t['vocab_size']}, context {t['context_length']}; embed {m['embed_dim']}")
    else:
        lines.append(f"CLIP {enc['model']}")
    lines.append(f"temporal transformer: {cfg['temporal']['layers']} layers")
    lines.append("similarity: token-wise weighted (WTI); denoisers: t2v + v2t")
    lines.append(f"max_words {cfg['max_words']}, max_frames {cfg['max_frames']}")
    return lines


_EXAMPLES = """\b
Examples:
  diffret convert ckpt_msrvtt/best.pth runs/official-msrvtt
  diffret eval runs/official-msrvtt --dataset msrvtt
  diffret convert ckpt_didemo/best.pth runs/official-didemo --max-words 64 --max-frames 64
"""


@click.command("convert", epilog=_EXAMPLES, short_help="Convert an official DiffusionRet best.pth.")
@click.argument("best_pth", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--max-words", default=32, show_default=True, type=click.IntRange(3, None),
              help="Text length the model was trained with (64 for ActivityNet/DiDeMo).")
@click.option("--max-frames", default=12, show_default=True, type=click.IntRange(1, None),
              help="Frames per video the model was trained with (64 for ActivityNet/DiDeMo).")
@click.option("--overwrite", is_flag=True, help="Replace a checkpoint already in OUT_DIR.")
def convert(best_pth: Path, out_dir: Path, max_words: int, max_frames: int, overwrite: bool) -> None:
    """Convert an official DiffusionRet BEST_PTH into a diffret checkpoint in OUT_DIR.

    The architecture (CLIP size, temporal layers) is read from the checkpoint's tensor
    shapes; every key must map (strict), else nothing is written and the keys are listed.
    OUT_DIR receives model.safetensors and config.json.
    """
    from diffret_cli.checkpoint import CONFIG_FILE, MODEL_FILE, save_model
    from diffret_cli.convert import (PREFIX_MAP, convert_official, load_official, map_official_key,
                                     map_official_state_dict)

    if not overwrite and ((out_dir / MODEL_FILE).exists() or (out_dir / CONFIG_FILE).exists()):
        raise CheckpointError(f"{out_dir} already holds a checkpoint ({MODEL_FILE} / {CONFIG_FILE})",
                              hint="pass another OUT_DIR, or --overwrite to replace it")
    official = load_official(best_pth)
    try:
        mapped = map_official_state_dict(official)  # raises on keys with no counterpart
        model = convert_official(official, config_overrides={"max_words": max_words, "max_frames": max_frames})
    except CheckpointError as exc:
        names = "; ".join(f"{dst}* <- {src}*" for src, dst in PREFIX_MAP)
        raise CheckpointError(
            f"{best_pth}: {exc.message}",
            hint="BEST_PTH must be a complete DiffusionRet checkpoint (--interaction wti, "
            f"--agg_module seqTransf, stage generation). diffret keys <- official keys: {names}") from exc
    save_model(model, out_dir, extra={"converted_from": str(best_pth)})

    skipped = sorted(k for k in official if map_official_key(k) is None)
    n_params = sum(v.numel() for v in mapped.values())
    click.echo(f"read {best_pth}: {len(official)} tensors")
    click.echo(f"loaded {len(mapped)} tensors ({n_params:,} values) strictly; "
               f"skipped {len(skipped)} (sinusoidal tables diffret recomputes, CLIP metadata): "
               f"{', '.join(skipped) or 'none'}")
    click.echo("architecture inferred from the shapes:")
    for line in _architecture(model.config):
        click.echo(f"  {line}")
    click.echo(f"wrote {out_dir / MODEL_FILE} and {out_dir / CONFIG_FILE}")

