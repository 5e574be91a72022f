"""The temporal transformer ("seqTransf") that contextualises frame features.

video_feat' = Transformer(video_feat + P[0..T)) + video_feat, with P a learned frame
position embedding and a pre-LN transformer whose padded frames are masked additively
((1 - mask) * -1e6). DiffusionRet initialises P from CLIP's text positional embedding and
the layers from CLIP text layers 0..n-1 (:meth:`init_from_text_layers`).

The LayerNorms use eps = 1e-12 (the official code's TF-style LayerNorm), not CLIP's 1e-5,
even though the weights come from CLIP.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, ln_eps: float = 1e-12):
        super().__init__()
        self.heads = heads
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class TemporalTransformer(nn.Module):
    """[N,T,D] frame features + [N,T] mask -> [N,T,D] (not normalised)."""

    def __init__(self, *, width: int = 512, layers: int = 4, heads: int = 8,
                 max_frames: int = 77, ln_eps: float = 1e-12):
        super().__init__()
        self.width, self.layers, self.heads = width, layers, heads
        self.frame_position_embeddings = nn.Embedding(max_frames, width)
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, ln_eps) for _ in range(layers))

    def forward(self, video_feat: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        n, t, _ = video_feat.shape
        if t > self.frame_position_embeddings.num_embeddings:
            raise ValueError(f"{t} frames exceed the {self.frame_position_embeddings.num_embeddings} "
                             "frame positions of the temporal transformer")
        pos = self.frame_position_embeddings(torch.arange(t, device=video_feat.device))
        x = video_feat + pos
        # additive key mask, one [T,T] per sample, repeated per head (batch-major)
        mask = (1.0 - video_mask.to(x.dtype).unsqueeze(1)) * -1000000.0
        mask = mask.expand(-1, t, -1).repeat_interleave(self.heads, dim=0)
        for block in self.resblocks:
            x = block(x, mask)
        return x + video_feat

    @torch.no_grad()
    def init_from_text_layers(self, layer_states: list[dict[str, torch.Tensor]],
                              positional_embedding: torch.Tensor | None) -> None:
        """Copy CLIP text layers 0..layers-1 and the first rows of its positional embedding."""
        if len(layer_states) < self.layers:
            raise ValueError(f"the text encoder has {len(layer_states)} layers; the temporal "
                             f"transformer needs {self.layers} to initialise from")
        for block, state in zip(self.resblocks, layer_states):
            block.load_state_dict(state, strict=True)
        if positional_embedding is not None:
            rows = min(positional_embedding.shape[0], self.frame_position_embeddings.num_embeddings)
            self.frame_position_embeddings.weight[:rows].copy_(positional_embedding[:rows])
