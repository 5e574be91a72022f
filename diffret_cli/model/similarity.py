"""Token-wise weighted interaction, "WTI" (DiffusionRet paper Eq. 10, from DRL).

A = cos(word_i, frame_j) for every word and frame. Each word gets a weight from a small
MLP (softmax over the valid words), each frame likewise:

    t2v = sum_i w_word_i * max_j A_ij        v2t = sum_j w_frame_j * max_i A_ij
    S = (t2v + v2t) / 2

Official detail kept: padded words/frames enter A as 0 (the mask multiplies A), not as
-inf, so a padded entry competes in the max with value 0.

Two ways to compute S, equal within float32 rounding:

- :meth:`TokenWiseSimilarity.combine` on all L token slots: the training path (a small
  [B,B] batch, with gradients);
- :func:`wti_scores`, over valid tokens only: texts are grouped by their number of valid
  tokens, so each group is one dense [n*L_valid, D] x [D, N_video*T] product. Padding is
  more than half of the 32 text slots in MSRVTT, so this does less than half the work.
  A padded word's weight is exactly 0 and its row of A is 0, so dropping it changes S
  only through the max over words, which then competes with 0 (``clamp_min(0)``) when
  the text has padding. ``forward`` uses it whenever no gradient is needed.

The weight MLPs are frozen after stage 1: :meth:`prepare_text` / :meth:`prepare_video`
compute them once per text/video (valid tokens only), and their outputs can be cached
with the features and scored later with :func:`wti_scores`.
"""

from __future__ import annotations

import torch
from torch import nn

MASK_FILL = -9e15
#: entries of one block of A in :func:`wti_scores` (about 64 MB in float32)
BLOCK_ELEMENTS = 1 << 24


def _weight_mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(inplace=True), nn.Linear(2 * width, 1))


class TokenWiseSimilarity(nn.Module):
    def __init__(self, *, width: int = 512, chunk_size: int = 256):
        super().__init__()
        self.text_weight_fc = _weight_mlp(width)
        self.video_weight_fc = _weight_mlp(width)
        self.chunk_size = chunk_size

    def weights(self, feat: torch.Tensor, mask: torch.Tensor, fc: nn.Module) -> torch.Tensor:
        """Masked softmax of the MLP's logits. The MLP runs on valid tokens only (a padded
        token's logit is replaced by MASK_FILL anyway)."""
        valid = mask != 0
        logit = feat.new_full(mask.shape, MASK_FILL)
        if valid.all():
            logit = fc(feat).squeeze(-1)
        else:
            logit = logit.masked_scatter(valid, fc(feat[valid]).squeeze(-1))
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
        """S [Nt,Nv]. Without gradients: :func:`wti_scores` (valid tokens only). With
        them: :meth:`combine` in blocks so [Nt,Nv,L,T] never exists for large galleries."""
        t, tw = self.prepare_text(text_feat, text_mask)
        v, vw = self.prepare_video(video_feat, video_mask)
        if not (torch.is_grad_enabled() and (t.requires_grad or v.requires_grad)):
            return wti_scores(t, tw, text_mask, v, vw)
        n = self.chunk_size
        if t.shape[0] <= n and v.shape[0] <= n:
            return self.combine(t, tw, v, vw)
        rows = []
        for i in range(0, t.shape[0], n):
            rows.append(torch.cat([self.combine(t[i:i + n], tw[i:i + n], v[j:j + n], vw[j:j + n])
                                   for j in range(0, v.shape[0], n)], dim=1))
        return torch.cat(rows, dim=0)


def wti_scores(t: torch.Tensor, tw: torch.Tensor, text_mask: torch.Tensor, v: torch.Tensor,
               vw: torch.Tensor, *, block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """S [Nt,Nv] (Eq. 10) over each text's valid tokens only.

    ``t`` [Nt,L,D], ``tw`` [Nt,L] from :meth:`TokenWiseSimilarity.prepare_text` with its
    ``text_mask`` [Nt,L]; ``v`` [Nv,T,D], ``vw`` [Nv,T] from ``prepare_video`` (padded
    frames are zero rows there, so they stay: they compete in the max over frames with 0,
    as in the official code, and their weight is 0).
    """
    nt, slots, d = t.shape
    nv, nf, _ = v.shape
    out = t.new_zeros(nt, nv)
    if nt == 0 or nv == 0:
        return out
    frames = v.reshape(nv * nf, d)
    # one buffer for every block of A without gradients (a fresh 64 MB block per product
    # is mapped and faulted in by the allocator each time on CPU)
    reuse = not (torch.is_grad_enabled() and (t.requires_grad or v.requires_grad))
    buffer = t.new_empty(min(block_elements, nt * slots * nv * nf)) if reuse else None
    valid = text_mask != 0
    counts = valid.sum(dim=1)
    # valid slots first, in their order (a stable sort of the mask), wherever they sit
    order = torch.sort(valid.to(torch.int8), dim=1, descending=True, stable=True).indices
    for n_valid in torch.unique(counts).tolist():
        if n_valid == 0:
            continue  # every word padded: A is 0, both sums are 0 (the official value)
        rows = (counts == n_valid).nonzero().squeeze(1)
        pos = order[rows, :n_valid]  # [n,L']
        words = t[rows.unsqueeze(1), pos].reshape(-1, d)  # [n*L', D]
        weights = tw[rows.unsqueeze(1), pos]  # [n,L']
        padded = n_valid < slots  # then a padded word's 0 takes part in the max over words
        step = max(1, block_elements // (words.shape[0] * nf))
        for j in range(0, nv, step):
            cols = slice(j, min(j + step, nv))
            block = frames[cols.start * nf:cols.stop * nf]
            if buffer is not None and words.shape[0] * block.shape[0] <= buffer.numel():
                a = torch.mm(words, block.t(), out=buffer[: words.shape[0] * block.shape[0]].view(words.shape[0], -1))
            else:
                a = words @ block.t()
            a = a.view(len(rows), n_valid, -1, nf)
            t2v = torch.einsum("nlb,nl->nb", a.amax(dim=-1), weights)
            best = a.amax(dim=1)  # [n,b,T]
            if padded:
                best = best.clamp_min(0.0)
            v2t = torch.einsum("nbf,bf->nb", best, vw[cols])
            out[rows, cols] = (t2v + v2t) / 2.0
    return out
