"""Token-wise weighted interaction, "WTI" (DiffusionRet paper Eq. 10, from DRL).

A = cos(word_i, frame_j) for every word and frame. Each word gets a weight from a small
MLP (softmax over the valid words), each frame likewise:

    t2v = sum_i w_word_i * max_j A_ij        v2t = sum_j w_frame_j * max_i A_ij
    S = (t2v + v2t) / 2

Official detail kept: padded words/frames enter A as 0 (the mask multiplies A), not as
-inf, so a padded entry competes in the max with value 0.
"""

from __future__ import annotations

import torch
from torch import nn

MASK_FILL = -9e15


def _weight_mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(inplace=True), nn.Linear(2 * width, 1))


class TokenWiseSimilarity(nn.Module):
    def __init__(self, *, width: int = 512, chunk_size: int = 256):
        super().__init__()
        self.text_weight_fc = _weight_mlp(width)
        self.video_weight_fc = _weight_mlp(width)
        self.chunk_size = chunk_size

    def weights(self, feat: torch.Tensor, mask: torch.Tensor, fc: nn.Module) -> torch.Tensor:
        logit = fc(feat).squeeze(-1)
        logit = logit.masked_fill(mask == 0, MASK_FILL)
        return torch.softmax(logit, dim=-1)

    def prepare_text(self, text_feat, text_mask):
        """(normalised masked token features, token weights): reusable across galleries."""
        w = self.weights(text_feat, text_mask, self.text_weight_fc)
        t = text_feat / text_feat.norm(dim=-1, keepdim=True)
        return t * text_mask.to(t.dtype).unsqueeze(-1), w

    def prepare_video(self, video_feat, video_mask):
        w = self.weights(video_feat, video_mask, self.video_weight_fc)
        v = video_feat / video_feat.norm(dim=-1, keepdim=True)
        return v * video_mask.to(v.dtype).unsqueeze(-1), w

    @staticmethod
    def combine(t, tw, v, vw) -> torch.Tensor:
        """S [Nt,Nv] from prepared text (t [Nt,L,D], tw [Nt,L]) and video (v [Nv,T,D], vw [Nv,T])."""
        # masking t and v by their masks equals multiplying A by both masks (A is bilinear)
        a = torch.einsum("atd,bvd->abtv", t, v)
        t2v = torch.einsum("abt,at->ab", a.max(dim=-1).values, tw)
        v2t = torch.einsum("abv,bv->ab", a.max(dim=-2).values, vw)
        return (t2v + v2t) / 2.0

    def forward(self, text_feat, text_mask, video_feat, video_mask) -> torch.Tensor:
        """S [Nt,Nv]; computed in blocks so [Nt,Nv,L,T] never exists for large galleries."""
        t, tw = self.prepare_text(text_feat, text_mask)
        v, vw = self.prepare_video(video_feat, video_mask)
        n = self.chunk_size
        if t.shape[0] <= n and v.shape[0] <= n:
            return self.combine(t, tw, v, vw)
        rows = []
        for i in range(0, t.shape[0], n):
            rows.append(torch.cat([self.combine(t[i:i + n], tw[i:i + n], v[j:j + n], vw[j:j + n])
                                   for j in range(0, v.shape[0], n)], dim=1))
        return torch.cat(rows, dim=0)
