"""The DITS model: CLIP dual encoder + pooling + step network + truncated sampler.

DITS (Wang et al., NeurIPS 2024) scores a text against a video with v_0 in place of the
text embedding t: the truncated sampler starts at v_{T'} = t and takes T' steps of the
step network toward the video side of the joint space. v_0 depends only on the text, so
it is computed once per caption and the cost of the generative score does not grow with
the gallery. With T' = 0, v_0 = t and the model is exactly its dual encoder.

Submodule names (what the state dict holds)::

    encoder.*     the encoder plugin (open_clip: encoder.clip.*)
    temporal.*    optional temporal transformer over frames (absent when layers = 0)
    pooling.*     X-Pool text-conditioned pooling (no parameters for mean pooling)
    denoiser.*    the step network plugin eps(v_k, k)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from diffret_cli.errors import ConfigError
from diffret_cli.model.config import merge_config
from diffret_cli.model.diffusionret import TextFeatures, VideoFeatures
from diffret_cli.model.dits_config import DITS_DEFAULT_CONFIG, POOL_WITH
from diffret_cli.model.pooling import build_pooling
from diffret_cli.model.temporal import TemporalTransformer
from diffret_cli.registry import create, plugin_version


class DITS(nn.Module):
    def __init__(self, config: dict | None = None, *, load_pretrained: bool = True):
        super().__init__()
        cfg = merge_config(DITS_DEFAULT_CONFIG, config)
        if cfg["pool_with"] not in POOL_WITH:
            raise ConfigError(f"model.pool_with={cfg['pool_with']!r} is not a choice",
                              hint=f"use one of: {', '.join(POOL_WITH)}")
        enc_args = dict(cfg["encoder"]["args"])
        if not load_pretrained:  # weights come from a checkpoint: build the bare architecture
            enc_args.update(pretrained=None, weights=None)
        self.encoder = create("encoders", cfg["encoder"]["name"], **enc_args)
        d = self.encoder.embed_dim
        self.temporal = self._build_temporal(cfg["temporal"], d, load_pretrained)
        self.pooling = build_pooling(cfg["pooling"]["name"], width=d, **cfg["pooling"]["args"])
        dn = cfg["denoiser"]
        self.denoiser = create("denoisers", dn["name"], **{"width": d, **dn["args"]})
        self.config = cfg
        self.make_sampler()  # a bad sampler argument fails when the model is built

    def _build_temporal(self, t_cfg: dict, d: int, load_pretrained: bool) -> TemporalTransformer | None:
        if not t_cfg["layers"]:
            return None
        heads = t_cfg["heads"] or max(d // 64, 1)
        if t_cfg["init_from_text"]:
            heads = self.encoder.text_attention_heads() or heads
        pos = self.encoder.text_positional_embedding()
        max_frames = t_cfg["max_frames"] or (pos.shape[0] if pos is not None else 77)
        temporal = TemporalTransformer(width=d, layers=t_cfg["layers"], heads=heads, max_frames=max_frames)
        if t_cfg["init_from_text"] and load_pretrained:
            states = [self.encoder.text_layer_state(i) for i in range(t_cfg["layers"])]
            if any(s is None for s in states):
                raise ConfigError(f"model.temporal.layers={t_cfg['layers']} but the encoder has fewer text layers",
                                  hint="lower model.temporal.layers or set model.temporal.init_from_text=false")
            temporal.init_from_text_layers(states, pos)
        return temporal

    # ---------------------------------------------------------------------- config
    def full_config(self) -> dict:
        """The config with every plugin's resolved arguments and version recorded."""
        cfg = copy.deepcopy(self.config)
        cfg["encoder"]["args"] = self.encoder.config()
        cfg["denoiser"]["args"] = self.denoiser.config()
        cfg["sampler"]["args"] = self.make_sampler().config()
        cfg["versions"] = {
            "encoder": plugin_version("encoders", cfg["encoder"]["name"]),
            "denoiser": plugin_version("denoisers", cfg["denoiser"]["name"]),
            "sampler": plugin_version("samplers", cfg["sampler"]["name"]),
        }
        return cfg

    def make_sampler(self, **overrides):
        """The truncated sampler; ``overrides`` are sampler arguments (``sample_steps`` = T')."""
        s = self.config["sampler"]
        sampler = create("samplers", s["name"], **{**s["args"], **overrides})
        if not sampler.truncated or sampler.prediction != "eps":
            raise ConfigError(f"model.sampler.name={s['name']!r} is not a truncated eps sampler",
                              hint="DITS needs a sampler that starts from the text embedding, e.g. 'dits'")
        return sampler

    def default_steps(self) -> int:
        """T' when none is asked for."""
        return int(self.make_sampler().sample_steps)

    # ---------------------------------------------------------------------- encoding
    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> TextFeatures:
        tokens, cls = self.encoder.encode_text(ids, mask)
        return TextFeatures(tokens, cls, mask)

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> VideoFeatures:
        """frames [N,T,3,H,W] normalised pixels -> frame features [N,T,D] (pooled later,
        per query, by :meth:`scores`)."""
        feats = self.encoder.encode_frames(frames, mask)
        if self.temporal is not None:
            feats = self.temporal(feats, mask)
        return VideoFeatures(feats, mask)

    # ---------------------------------------------------------------------- scores
    def scores(self, query: torch.Tensor, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        """cos(query_i, pool(video_j | text_i)) [Nt, Nv]; ``query`` is t or v_0."""
        cond = query if self.config["pool_with"] == "v0" else text.cls
        return self.pooling.scores(query, cond, video.frames, video.mask)

    def similarity_matrix(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        """The plain dual encoder's scores [Nt, Nv] (T' = 0): cos(t, pool(v | t))."""
        return self.pooling.scores(text.cls, text.cls, video.frames, video.mask)

    def query_embedding(self, text_cls: torch.Tensor, *, steps: int | None = None, noise: bool | None = None,
                        generator: torch.Generator | None = None, record: dict | None = None) -> torch.Tensor:
        """v_0 [Nt, D] from the text embeddings (the truncated flow, keeps the graph).

        ``steps``: T' (default: the sampler's); ``noise``: draw the lambda_k z terms
        (default: the sampler's ``noise`` argument)."""
        overrides = {}
        if steps is not None:
            overrides["sample_steps"] = int(steps)
        if noise is not None:
            overrides["noise"] = bool(noise)
        sampler = self.make_sampler(**overrides)
        n = self.config["query_chunk_size"]
        out, traj = [], []
        for i in range(0, text_cls.shape[0], n):
            ctx = self.denoiser.prepare(text_cls[i:i + n], None, None)
            x = sampler.start(shape=ctx.state_shape, anchor=ctx.anchor, generator=generator,
                              device=text_cls.device, dtype=text_cls.dtype)
            res = sampler.sample(lambda v, t: self.denoiser.step(v, t, ctx), x, generator=generator,
                                 record=record is not None)
            out.append(res.sample)
            if record is not None:
                traj.append(res.trajectory)
        if record is not None:
            record["trajectory"] = traj
        return torch.cat(out, dim=0) if out else text_cls

    def contrastive_logits(self, text: TextFeatures, video: VideoFeatures, v0: torch.Tensor) -> torch.Tensor:
        """logit_scale * cos(v_0, pool(v | t)) [B, B]: what DITS's InfoNCE is taken on."""
        return self.encoder.logit_scale() * self.scores(v0, text, video)

    @torch.no_grad()
    def rerank(self, sim: torch.Tensor, text: TextFeatures, video: VideoFeatures, *, steps: int | None = None,
               topk_t2v: int | None = None, topk_v2t: int | None = None,
               generator: torch.Generator | None = None, record: dict | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The generative scores (the "diffusion" rows): (t2v [Nt, Nv], v2t [Nv, Nt]).

        Every caption's v_0 is computed once and scored against the whole gallery, so
        ``sim`` (the dual-encoder scores) and the top-k limits do not enter: DITS
        replaces the query embedding rather than re-ranking a shortlist."""
        v0 = self.query_embedding(text.cls, steps=steps, generator=generator, record=record)
        s = self.scores(v0, text, video)
        if record is not None:
            record["v0"] = v0
        return s, s.t()
