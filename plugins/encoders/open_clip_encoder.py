"""CLIP dual encoder on open_clip, as DiffusionRet's stage 1 uses it.

Architecture and weights are separate axes (as in open_clip):

- ``model``: an open_clip model name (default ``ViT-B-32-quickgelu``: CLIP ViT-B/32 with
  QuickGELU, the OpenAI weights' activation) or ``"custom"`` with ``model_config`` holding
  an open_clip config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``),
  which is how tests and the quickstart build tiny models;
- ``pretrained``: an open_clip pretrained tag (e.g. ``openai``; needs the network or a
  populated Hugging Face cache) or ``weights``: a local file (a state dict saved by torch,
  a ``.safetensors`` file, or OpenAI's TorchScript ``ViT-B-32.pt``). Loads are strict.

Text (paper section 3.1): ``[SOT] + tokens[:max_words-2] + [EOT]``, zero padded, run
through the text transformer with only the first ``max_words`` positional embeddings
(never interpolated) and a causal mask whose padded key columns are also masked. Outputs:
every token's feature (``ln_final`` then the text projection) and the EOT token's.
Frames: each frame through the ViT, the projected CLS output.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffret_cli.sdk import CheckpointError, Encoder, OfflineError, PluginError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MODEL = "ViT-B-32-quickgelu"
CLIP_VOCAB = 49408


class WordTokenizer:
    """Lower-cased words hashed into ``[1, vocab_size - 3]``; SOT = vocab-2, EOT = vocab-1.

    For models trained from scratch with a small vocabulary (tests, the quickstart). EOT
    is the largest id, as CLIP's, so the sentence feature is found by ``argmax``.
    """

    def __init__(self, vocab_size: int, salt: str = ""):
        if vocab_size < 8:
            raise ValueError("a word tokenizer needs a vocabulary of at least 8")
        self.vocab_size, self.salt = vocab_size, salt
        self.sot_token_id, self.eot_token_id = vocab_size - 2, vocab_size - 1

    def encode(self, text: str) -> list[int]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        return [1 + int.from_bytes(hashlib.blake2b((self.salt + w).encode(), digest_size=8).digest(),
                                    "big") % (self.vocab_size - 3) for w in words]


def _clip_bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"encoder weights file not found: {path}",
                              hint="pass an existing file with weights=PATH, or use pretrained=TAG")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            is_jit = any(n.endswith("constants.pkl") for n in z.namelist())
        if is_jit:  # OpenAI's TorchScript archive (ViT-B-32.pt)
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
            # metadata and the causal-mask buffer are not weights (the mask is rebuilt per batch)
            return {k: v.float() for k, v in sd.items()
                    if k not in ("input_resolution", "context_length", "vocab_size") and not k.endswith("attn_mask")}
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict", hint="save it with torch.save(model.state_dict())")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


class OpenClipEncoder(Encoder):
    def __init__(self, *, model: str = DEFAULT_MODEL, model_config: dict | None = None,
                 pretrained: str | None = "openai", weights: str | None = None,
                 tokenizer: str = "auto", freeze_patch_embed: bool = True,
                 max_logit_scale: float = 100.0, cache_dir: str | None = None):
        super().__init__()
        import open_clip
        from open_clip.model import CLIP

        self.model_name, self.model_config = model, copy.deepcopy(model_config)
        self.pretrained, self.weights = pretrained, weights
        self.freeze_patch_embed, self.max_logit_scale = freeze_patch_embed, max_logit_scale
        self.cache_dir = cache_dir
        if model == "custom":
            if not model_config:
                raise PluginError("encoder model='custom' needs model_config (an open_clip config dict)",
                                  hint="e.g. model_config={'embed_dim': 64, 'vision_cfg': {...}, 'text_cfg': {...}}")
            self.clip = CLIP(**model_config)
        else:
            if model not in open_clip.list_models():
                raise PluginError(f"unknown open_clip model {model!r}",
                                  hint="use one of open_clip.list_models(), e.g. ViT-B-32-quickgelu, "
                                  "or model='custom' with model_config")
            self.clip = open_clip.create_model(model, pretrained=None)
        self.clip.attn_mask = None  # built per batch instead (max_words may be < context)
        if weights:
            self.load_weights(Path(weights))
        elif pretrained:
            self._load_pretrained(model, pretrained)

        vocab = self.clip.vocab_size
        if tokenizer == "auto":
            tokenizer = "clip" if vocab == CLIP_VOCAB else "words"
        if tokenizer == "clip" and vocab != CLIP_VOCAB:
            raise PluginError(f"the CLIP BPE tokenizer needs a vocabulary of {CLIP_VOCAB}, the model has {vocab}",
                              hint="use tokenizer='words' for small from-scratch models")
        self.tokenizer_name = tokenizer
        self._tok = _clip_bpe() if tokenizer == "clip" else WordTokenizer(vocab)

        self.embed_dim = int(self.clip.text_projection.shape[1])
        size = self.clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.image_mean, self.image_std = OPENAI_MEAN, OPENAI_STD
        if freeze_patch_embed:  # official: CLIP's patch conv is not trained
            self.clip.visual.conv1.weight.requires_grad_(False)

    # weights -------------------------------------------------------------------------
    def _load_pretrained(self, model: str, tag: str) -> None:
        """open_clip's own download (Hugging Face Hub, then the tag's URL), after a quick
        check that one of them can be reached, so that offline it fails at once instead
        of after its retries and timeouts."""
        import open_clip

        if tag not in open_clip.list_pretrained_tags_by_model(model):
            raise PluginError(f"open_clip has no pretrained tag {tag!r} for {model}",
                              hint=f"available: {', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'}")
        cfg = open_clip.get_pretrained_cfg(model, tag)
        fix = ("download them where the network is reachable (they land in the Hugging Face cache; "
               "copy it here and set HF_HUB_OFFLINE=1), or pass weights=/path/to/file (a state dict, "
               ".safetensors, or OpenAI's ViT-B-32.pt)")
        if not _in_hf_cache(cfg.get("hf_hub", ""), self.cache_dir):
            reachable = [u for u in _endpoints(cfg) if _reachable(u)]
            if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or not reachable:
                raise OfflineError(
                    f"could not fetch open_clip weights {model}/{tag}: not in the local Hugging Face cache "
                    f"and {', '.join(_endpoints(cfg)) or 'no source'} cannot be reached", hint=fix)
        try:
            src = open_clip.create_model(model, pretrained=tag, cache_dir=self.cache_dir)
        except Exception as exc:  # noqa: BLE001 - hub errors come in many types
            raise OfflineError(f"could not fetch open_clip weights {model}/{tag}: {type(exc).__name__}: {exc}",
                               hint=fix) from exc
        self.clip.load_state_dict(src.state_dict(), strict=True)

    def load_weights(self, path: Path) -> None:
        sd = _load_state_file(path)
        missing, unexpected = self.clip.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path} does not match open_clip model {self.model_name}: "
                f"missing {sorted(missing)[:8]}{'...' if len(missing) > 8 else ''}, "
                f"unexpected {sorted(unexpected)[:8]}{'...' if len(unexpected) > 8 else ''}",
                hint="check that model= names the architecture the weights were trained with")

    @classmethod
    def example_args(cls) -> list[dict[str, Any]]:
        # a from-scratch model a few hundred kB large: no download, well under a second
        small = tiny_config(embed_dim=32, width=32, heads=2, layers=2, vision_width=32, vision_layers=1,
                            image_size=32, vocab_size=512, context_length=32)
        return [{"model": "custom", "model_config": small, "pretrained": None}]

    def config(self) -> dict[str, Any]:
        return {"model": self.model_name, "model_config": copy.deepcopy(self.model_config),
                "pretrained": self.pretrained, "weights": self.weights, "tokenizer": self.tokenizer_name,
                "freeze_patch_embed": self.freeze_patch_embed, "max_logit_scale": self.max_logit_scale,
                "cache_dir": self.cache_dir}

    # text ------------------------------------------------------------------------------
    def tokenize(self, texts: list[str], max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
        if max_words > self.clip.context_length:
            raise PluginError(f"max_words={max_words} exceeds the text context of {self.clip.context_length}",
                              hint="lower max_words")
        ids = torch.zeros(len(texts), max_words, dtype=torch.long)
        mask = torch.zeros(len(texts), max_words, dtype=torch.long)
        sot, eot = self._tok.sot_token_id, self._tok.eot_token_id
        for i, text in enumerate(texts):
            toks = [sot] + self._tok.encode(text)[: max_words - 2] + [eot]
            ids[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = 1
        return ids, mask

    def _text_attn_mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Causal mask plus padded key columns, one [L,L] per sample and head."""
        n, length = mask.shape
        causal = torch.full((length, length), float("-inf"), device=mask.device).triu_(1)
        m = causal.expand(n, length, length).clone()
        m = m.masked_fill((mask == 0)[:, None, :], float("-inf"))
        return m.repeat_interleave(self.text_attention_heads(), dim=0).to(dtype)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.clip
        length = ids.shape[1]
        x = c.token_embedding(ids) + c.positional_embedding[:length]
        x = c.transformer(x, attn_mask=self._text_attn_mask(mask, x.dtype))
        x = c.ln_final(x)
        proj = c.text_projection
        tokens = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        cls = tokens[torch.arange(tokens.shape[0], device=ids.device), ids.argmax(dim=-1)]
        return tokens, cls

    # frames ----------------------------------------------------------------------------
    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, t = frames.shape[:2]
        feats = self.clip.visual(frames.reshape(n * t, *frames.shape[2:]))
        return feats.reshape(n, t, -1)

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().clamp(max=self.max_logit_scale)

    # initialisation helpers for the temporal transformer ------------------------------
    def text_layer_state(self, index: int) -> dict[str, torch.Tensor] | None:
        blocks = self.clip.transformer.resblocks
        if index >= len(blocks):
            return None
        return {k: v for k, v in blocks[index].state_dict().items()
                if not k.startswith(("ls_", "ln_attn"))}

    def text_attention_heads(self) -> int:
        return int(self.clip.transformer.resblocks[0].attn.num_heads)

    def text_positional_embedding(self) -> torch.Tensor | None:
        return self.clip.positional_embedding.detach()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The patch conv is frozen when ``freeze_patch_embed`` (official); every other CLIP
        parameter, logit scale included, trains at the encoder's learning rate. Decided by
        the configuration, not by ``requires_grad``, which a trainer toggles (stage 2)."""
        frozen = [self.clip.visual.conv1.weight] if self.freeze_patch_embed else []
        ids = {id(p) for p in frozen}
        return {"pretrained": [p for p in self.parameters() if id(p) not in ids], "frozen": frozen}


def tiny_config(*, embed_dim: int = 64, width: int = 64, layers: int = 2, heads: int = 2,
                vision_width: int = 64, vision_layers: int = 2, patch_size: int = 16,
                image_size: int = 64, vocab_size: int = 4096, context_length: int = 77) -> dict:
    """An open_clip config for a small model (tests, quickstart). Text width must equal
    embed_dim: the temporal transformer is initialised from text layers."""
    return {
        "embed_dim": embed_dim, "quick_gelu": True,
        "vision_cfg": {"image_size": image_size, "layers": vision_layers, "width": vision_width,
                       "patch_size": patch_size, "head_width": max(vision_width // heads, 8)},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": width,
                     "heads": heads, "layers": layers},
    }


def _endpoints(cfg: dict) -> list[str]:
    out = []
    if cfg.get("hf_hub"):
        out.append(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    if cfg.get("url"):
        out.append(cfg["url"])
    return out


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Can a TCP connection to the URL's host be opened (DNS included) within ``timeout``?"""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _in_hf_cache(repo: str, cache_dir: str | None) -> bool:
    """Does the local Hugging Face cache hold a weights file of ``repo`` (``org/name/``)?"""
    repo = repo.rstrip("/")
    if not repo:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(hit, str):
            return True
    return False
