"""The official code's evaluation and stage-2 step, re-implemented as baselines.

The official DiffusionRet code cannot run here (it needs its own CLIP build, NCCL and
the legacy launcher), so the bench scripts time these re-implementations of its loops in
the same process, on the same features and weights as diffret. They follow the facts of
DIFFUSIONRET.md (sections 2-5) and the structure of the official code as its eval.py and
modeling.py run it (written in our own words):

- similarity: texts and videos split into blocks of ``t2v_num`` = 32; for every pair of
  blocks both weight MLPs run again, features are normalised, the full [32,32,L,T]
  cosine tensor over all 32 word slots is formed and multiplied by both masks, and the
  block goes to numpy;
- re-ranking: per block of 32 queries, each query's top K in a Python loop, candidates
  stacked one by one, a DDIM loop whose model call recomputes everything (the frame
  pooling and every projection, :func:`naive_forward`), and the bonus added entry by
  entry;
- stage 2: the similarity over the batch (weight MLPs included), softmax weights with
  same-video entries set to -1, a Python loop of ``topk`` and stacking per query for
  both directions, then each denoiser's forward on B x K gathered candidates.

The denoiser forward is bench_ddim's :func:`naive_forward`, which tests/test_parity.py
checks against the official module's recorded outputs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench_ddim import naive_forward


# ------------------------------------------------------------------------ similarity
def block_similarity(sim_module, tokens, text_mask, frames, frame_mask) -> torch.Tensor:
    """One block of the official WTI (Eq. 10), weight MLPs included, all word slots."""
    tmask, vmask = text_mask.float(), frame_mask.float()
    tw = sim_module.text_weight_fc(tokens).squeeze(2)
    tw = torch.softmax(tw.masked_fill((1 - tmask).bool(), -9e15), dim=-1)
    vw = sim_module.video_weight_fc(frames).squeeze(2)
    vw = torch.softmax(vw.masked_fill((1 - vmask).bool(), -9e15), dim=-1)
    t = tokens / tokens.norm(dim=-1, keepdim=True)
    v = frames / frames.norm(dim=-1, keepdim=True)
    a = torch.einsum("atd,bvd->abtv", t, v)
    a = torch.einsum("abtv,at->abtv", a, tmask)
    a = torch.einsum("abtv,bv->abtv", a, vmask)
    t2v = torch.einsum("abt,at->ab", a.max(dim=-1).values, tw)
    v2t = torch.einsum("abv,bv->ab", a.max(dim=-2).values, vw)
    return (t2v + v2t) / 2.0


@torch.no_grad()
def official_similarity(sim_module, tokens, text_mask, frames, frame_mask, *, mini_batch: int = 32) -> torch.Tensor:
    rows = []
    for tb, mb in zip(torch.split(tokens, mini_batch), torch.split(text_mask, mini_batch)):
        row = [block_similarity(sim_module, tb, mb, vb, vmb).cpu().numpy()
               for vb, vmb in zip(torch.split(frames, mini_batch), torch.split(frame_mask, mini_batch))]
        rows.append(np.concatenate(row, axis=-1))
    return torch.from_numpy(np.concatenate(rows, axis=0)).to(tokens.device)


# ----------------------------------------------------------------------- re-ranking
@torch.no_grad()
def official_rerank_direction(scores, *, direction, denoiser, sampler, cls, frames, frame_mask, topk, noise,
                              alpha: float = 1.0, tau: float = 1.0, mini_batch: int = 32) -> torch.Tensor:
    """``scores`` [Q,G] (texts x videos for t2v, videos x texts for v2t); ``noise`` [Q,K]:
    the start of each query's chain (so that diffret's output can be compared)."""
    out = []
    for start, block in zip(range(0, scores.shape[0], mini_batch), torch.split(scores.clone(), mini_batch)):
        ids, cand_feats, cand_masks = [], [], []
        for b in range(block.shape[0]):
            _, idx = block[b].topk(topk, largest=True, sorted=True)
            ids.append(idx)
            if direction == "t2v":
                cand_feats.append(torch.stack([frames[i] for i in idx]))
                cand_masks.append(torch.stack([frame_mask[i] for i in idx]))
            else:
                cand_feats.append(torch.stack([cls[i] for i in idx]))
        rows = slice(start, start + block.shape[0])
        if direction == "t2v":
            args = (cls[rows], torch.stack(cand_feats), torch.stack(cand_masks))
        else:
            args = (torch.stack(cand_feats), frames[rows], frame_mask[rows])
        sample = sampler.sample(lambda x, t: naive_forward(denoiser, x, t, *args), noise[rows]).sample
        sample = F.softmax(sample * tau, dim=-1)
        for i in range(block.shape[0]):
            for j_, j in enumerate(ids[i]):
                block[i, j] += sample[i, j_] * alpha
        out.append(block)
    return torch.cat(out)


# -------------------------------------------------------------------------- stage 2
def official_stage2_loss(sim_module, denoiser_t2v, denoiser_v2t, coef, *, tokens, text_mask, cls, frames,
                         frame_mask, video_ids, num: int, t, noise_t2v, noise_v2t, d_temp: float = 100.0):
    """The official stage-2 forward from cached features: (loss, candidates t2v, v2t).

    Candidates: the positive, then ``num`` hardest by the stage-1 similarity's softmax
    with same-video entries set to -1, chosen and stacked one query at a time."""
    with torch.no_grad():  # everything from stage 1 is frozen
        logits = block_similarity(sim_module, tokens, text_mask, frames, frame_mask)
    same = video_ids[:, None] == video_ids[None, :]
    w_t2v = F.softmax(logits, dim=1).masked_fill(same, -1)
    w_v2t = F.softmax(logits.t(), dim=1).masked_fill(same, -1)
    video_neg, mask_neg, text_neg, cand_v, cand_t = [], [], [], [], []
    for b in range(w_t2v.shape[0]):
        _, idx = w_t2v[b].topk(num, largest=True, sorted=True)
        cand_v.append(torch.cat([torch.tensor([b], device=idx.device), idx]))
        video_neg.append(torch.stack([frames[b]] + [frames[i] for i in idx]))
        mask_neg.append(torch.stack([frame_mask[b]] + [frame_mask[i] for i in idx]))
    for b in range(w_v2t.shape[0]):
        _, idx = w_v2t[b].topk(num, largest=True, sorted=True)
        cand_t.append(torch.cat([torch.tensor([b], device=idx.device), idx]))
        text_neg.append(torch.stack([cls[b]] + [cls[i] for i in idx]))
    video_neg, mask_neg, text_neg = torch.stack(video_neg), torch.stack(mask_neg), torch.stack(text_neg)
    b = cls.shape[0]
    x0 = torch.cat([torch.ones(b, 1), torch.zeros(b, num)], dim=1).to(cls.device)
    target = torch.zeros(b, dtype=torch.long, device=cls.device)
    loss = 0.0
    for den, noise, args in ((denoiser_t2v, noise_t2v, (cls, video_neg, mask_neg)),
                             (denoiser_v2t, noise_v2t, (text_neg, frames, frame_mask))):
        x_t = coef.q_sample(x0, t, noise)
        out = naive_forward(den, x_t, t, *args)
        loss = loss + F.cross_entropy(out * d_temp, target)  # what the paper calls KL
    return loss, torch.stack(cand_v), torch.stack(cand_t)
