"""The query-candidate denoisers on unique features plus indices (stage-2 training).

A stage-2 batch has B queries, each with K candidates drawn from the same batch (the
positive and its hardest negatives, K = B = 128 officially). The gathered inputs repeat
each video K times ([B,K,T,D] frames) and each text K times, and the denoiser then
projects B x K rows. Here each unique text and frame is projected once and the per-pair
quantities are formed from dot products (DIFFUSIONRET.md section 3; c = the step
embedding, one per query; p = a candidate's representation):

- Eq. 4 pooling weights a[b,m,t] for every (query, unique video/text) pair from one
  [B,D] x [D, M*T] product; a candidate's entries are gathered from it;
- Eq. 5 logits q.k are dot products of the query with each frame (t2v: (Wk^T q).f;
  v2t: f.(Wq^T Wk text)), so k is never formed per candidate;
- Eq. 6's sum_k w_k Wv(p_k + c) = Wv(sum_k w_k p_k + c) (the weights sum to 1), and the
  weighted sum of pooled videos is one [B, M*T] x [M*T, D] product;
- the decoder's candidate half W1_c p_k: t2v projects the M*T frames once and pools
  them per pair (pooling is linear); v2t projects the N texts once.

Values and gradients equal ``forward`` on the gathered features within float32 rounding
(tests/test_fast_paths.py). Per-pair work is done for every (query, unique item) pair,
so this pays off when the candidates cover most of the unique items (training: K = B).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def candidate_softmax(logits: torch.Tensor, candidate_mask: torch.Tensor | None) -> torch.Tensor:
    """Eq. 5's softmax over the K candidates (last dim), over the True slots of
    ``candidate_mask`` only (a masked slot gets weight 0 and no gradient)."""
    if candidate_mask is not None:
        logits = logits.masked_fill(~candidate_mask, float("-inf"))
    return torch.softmax(logits, dim=-1)


def _logit_scale(den, logits):
    return logits / math.sqrt(den.width) if den.scale_logits else logits


def _gather_pairs(x: torch.Tensor, cand_index: torch.Tensor) -> torch.Tensor:
    """x [B,M,...] per (query, item) -> [B,K,...] per (query, candidate)."""
    idx = cand_index.reshape(cand_index.shape + (1,) * (x.dim() - 2)).expand(*cand_index.shape, *x.shape[2:])
    return torch.gather(x, 1, idx)


def _decode(den, x_t, logits, val_sum, dec_items, cand_index, candidate_mask=None):
    """Eq. 5's softmax (given the weighted sum it feeds), Eq. 6 and the decoder.

    ``dec_items`` [B,M,2D] is W1_c p for every (query, unique item) pair. When there are
    no more items than candidate slots (training: M = K), the decoder runs on the pairs
    and its [B,M] output is gathered, so no [B,K,2D] tensor is gathered (nor scattered
    back in the backward pass); otherwise the pairs are gathered first."""
    weight = candidate_softmax(_logit_scale(den, logits) + x_t, candidate_mask)
    h = den.proj(val_sum(weight))
    w1_h, _, b1 = den.decoder_split()
    u = F.linear(h, w1_h, b1).unsqueeze(1)  # W1_h h + b1, shared by a query's candidates
    last = den.decoder[2]
    if dec_items.shape[1] <= cand_index.shape[1]:
        out = torch.gather(F.linear(torch.relu(dec_items + u), last.weight, last.bias).squeeze(-1), 1, cand_index)
    else:
        out = F.linear(torch.relu(_gather_pairs(dec_items, cand_index) + u), last.weight, last.bias).squeeze(-1)
    return out + weight


def forward_t2v(den, x_t, t, *, text, video, video_mask, query_index, cand_index, candidate_mask=None):
    b, k = cand_index.shape
    m, nf, d = video.shape
    cond = den.embed_timestep(t)  # [B,D]
    wq, wk, wv = den.q_proj.weight, den.k_proj.weight, den.v_proj.weight
    w1_c = den.decoder_split()[1]
    q_in = text[query_index]  # [B,D]
    q = F.linear(q_in + cond, wq)  # Wq(text + c)
    frames = video.reshape(m * nf, d)
    # one product: text.f (Eq. 4) and (Wk^T q).f (the pooled part of q.k) for every frame
    dots = (torch.cat([q_in, q @ wk]) @ frames.t()).view(2, b, m, nf)
    attn = den.frame_attention(dots[0], video_mask.unsqueeze(0))  # [B,M,T]
    attn_c = _gather_pairs(attn, cand_index)  # [B,K,T]
    logits = (attn_c * _gather_pairs(dots[1], cand_index)).sum(-1) + (q * F.linear(cond, wk)).sum(-1, keepdim=True)

    def val_sum(weight):  # sum_k w_k pooled_k = sum_{m,t} (sum_{k: c_k = m} w_k a[b,k,t]) f[m,t]
        per_frame = torch.zeros(b, m, nf, dtype=weight.dtype, device=weight.device)
        per_frame = per_frame.scatter_add(1, cand_index.unsqueeze(-1).expand(b, k, nf), weight.unsqueeze(-1) * attn_c)
        return F.linear(per_frame.view(b, m * nf) @ frames + cond, wv)

    # decoder half: W1_c pooled = sum_t a[b,m,t] (W1_c f[m,t]); frames projected once
    frames_dec = F.linear(video, w1_c)  # [M,T,2D]
    dec_items = torch.bmm(attn.transpose(0, 1), frames_dec).transpose(0, 1)  # [B,M,2D]
    return _decode(den, x_t, logits, val_sum, dec_items, cand_index, candidate_mask)


def forward_v2t(den, x_t, t, *, text, video, video_mask, query_index, cand_index, candidate_mask=None):
    b, k = cand_index.shape
    n, d = text.shape
    cond = den.embed_timestep(t)  # [B,D]
    wq, wk, wv = den.q_proj.weight, den.k_proj.weight, den.v_proj.weight
    w1_c = den.decoder_split()[1]
    frames = video[query_index]  # [B,T,D]
    nf = frames.shape[1]
    k_text = F.linear(text, wk)  # [N,D]
    z = k_text @ wq  # Wq^T Wk text: f.z = (Wq f).(Wk text)
    # one product: text.f (Eq. 4) and z.f for every (query frame, unique text)
    dots = (frames.reshape(b * nf, d) @ torch.cat([text, z]).t()).view(b, nf, 2, n).permute(2, 0, 3, 1)
    attn = den.frame_attention(dots[0], video_mask[query_index].unsqueeze(1))  # [B,N,T]
    attn_c = _gather_pairs(attn, cand_index)  # [B,K,T]
    kc = F.linear(cond, wk)
    qc = F.linear(cond, wq)
    f_y = torch.bmm(frames, (kc @ wq).unsqueeze(-1)).squeeze(-1)  # f.(Wq^T Wk c) [B,T]
    # q.k = (Wq pooled).(Wk text) + (Wq pooled).(Wk c) + (Wq c).(Wk text) + (Wq c).(Wk c)
    per_pair = (attn_c * (_gather_pairs(dots[1], cand_index) + f_y.unsqueeze(1))).sum(-1)
    logits = per_pair + torch.gather(qc @ k_text.t(), 1, cand_index) + (qc * kc).sum(-1, keepdim=True)

    def val_sum(weight):  # sum_k w_k text_k as one [B,N] x [N,D] product
        per_text = torch.zeros(b, n, dtype=weight.dtype, device=weight.device).scatter_add(1, cand_index, weight)
        return F.linear(per_text @ text + cond, wv)

    dec_items = F.linear(text, w1_c).unsqueeze(0).expand(b, -1, -1)  # texts projected once [B,N,2D]
    return _decode(den, x_t, logits, val_sum, dec_items, cand_index, candidate_mask)
