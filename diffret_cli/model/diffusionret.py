"""The DiffusionRet model: stage-1 dual encoder + the two stage-2 denoisers.

Built from a plain config (every plugin's registered name and arguments), so a
checkpoint's ``config.json`` alone rebuilds it. Submodule names (what the state dict
holds)::

    encoder.*          the encoder plugin (open_clip: encoder.clip.*)
    temporal.*         temporal transformer over frames
    similarity.*       token-wise weighted similarity (the two weight MLPs)
    denoiser_t2v.*     text-to-video denoiser plugin
    denoiser_v2t.*     video-to-text denoiser plugin
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from diffret_cli.errors import ConfigError
from diffret_cli.model.config import DEFAULT_CONFIG, merge_config, split_schedule_args
from diffret_cli.model.similarity import TokenWiseSimilarity
from diffret_cli.model.temporal import TemporalTransformer
from diffret_cli.registry import create, plugin_version

@dataclass
class TextFeatures:
    tokens: torch.Tensor  # [N,L,D]
    cls: torch.Tensor  # [N,D]
    mask: torch.Tensor  # [N,L]


@dataclass
class VideoFeatures:
    frames: torch.Tensor  # [N,T,D] after the temporal transformer
    mask: torch.Tensor  # [N,T]


class DiffusionRet(nn.Module):
    def __init__(self, config: dict | None = None, *, load_pretrained: bool = True):
        super().__init__()
        cfg = merge_config(DEFAULT_CONFIG, split_schedule_args(config))
        enc_args = dict(cfg["encoder"]["args"])
        if not load_pretrained:  # weights come from a checkpoint: build the bare architecture
            enc_args.update(pretrained=None, weights=None)
        self.encoder = create("encoders", cfg["encoder"]["name"], **enc_args)
        d = self.encoder.embed_dim
        t_cfg = cfg["temporal"]
        text_layer = self.encoder.text_layer_state(0)
        heads = t_cfg["heads"] or max(d // 64, 1)
        if text_layer is not None and t_cfg["init_from_text"]:
            heads = self.encoder.text_attention_heads()
        pos = self.encoder.text_positional_embedding()
        max_frames = t_cfg["max_frames"] or (pos.shape[0] if pos is not None else 77)
        self.temporal = TemporalTransformer(width=d, layers=t_cfg["layers"], heads=heads, max_frames=max_frames)
        if t_cfg["init_from_text"] and load_pretrained:
            states = [self.encoder.text_layer_state(i) for i in range(t_cfg["layers"])]
            if any(s is None for s in states):
                raise ConfigError(f"temporal.layers={t_cfg['layers']} but the encoder has fewer text layers",
                                  hint="lower temporal.layers or set temporal.init_from_text=false")
            self.temporal.init_from_text_layers(states, pos)
        self.similarity = TokenWiseSimilarity(width=d, chunk_size=cfg["similarity"]["chunk_size"])
        dn = cfg["denoisers"]
        self.denoiser_t2v = create("denoisers", dn["t2v"]["name"], **{"width": d, **dn["t2v"]["args"]})
        self.denoiser_v2t = create("denoisers", dn["v2t"]["name"], **{"width": d, **dn["v2t"]["args"]})
        self.config = cfg

    # ---------------------------------------------------------------------- config
    def full_config(self) -> dict:
        """The config with every plugin's resolved arguments and version recorded."""
        cfg = copy.deepcopy(self.config)
        cfg["encoder"]["args"] = self.encoder.config()
        cfg["denoisers"]["t2v"]["args"] = self.denoiser_t2v.config()
        cfg["denoisers"]["v2t"]["args"] = self.denoiser_v2t.config()
        cfg["versions"] = {
            "encoder": plugin_version("encoders", cfg["encoder"]["name"]),
            "denoiser_t2v": plugin_version("denoisers", cfg["denoisers"]["t2v"]["name"]),
            "denoiser_v2t": plugin_version("denoisers", cfg["denoisers"]["v2t"]["name"]),
            "sampler": plugin_version("samplers", cfg["sampler"]["name"]),
        }
        return cfg

    def make_sampler(self, **overrides):
        """The inference sampler over the model's noise schedule (``config["schedule"]``);
        ``overrides`` are sampler arguments (e.g. ``sample_steps`` for fewer DDIM steps)."""
        s, sched = self.config["sampler"], self.config["schedule"]
        # samplers rebuild the schedule from its name, steps and scale (the parity-tested
        # constructor); other schedule arguments are for training-only schedules
        forward = {"schedule": sched["name"],
                   **{k: v for k, v in sched["args"].items() if k in ("num_steps", "beta_scale")}}
        return create("samplers", s["name"], **{**forward, **s["args"], **overrides})

    def noise_schedule(self):
        """The forward process over every training step (no respacing), from the
        ``schedule`` key: what stage 2 noises its targets with (Ho et al. Eq. 4)."""
        from diffret_cli.diffusion import DiffusionCoefficients

        sched = self.config["schedule"]
        return DiffusionCoefficients.from_betas(create("schedules", sched["name"], **sched["args"]).betas())

    def stage1_modules(self) -> list[nn.Module]:
        return [self.encoder, self.temporal, self.similarity]

    def stage2_modules(self) -> list[nn.Module]:
        return [self.denoiser_t2v, self.denoiser_v2t]

    # ---------------------------------------------------------------------- encoding
    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> TextFeatures:
        tokens, cls = self.encoder.encode_text(ids, mask)
        return TextFeatures(tokens, cls, mask)

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> VideoFeatures:
        """frames [N,T,3,H,W] normalised pixels -> contextualised frame features."""
        return self.encode_frame_features(self.encoder.encode_frames(frames, mask), mask)

    def encode_frame_features(self, frame_feats: torch.Tensor, mask: torch.Tensor) -> VideoFeatures:
        return VideoFeatures(self.temporal(frame_feats, mask), mask)

    def similarity_matrix(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        """Stage-1 scores S [N_text, N_video] (paper Eq. 10)."""
        return self.similarity(text.tokens, text.mask, video.frames, video.mask)

    def contrastive_logits(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        return self.encoder.logit_scale() * self.similarity_matrix(text, video)

    # ---------------------------------------------------------------------- generation
    def rerank(self, sim: torch.Tensor, text: TextFeatures, video: VideoFeatures, *, steps: int | None = None,
               topk_t2v: int | None = None, topk_v2t: int | None = None,
               generator: torch.Generator | None = None, record: dict | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both directions re-ranked by the denoisers (paper section 3.3, Eq. 13):
        (t2v [N_text, N_video], v2t [N_video, N_text]). ``steps``: DDIM steps (default:
        all of the schedule's)."""
        from diffret_cli.rerank import rerank

        sampler = self.make_sampler(sample_steps=steps) if steps is not None else self.make_sampler()
        return rerank(sim, model=self, text_cls=text.cls, video_frames=video.frames, video_mask=video.mask,
                      sampler=sampler, topk_t2v=topk_t2v, topk_v2t=topk_v2t, generator=generator,
                      record=record)

    def generation_loss(self, text_cls: torch.Tensor, video_frames: torch.Tensor, video_mask: torch.Tensor, *,
                        queries: torch.Tensor, cand_v: torch.Tensor, cand_t: torch.Tensor,
                        generator: torch.Generator | None, kind: str = "kl", temp: float = 100.0,
                        negative_value: float = 0.0, valid_v: torch.Tensor | None = None,
                        valid_t: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The stage-2 objective (paper section 3.4): each denoiser learns to generate,
        from noise, the one-hot distribution over a query's candidates (the positive at
        index 0, then its hard negatives).

        ``text_cls`` [N,D], ``video_frames`` [N,T,D], ``video_mask`` [N,T] are the features
        of the global batch (pair i = caption i and its video); ``queries`` [B] the rows of
        this rank; ``cand_v`` / ``cand_t`` [B,K] the candidate videos / captions of each;
        ``valid_v`` / ``valid_t`` [B,K] bool, the slots the loss counts (padding slots of
        :func:`~diffret_cli.losses.hard_negative_candidates` are left out).
        Returns (loss, {"loss_t2v", "loss_v2t"})."""
        from diffret_cli.losses import generation_loss, generation_loss_indexed

        coef = self._training_schedule()
        b, k = cand_v.shape
        dev = text_cls.device
        t = torch.randint(0, coef.num_steps, (b,), generator=generator).to(dev)
        n1 = torch.randn((b, k), generator=generator).to(dev)
        n2 = torch.randn((b, k), generator=generator).to(dev)
        common = dict(kind=kind, temp=temp, negative_value=negative_value, t=t)
        if all(hasattr(d, "forward_indexed") for d in (self.denoiser_t2v, self.denoiser_v2t)):
            # the batch's unique features plus indices: the same loss and gradients without
            # gathering [B,K,T,D] candidate frames (K = B = 128: 400 MB at width 512)
            feats = dict(text=text_cls, video=video_frames, video_mask=video_mask, query_index=queries)
            l_t2v, _ = generation_loss_indexed(self.denoiser_t2v, coef, cand_index=cand_v, noise=n1,
                                               candidate_mask=valid_v, **feats, **common)
            l_v2t, _ = generation_loss_indexed(self.denoiser_v2t, coef, cand_index=cand_t, noise=n2,
                                               candidate_mask=valid_t, **feats, **common)
            return l_t2v + l_v2t, {"loss_t2v": l_t2v.detach(), "loss_v2t": l_v2t.detach()}
        l_t2v, _ = generation_loss(self.denoiser_t2v, coef, text=text_cls[queries], video=video_frames[cand_v],
                                   video_mask=video_mask[cand_v], noise=n1, candidate_mask=valid_v, **common)
        l_v2t, _ = generation_loss(self.denoiser_v2t, coef, text=text_cls[cand_t], video=video_frames[queries],
                                   video_mask=video_mask[queries], noise=n2, candidate_mask=valid_t, **common)
        return l_t2v + l_v2t, {"loss_t2v": l_t2v.detach(), "loss_v2t": l_v2t.detach()}

    def _training_schedule(self):
        if getattr(self, "_coef", None) is None:
            self._coef = self.noise_schedule()
        return self._coef

    def default_steps(self) -> int:
        """Sampler steps when none are asked for: the whole schedule."""
        return int(self.config["schedule"]["args"].get("num_steps", 50))
