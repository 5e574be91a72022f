"""Video pooling for a text-video score: mean of frames, or X-Pool's text-conditioned
attention (Gorti et al., CVPR 2022), which DITS is built on.

Every pooling answers one question, :meth:`Pooling.scores`::

    S[i, j] = cos(query_i, pool(frames_j | cond_i))

``cond`` is the text that conditions the pooling (the query caption's embedding) and
``query`` the vector the pooled video is compared with: the same text for a plain dual
encoder, DITS's v_0 for its generative score. A text-conditioned pooling pools each
(query, video) pair with *that* query, never with a video's own caption (the leak a
public T-MASS fork had; see ``tests/test_dits_model.py``). Pairs are computed in blocks
of ``chunk_size`` texts x ``chunk_size`` videos, so memory stays bounded whatever the
gallery: [Nt, Nv, D] never exists.

X-Pool, per pair (one head shown; ``heads`` splits D as in multi-head attention)::

    q = W_q LN(t)            k_f = W_k LN(f)    v_f = W_v LN(f)     (f: each frame)
    a = softmax_f(q . k_f / sqrt(D))           (padded frames get -inf)
    r = LN(W_o sum_f a_f v_f)
    pooled = LN(r + Dropout(W_fc r))

The projections start as identities with zero bias (X-Pool's initialisation), so
training starts from plain attention over the encoder's features. Dropout (0.3 in DITS)
is X-Pool's, on the residual branch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffret_cli.errors import ConfigError


class Pooling(nn.Module):
    #: whether the pooled video depends on the text (then pairs are pooled one by one)
    text_conditioned: bool = False

    def __init__(self, *, width: int, chunk_size: int = 128):
        super().__init__()
        if chunk_size < 1:
            raise ConfigError(f"pooling chunk_size must be >= 1, got {chunk_size}",
                              hint="set model.pooling.args.chunk_size to a positive number (e.g. 128)")
        self.width, self.chunk_size = int(width), int(chunk_size)

    def scores(self, query: torch.Tensor, cond: torch.Tensor, frames: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """S [Nt, Nv] from ``query`` [Nt,D], ``cond`` [Nt,D], ``frames`` [Nv,T,D], ``mask`` [Nv,T]."""
        raise NotImplementedError


class MeanPooling(Pooling):
    """The masked mean of the frames: one embedding per video, whatever the text."""

    def pool(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(frames.dtype).unsqueeze(-1)
        return (frames * m).sum(1) / m.sum(1).clamp_min(1.0)

    def scores(self, query, cond, frames, mask):
        return F.normalize(query, dim=-1) @ F.normalize(self.pool(frames, mask), dim=-1).t()


class XPool(Pooling):
    """Text-conditioned attention pooling of frames (X-Pool)."""

    text_conditioned = True

    def __init__(self, *, width: int, heads: int = 1, dropout: float = 0.3, chunk_size: int = 128,
                 identity_init: bool = True):
        super().__init__(width=width, chunk_size=chunk_size)
        if width % heads:
            raise ConfigError(f"X-Pool width {width} is not divisible by heads={heads}",
                              hint="set model.pooling.args.heads to a divisor of the embedding width (X-Pool: 1)")
        self.heads, self.dropout_p = int(heads), float(dropout)
        d = self.width
        self.norm_in = nn.LayerNorm(d)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        self.norm_attn = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.dropout = nn.Dropout(self.dropout_p)
        self.norm_out = nn.LayerNorm(d)
        if identity_init:
            with torch.no_grad():
                for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj, self.fc):
                    lin.weight.copy_(torch.eye(d))
                    lin.bias.zero_()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], self.heads, self.width // self.heads)

    def prepare_video(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [Nv,T,H,D/H]: computed once per video, reused for every text."""
        f = self.norm_in(frames)
        return self._heads(self.k_proj(f)), self._heads(self.v_proj(f))

    def prepare_text(self, cond: torch.Tensor) -> torch.Tensor:
        """Queries [Nt,H,D/H]."""
        return self._heads(self.q_proj(self.norm_in(cond)))

    def pool_pairs(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled videos [Nt,Nv,D] for prepared queries q [Nt,H,d] and videos k, v [Nv,T,H,d]."""
        logits = torch.einsum("ahd,bthd->abht", q, k) / math.sqrt(q.shape[-1])
        logits = logits.masked_fill(mask[None, :, None, :] == 0, float("-inf"))
        attn = torch.softmax(logits, dim=-1)
        pooled = torch.einsum("abht,bthd->abhd", attn, v).flatten(-2)
        r = self.norm_attn(self.out_proj(pooled))
        return self.norm_out(r + self.dropout(self.fc(r)))

    def pool(self, cond: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """pool(frames_j | cond_i) for every pair: [Nt,Nv,D] (unchunked; small inputs)."""
        k, v = self.prepare_video(frames)
        return self.pool_pairs(self.prepare_text(cond), k, v, mask)

    def scores(self, query, cond, frames, mask):
        q_all, (k_all, v_all) = self.prepare_text(cond), self.prepare_video(frames)
        query = F.normalize(query, dim=-1)
        n = self.chunk_size
        rows = []
        for i in range(0, query.shape[0], n):
            cols = []
            for j in range(0, frames.shape[0], n):
                pooled = F.normalize(self.pool_pairs(q_all[i:i + n], k_all[j:j + n], v_all[j:j + n],
                                                     mask[j:j + n]), dim=-1)
                cols.append(torch.einsum("ad,abd->ab", query[i:i + n], pooled))
            rows.append(torch.cat(cols, dim=1))
        return torch.cat(rows, dim=0)


POOLINGS = {"xpool": XPool, "mean": MeanPooling}


def build_pooling(name: str, *, width: int, **args) -> Pooling:
    """The pooling ``name`` ("xpool" or "mean") with its keyword arguments."""
    if name not in POOLINGS:
        raise ConfigError(f"unknown pooling {name!r} in model.pooling.name",
                          hint=f"available poolings: {', '.join(POOLINGS)}")
    try:
        return POOLINGS[name](width=width, **args)
    except TypeError as exc:
        raise ConfigError(f"bad model.pooling.args for pooling {name!r}: {exc}",
                          hint="X-Pool takes heads, dropout, chunk_size, identity_init; mean takes chunk_size") from exc
