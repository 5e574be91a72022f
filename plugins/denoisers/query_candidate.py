"""DiffusionRet's query-candidate attention denoisers (paper section 3.2, Eq. 4-6).

Both directions predict the clean score vector x0 [B,K] over K candidates from the noisy
x_t [B,K], the step t and the features of the query and its candidates. Parameter names
match the official state dict (``q_proj``, ``k_proj``, ``v_proj``, ``proj``,
``embed_timestep.time_embed``, ``decoder``), so an official checkpoint maps one to one.

Three ways to run the same function, each for one job:

- :meth:`prepare` + :meth:`step` (and ``forward``): the paper's equations in order, with
  what does not depend on the step (the text-frame pooling of Eq. 4 and the candidates'
  projections, by linearity ``Wk(v + c) = Wk v + Wk c``) done once in ``prepare``;
- :meth:`prepare_gallery` + :meth:`prepare_chunk` + :meth:`step`: the re-ranker's
  sampling path (:mod:`.query_candidate_sampling`). Everything linear in the candidates
  is folded out of the step loop, so a step is a K-wide softmax and a few K x D products
  per query;
- :meth:`forward_indexed`: stage-2 training on a batch's unique features plus candidate
  indices (:mod:`.query_candidate_indexed`), without gathering [B,K,T,D].

Official quirks kept by default (each has a switch):
- the frame mask multiplies the softmax AFTER it is taken, with no renormalisation
  (``renormalize_frames=False``);
- query-candidate logits are q.k with no 1/sqrt(D) (``scale_logits=False``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffret_cli.sdk import Denoiser, DenoiserContext
from diffret_plugins.denoisers import query_candidate_indexed as indexed
from diffret_plugins.denoisers import query_candidate_sampling as sampling


def sinusoidal_table(length: int, width: int) -> torch.Tensor:
    """The standard transformer position encoding [length, width] (float32, Vaswani Eq. 5)."""
    pe = torch.zeros(length, width)
    position = torch.arange(0, length, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, width, 2).float() * (-math.log(10000.0) / width))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


class TimestepEmbedder(nn.Module):
    """cond = MLP(pe[t]): a fixed sinusoidal row, then Linear -> SiLU -> Linear."""

    def __init__(self, width: int, max_steps: int = 5000):
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_steps, width), persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_embed(self.pe[t])


class _QueryCandidateDenoiser(Denoiser):
    masks_candidates = True

    def __init__(self, *, width: int = 512, temp: float = 1.0, max_steps: int = 5000,
                 renormalize_frames: bool = False, scale_logits: bool = False):
        super().__init__()
        self.width = int(width)
        self.temp = float(temp)
        self.max_steps = int(max_steps)
        self.renormalize_frames = bool(renormalize_frames)
        self.scale_logits = bool(scale_logits)
        d = self.width
        self.embed_timestep = TimestepEmbedder(d, max_steps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.proj = nn.Linear(d, d)
        self.decoder = nn.Sequential(nn.Linear(2 * d, 2 * d), nn.ReLU(), nn.Linear(2 * d, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation: Linear weights N(0, 0.02), biases zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def config(self) -> dict:
        return {"width": self.width, "temp": self.temp, "max_steps": self.max_steps,
                "renormalize_frames": self.renormalize_frames, "scale_logits": self.scale_logits}

    # ------------------------------------------------------------------ shared pieces
    def frame_attention(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 4's weights: softmax over frames (last dim) of text.frame / temp. Official:
        the mask multiplies the softmax after it is taken (no renormalisation)."""
        logits = logits / self.temp
        mask = mask.to(logits.dtype)
        if self.renormalize_frames:
            return torch.softmax(logits.masked_fill(mask == 0, float("-inf")), dim=-1).nan_to_num(0.0)
        return torch.softmax(logits, dim=-1) * mask

    def decoder_split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W1_h, W1_c, b1): the decoder's first layer split by input,
        W1 [h; c] + b1 = W1_h h + W1_c c + b1."""
        w1 = self.decoder[0].weight
        return w1[:, : self.width], w1[:, self.width:], self.decoder[0].bias

    def _finish(self, x_t, cond, q, k_c, v_c, dec_c, candidate_mask=None) -> torch.Tensor:
        """Eq. 5-6 and the decoder, given step-invariant parts of the candidates.

        q [B,D] or [B,K,D]: the query projection including cond; k_c, v_c [B,K,D]: the
        candidate projections without cond; dec_c [B,K,2D]: W1_c c + b1; candidate_mask
        [B,K] bool or None: the slots Eq. 5's softmax runs over.
        """
        k = k_c + F.linear(cond, self.k_proj.weight).unsqueeze(1)
        val = v_c + F.linear(cond, self.v_proj.weight).unsqueeze(1)
        if q.dim() == 2:
            logits = torch.bmm(k, q.unsqueeze(-1)).squeeze(-1)
        else:
            logits = (q * k).sum(-1)
        if self.scale_logits:
            logits = logits / math.sqrt(self.width)
        weight = indexed.candidate_softmax(logits + x_t, candidate_mask)
        h = self.proj(torch.bmm(weight.unsqueeze(1), val).squeeze(1))
        w1_h, _, _ = self.decoder_split()
        hidden = torch.relu(dec_c + F.linear(h, w1_h).unsqueeze(1))
        return self.decoder[2](hidden).squeeze(-1) + weight

    # --------------------------------------------------------------- the fast paths
    def prepare_gallery(self, text: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor, *,
                        timesteps: list[int], pairs: int | None = None) -> sampling.Gallery:
        """Sampling, once per gallery: the step tables for ``timesteps`` (the model-facing
        step indices the sampler will pass) and what depends on single gallery items.
        ``text`` [N,D] cls features, ``video`` [M,T,D] frames, ``video_mask`` [M,T].
        ``pairs``: how many (query, candidate) pairs will be prepared from it, if known;
        with more pairs than frames, t2v projects each frame once instead of each pair."""
        return sampling.prepare_gallery(self, text, video, video_mask, timesteps=timesteps, pairs=pairs)

    def prepare_chunk(self, gallery: sampling.Gallery, query_index: torch.Tensor,
                      cand_index: torch.Tensor) -> DenoiserContext:
        """Sampling, once per chunk of queries: ``query_index`` [B] rows of the query
        modality (texts for t2v, videos for v2t), ``cand_index`` [B,K] rows of the other.
        :meth:`step` on the result equals :meth:`step` on :meth:`prepare` of the gathered
        features, within float32 rounding."""
        return sampling.prepare_chunk(self, gallery, query_index, cand_index)

    def forward_indexed(self, x_t: torch.Tensor, t: torch.Tensor, *, text: torch.Tensor, video: torch.Tensor,
                        video_mask: torch.Tensor, query_index: torch.Tensor, cand_index: torch.Tensor,
                        candidate_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x0_hat [B,K] from unique features and indices (stage-2 training).

        ``text`` [N,D], ``video`` [M,T,D], ``video_mask`` [M,T]; ``query_index`` [B] rows of
        the query modality, ``cand_index`` [B,K] rows of the candidates'. Equals ``forward``
        on the gathered features (t2v: ``text[query_index]``, ``video[cand_index]``; v2t:
        ``text[cand_index]``, ``video[query_index]``) in value and gradient, within float32
        rounding, but projects each unique frame/text once instead of B x K times.
        ``candidate_mask``: see :attr:`Denoiser.masks_candidates`."""
        fn = indexed.forward_t2v if self.direction == "t2v" else indexed.forward_v2t
        return fn(self, x_t, t, text=text, video=video, video_mask=video_mask, query_index=query_index,
                  cand_index=cand_index, candidate_mask=candidate_mask)

    def step(self, x_t, t, ctx) -> torch.Tensor:
        if sampling.is_folded(ctx):
            return sampling.step(self, x_t, t, ctx)
        return self._explicit_step(x_t, t, ctx)


class TextToVideoDenoiser(_QueryCandidateDenoiser):
    """Query: a text's cls feature [B,D]. Candidates: K videos' frames [B,K,T,D], mask [B,K,T]."""

    direction = "t2v"

    def prepare(self, text, video, video_mask) -> DenoiserContext:
        # Eq. 4: each candidate video pooled over its frames by attention to the text
        attn = self.frame_attention(torch.einsum("bd,bktd->bkt", text, video), video_mask)
        pooled = torch.einsum("bkt,bktd->bkd", attn, video)
        _, w1_c, b1 = self.decoder_split()
        return DenoiserContext({
            "q_text": F.linear(text, self.q_proj.weight),
            "k_c": F.linear(pooled, self.k_proj.weight),
            "v_c": F.linear(pooled, self.v_proj.weight),
            "dec_c": F.linear(pooled, w1_c, b1),
        }, state_shape=tuple(pooled.shape[:2]))

    def _explicit_step(self, x_t, t, ctx) -> torch.Tensor:
        c = ctx.tensors
        cond = self.embed_timestep(t)
        q = c["q_text"] + F.linear(cond, self.q_proj.weight)
        return self._finish(x_t, cond, q, c["k_c"], c["v_c"], c["dec_c"], c.get("candidate_mask"))


class VideoToTextDenoiser(_QueryCandidateDenoiser):
    """Query: one video's frames [B,T,D] with mask [B,T]. Candidates: K texts' cls [B,K,D].

    The query video is pooled once per candidate text (Eq. 4 with the roles swapped), so
    the query projection is per candidate: q [B,K,D].
    """

    direction = "v2t"

    def prepare(self, text, video, video_mask) -> DenoiserContext:
        attn = self.frame_attention(torch.einsum("bkd,btd->bkt", text, video), video_mask.unsqueeze(1))
        pooled = torch.einsum("bkt,btd->bkd", attn, video)
        _, w1_c, b1 = self.decoder_split()
        return DenoiserContext({
            "q_video": F.linear(pooled, self.q_proj.weight),
            "k_c": F.linear(text, self.k_proj.weight),
            "v_c": F.linear(text, self.v_proj.weight),
            "dec_c": F.linear(text, w1_c, b1),
        }, state_shape=tuple(text.shape[:2]))

    def _explicit_step(self, x_t, t, ctx) -> torch.Tensor:
        c = ctx.tensors
        cond = self.embed_timestep(t)
        q = c["q_video"] + F.linear(cond, self.q_proj.weight).unsqueeze(1)
        return self._finish(x_t, cond, q, c["k_c"], c["v_c"], c["dec_c"], c.get("candidate_mask"))
