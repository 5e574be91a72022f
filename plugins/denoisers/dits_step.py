"""The DITS step network: eps(v_k, k), a small DiT over a one-token state.

DITS (Wang et al., NeurIPS 2024) moves the text embedding toward its video in a few
steps; at each step a network predicts the update direction eps from the current state
v_k and the step k alone. The paper's network is DiT-style: a linear input embed, 4
blocks with 16 heads and MLP ratio 4 at width 512, adaptive LayerNorm conditioned on the
step, and a final LayerNorm + linear. The state is a single 512-d token.

Architecture (DiT, Peebles & Xie 2023, "adaLN-Zero")::

    h   = W_in v_k                                  [B, 1, H]  (H = hidden, default D)
    c   = MLP([cos(k w), sin(k w)]) (+ W_c t, condition="text")
    per block:  (s1, g1, a1, s2, g2, a2) = W_mod SiLU(c)
                h = h + a1 * Attn(LN(h) (1 + g1) + s1)
                h = h + a2 * MLP(LN(h) (1 + g2) + s2)
    eps = W_out (LN(h) (1 + g) + s),  (s, g) = W_fin SiLU(c)

With ``zero_init`` (DiT's default) the modulations and W_out start at zero, so eps = 0
and DITS begins training exactly at its dual encoder (v_0 = t).

Condition: the paper's ablation (MSRVTT R@1: none 50.1, text 42.3, video 23.1, both
40.9) picks *no* condition, the default. ``condition="text"`` adds the anchor (the text
embedding) to the step condition for experiments. A video condition is not offered: it
would make v_0 depend on the candidate, so its cost would grow with the gallery.

As a :class:`Denoiser` (direction ``t2v``): ``prepare(text, video, video_mask)`` returns
the anchor (the text embedding, where the truncated sampler starts), the state shape
[B, D], and, when candidates are given, their mean-pooled unit embeddings; ``fuse``
scores those candidates by cosine with the sampler's output v_0. The DITS model itself
calls ``prepare(text, None, None)`` and scores the whole gallery with its own pooling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffret_cli.sdk import Denoiser, DenoiserContext

CONDITIONS = ("none", "text")


def step_frequencies(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t w_i), sin(t w_i)] with w_i = max_period^(-i / (dim/2)): DiT's timestep
    features [B, dim] (even ``dim``), computed in float32 on t's device."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class StepEmbedder(nn.Module):
    """c = MLP(frequencies(k)): Linear -> SiLU -> Linear, as DiT embeds its timestep."""

    def __init__(self, hidden: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        w = self.mlp[0].weight
        return self.mlp(step_frequencies(t, self.frequency_dim).to(w.dtype))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (1 + scale) + shift, one (shift, scale) per sample broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, g1, a1, s2, g2, a2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = modulate(self.norm1(h), s1, g1)
        h = h + a1.unsqueeze(1) * self.attn(x, x, x, need_weights=False)[0]
        return h + a2.unsqueeze(1) * self.mlp(modulate(self.norm2(h), s2, g2))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(h), shift, scale))


class DITSStepNetwork(Denoiser):
    """eps(v_k, k): state [B, D] and step [B] -> update direction [B, D]."""

    direction = "t2v"

    def __init__(self, *, width: int = 512, hidden: int | None = None, depth: int = 4, heads: int = 16,
                 mlp_ratio: float = 4.0, condition: str = "none", zero_init: bool = True):
        super().__init__()
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, got {condition!r} "
                             "(a video condition would make v_0 depend on the candidate)")
        self.width = int(width)
        self.hidden = int(hidden) if hidden else self.width
        if self.hidden % heads:
            raise ValueError(f"hidden width {self.hidden} is not divisible by heads={heads}")
        self.depth, self.heads, self.mlp_ratio = int(depth), int(heads), float(mlp_ratio)
        self.condition, self.zero_init = condition, bool(zero_init)
        self.x_embed = nn.Linear(self.width, self.hidden)
        self.t_embed = StepEmbedder(self.hidden)
        self.c_embed = nn.Linear(self.width, self.hidden) if condition == "text" else None
        self.blocks = nn.ModuleList(DiTBlock(self.hidden, self.heads, self.mlp_ratio) for _ in range(self.depth))
        self.final = FinalLayer(self.hidden, self.width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT's initialisation: Xavier-uniform linears, N(0, 0.02) step MLP; with
        ``zero_init`` the adaLN modulations and the output layer are zero (eps = 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.t_embed.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        if self.zero_init:
            for mod in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final.adaLN_modulation[-1],
                                                                        self.final.linear]:
                nn.init.zeros_(mod.weight)
                nn.init.zeros_(mod.bias)

    def config(self) -> dict:
        return {"width": self.width, "hidden": self.hidden, "depth": self.depth, "heads": self.heads,
                "mlp_ratio": self.mlp_ratio, "condition": self.condition, "zero_init": self.zero_init}

    @classmethod
    def example_args(cls) -> list[dict]:
        # small and non-zero at init, so every path of the contract is exercised
        return [{"width": 32, "hidden": 32, "depth": 2, "heads": 4, "zero_init": False},
                {"width": 32, "hidden": 16, "depth": 1, "heads": 2, "condition": "text", "zero_init": False}]

    def prepare(self, text: torch.Tensor, video: torch.Tensor | None = None,
                video_mask: torch.Tensor | None = None) -> DenoiserContext:
        """``text`` [B,D] (the anchor); optional candidates ``video`` [B,K,T,D] with
        ``video_mask`` [B,K,T], mean-pooled for :meth:`fuse`."""
        tensors = {}
        if self.c_embed is not None:
            tensors["cond"] = self.c_embed(text)
        if video is not None:
            m = video_mask.to(video.dtype).unsqueeze(-1)
            pooled = (video * m).sum(-2) / m.sum(-2).clamp_min(1.0)
            tensors["candidates"] = F.normalize(pooled, dim=-1)
        return DenoiserContext(tensors, state_shape=tuple(text.shape), anchor=text)

    def step(self, x_t: torch.Tensor, t: torch.Tensor, ctx: DenoiserContext) -> torch.Tensor:
        c = self.t_embed(t)
        if "cond" in ctx.tensors:
            c = c + ctx.tensors["cond"]
        h = self.x_embed(x_t).unsqueeze(1)  # one token
        for block in self.blocks:
            h = block(h, c)
        return self.final(h, c).squeeze(1)

    def fuse(self, base: torch.Tensor, sample: torch.Tensor, ctx: DenoiserContext, *,
             alpha: float = 1.0, tau: float = 1.0) -> torch.Tensor:
        """cos(v_0, candidate) [B,K]: the sample replaces the query, so ``base``,
        ``alpha`` and ``tau`` (DiffusionRet's fusion, Eq. 13) do not enter."""
        if "candidates" not in ctx.tensors:
            raise ValueError("fuse needs candidates: call prepare(text, video, video_mask) with the candidates")
        return torch.einsum("bd,bkd->bk", F.normalize(sample, dim=-1), ctx.tensors["candidates"])
