"""The query-candidate denoisers' sampling path: a DDIM step at the cost floor.

A sampler calls the denoiser 50 times on the same features. Here everything that is
linear in the candidates leaves the step loop (DIFFUSIONRET.md section 3; notation: c the
step embedding, p_k candidate k's representation -- the pooled video for t2v, the text
for v2t -- and w = softmax_K(logits + x_t)):

- Eq. 5's logits are bilinear, q.k = (Wq(a + c)).(Wk(p_k + c)), so for every step index
  they are a fixed [B,K] table, built once per chunk with one [B*K, D] x [D, S] product
  (S = the steps the sampler uses): ``logit_table`` [S,B,K];
- Eq. 6's h = Wp(sum_k w_k Wv(p_k + c)) + bp is linear in sum_k w_k p_k (the weights
  sum to 1), and so is the decoder's first layer on it, W1_h h. With M = W1_h Wp Wv,
  W1_h h = sum_k w_k (M p_k) + W1_h (Wp Wv c + bp): ``mv`` [B,K,2D] once per chunk and
  ``neg_u_table`` [S,2D] (negated, see :func:`step`) once per gallery;
- the decoder's candidate half, W1_c p_k, is step-invariant: ``dec`` [B,K,2D] (its bias
  b1 joins ``neg_u_table``).

What remains per step: a lookup, a K-wide softmax, one [K] x [K,2D] product, and one
elementwise maximum over [K,2D] with its dot with the last layer, per query (the ReLU
folded into the maximum, see :func:`step`). Candidate-only work (v2t: the
texts' projections) is done once per gallery item, not once per (query, candidate); for
t2v, when more (query, candidate) pairs will follow than the gallery has frames, each
frame is projected once and the projections pooled per pair (pooling is linear).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from diffret_cli.sdk import DenoiserContext


@dataclass
class Gallery:
    """What a denoiser computes once per gallery for sampling: the features themselves,
    per-step tables (row s = step index s) and per-item tables."""

    direction: str
    text: torch.Tensor  # [N,D]
    video: torch.Tensor  # [M,T,D]
    video_mask: torch.Tensor  # [M,T]
    num_steps: int  # the tables cover step indices 0 .. num_steps - 1
    tables: dict[str, torch.Tensor] = field(default_factory=dict)


def _gather_rows(gallery: Gallery, source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``source[index]``; on CPU without gradients into a buffer the gallery keeps, since
    a fresh [B,K,T,D] block per chunk (50 MB at the official shapes) is mapped and
    faulted in by the allocator every time. Valid until the next call."""
    if source.device.type != "cpu" or torch.is_grad_enabled():
        return source[index]
    n = index.numel() * source[0].numel()
    buf = gallery.tables.get("_gather")
    if buf is None or buf.numel() < n or buf.dtype != source.dtype:
        buf = gallery.tables["_gather"] = source.new_empty(n)
    out = buf[:n].view(index.numel(), *source.shape[1:])
    torch.index_select(source, 0, index.reshape(-1), out=out)
    return out.view(*index.shape, *source.shape[1:])


def is_folded(ctx: DenoiserContext) -> bool:
    return "logit_table" in ctx.tensors


def _weights(den):
    w1_h, w1_c, b1 = den.decoder_split()
    return den.q_proj.weight, den.k_proj.weight, den.v_proj.weight, w1_h, w1_c, b1


def step_tables(den, n: int) -> dict[str, torch.Tensor]:
    """What depends only on the weights and the step indices 0 .. n-1 (row s = step s).

    At inference (no gradients) the result is kept on the denoiser and reused while its
    parameters are unchanged (same storage, same version counters), so a gallery of many
    chunks, or many galleries, pays for it once."""
    params = list(den.parameters())
    # inference tensors (weights created under torch.inference_mode) have no version
    # counter: then nothing is cached
    cacheable = not torch.is_grad_enabled() and not any(p.is_inference() for p in params)
    key = (n, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)) if cacheable else None
    cache = getattr(den, "_step_tables", None)
    if cacheable and cache is not None and cache[0] == key:
        return cache[1]
    wq, wk, wv, w1_h, w1_c, b1 = _weights(den)
    c = den.embed_timestep(torch.arange(n, device=wq.device))  # [S,D]: every step index the sampler may use
    cq, ck, cv = F.linear(c, wq), F.linear(c, wk), F.linear(c, wv)
    m = w1_h @ (den.proj.weight @ wv)  # [2D,D]: M = W1_h Wp Wv
    tables = {
        # W1_h (Wp Wv c + bp) + b1 [S,2D]: the decoder's first bias rides with the query term
        "neg_u": F.linear(F.linear(cv, den.proj.weight, den.proj.bias), w1_h, b1).neg(),
        "qkc": (cq * ck).sum(-1),  # (Wq c).(Wk c) [S]
        "w1_c": w1_c, "m": m,
        "r": cq @ wk,  # Wk^T Wq c [S,D]: p . r_s = (Wq c).(Wk p)   (t2v)
        "y": ck @ wq,  # Wq^T Wk c [S,D]: p . y_s = (Wq p).(Wk c)   (v2t)
        "ck": ck, "cq": cq,
    }
    if cacheable:
        den._step_tables = (key, tables)
    return tables


def prepare_gallery(den, text, video, video_mask, *, timesteps, pairs: int | None = None) -> Gallery:
    steps = [int(s) for s in timesteps]
    if not steps or min(steps) < 0:
        raise ValueError(f"timesteps must be non-empty step indices >= 0, got {timesteps!r}")
    n = max(steps) + 1
    tables = dict(step_tables(den, n))
    if den.direction == "v2t":  # candidates are texts: their projections, once per text
        kt = F.linear(text, den.k_proj.weight)  # [N,D]
        tables["z"] = kt @ den.q_proj.weight  # Wq^T Wk text [N,D]: pooled . z = (Wq pooled).(Wk text)
        tables["e"] = kt @ tables["cq"].t() + tables["qkc"]  # (Wq c).(Wk text) + (Wq c).(Wk c) [N,S]
        tables["dec"] = F.linear(text, tables["w1_c"])  # W1_c text [N,2D]
        tables["mv"] = F.linear(text, tables["m"])  # M text [N,2D]
    elif pairs is not None and pairs >= video.shape[0] * video.shape[1]:
        # more (query, candidate) pairs than frames: project each frame once (pooling is
        # linear, so W pooled = sum_t a_t (W f_t)), then pool the projections per pair
        w = torch.cat([tables["w1_c"], tables["m"], tables["r"]])  # [4D+S, D]
        tables["frames_proj"] = F.linear(video.reshape(-1, video.shape[-1]), w)  # [M*T, 4D+S]
    return Gallery(den.direction, text, video, video_mask, n, tables)


def prepare_chunk(den, gallery: Gallery, query_index, cand_index) -> DenoiserContext:
    if gallery.direction != den.direction:
        raise ValueError(f"a {gallery.direction} gallery given to the {den.direction} denoiser")
    tb, d = gallery.tables, den.width
    b, k = cand_index.shape
    if den.direction == "t2v":
        text = gallery.text[query_index]  # [B,D]
        frames = _gather_rows(gallery, gallery.video, cand_index)  # [B,K,T,D]
        # Eq. 4, in the official einsum's summation order (the softmax magnifies rounding)
        attn = den.frame_attention(torch.einsum("bd,bktd->bkt", text, frames), gallery.video_mask[cand_index])
        q = F.linear(text, den.q_proj.weight)  # Wq text [B,D]
        r = q @ den.k_proj.weight  # Wk^T Wq text: pooled . r = (Wq text).(Wk pooled)
        if "frames_proj" in tb:  # pool the projected frames: [W1_c p | M p | p . r_s] per pair
            nf = frames.shape[2]
            rows = (cand_index.unsqueeze(-1) * nf + torch.arange(nf, device=cand_index.device)).view(b * k, nf)
            proj = F.embedding_bag(rows, tb["frames_proj"], per_sample_weights=attn.reshape(b * k, nf),
                                   mode="sum").view(b, k, -1)
            # separate contiguous copies: every step reads them, strided reads cost more
            dec, mv = proj[..., : 2 * d].contiguous(), proj[..., 2 * d: 4 * d].contiguous()
            by_step = proj[..., 4 * d:]
            by_query = (attn * torch.einsum("bd,bktd->bkt", r, frames)).sum(-1, keepdim=True)
        else:
            pooled = torch.einsum("bkt,bktd->bkd", attn, frames)  # [B,K,D]
            dec, mv = F.linear(pooled, tb["w1_c"]), F.linear(pooled, tb["m"])  # [B,K,2D] each
            by_step = F.linear(pooled, tb["r"])  # (Wq c).(Wk pooled) [B,K,S]
            by_query = torch.bmm(pooled, r.unsqueeze(-1))  # (Wq text).(Wk pooled) [B,K,1]
        # + (Wq text).(Wk c) + (Wq c).(Wk c)
        table = by_step + by_query + (F.linear(q, tb["ck"]) + tb["qkc"]).unsqueeze(1)
    else:
        frames = gallery.video[query_index]  # [B,T,D]
        text = gallery.text[cand_index]  # [B,K,D]
        attn = den.frame_attention(torch.einsum("bkd,btd->bkt", text, frames),
                                   gallery.video_mask[query_index].unsqueeze(1))  # Eq. 4, [B,K,T]
        pooled = torch.einsum("bkt,btd->bkd", attn, frames)  # the query video pooled per candidate text [B,K,D]
        dec, mv = tb["dec"][cand_index], tb["mv"][cand_index]
        table = ((pooled * tb["z"][cand_index]).sum(-1, keepdim=True) + F.linear(pooled, tb["y"])
                 + tb["e"][cand_index])
    if den.scale_logits:
        table = table / math.sqrt(d)
    return DenoiserContext({
        "logit_table": table.permute(2, 0, 1).contiguous(),  # [S,B,K]: row s = the logits at step s
        "neg_u_table": tb["neg_u"],
        "dec": dec,
        "mv": mv,
    }, state_shape=(b, k))


#: queries per block of the per-step decoder on CPU: a block's [K,2D] tensors stay in
#: cache between the two passes over them (maximum, then the last layer); one block on GPU
CPU_BLOCK = 16


def _logits_at(c: dict, t: torch.Tensor, b: int) -> torch.Tensor:
    """Row ``t[i]`` of query i's logits: one gather from the [S*B,K] view of the table
    (the row indices are kept on the context: a fresh arange per step costs as much)."""
    rows = c.get("_rows")
    if rows is None or rows.device != t.device:
        rows = c["_rows"] = torch.arange(b, device=t.device)
    table = c["logit_table"]
    return torch.index_select(table.view(-1, table.shape[-1]), 0, t * b + rows)


def step(den, x_t, t, ctx: DenoiserContext) -> torch.Tensor:
    """One model call on a folded context: equals the explicit step within rounding.

    The decoder's hidden layer is relu(a_k + u) with a_k = W1_c p_k (per candidate, fixed)
    and u = W1_h h + b1 (per query and step). Since relu(a + u) = max(a, -u) + u,
    w2 . relu(a_k + u) = w2 . max(a_k, -u) + w2 . u: the [B,K,2D] block takes one
    elementwise pass and one reduction per step instead of an add, a ReLU and a reduction
    (with the weighted sum over ``mv``, these passes are most of a step's cost; each runs
    at about the speed of a copy)."""
    c = ctx.tensors
    b = x_t.shape[0]
    weight = torch.softmax(_logits_at(c, t, b) + x_t, dim=-1)  # Eq. 5
    # -(W1_h h + b1) = -(sum_k w_k (M p_k) + W1_h (Wp Wv c + bp) + b1)  (Eq. 6 and the decoder's
    # first layer), negated in the same product: the maximum below takes -u
    neg_u_c = torch.index_select(c["neg_u_table"], 0, t).unsqueeze(1)  # [B,1,2D]
    neg_u = torch.baddbmm(neg_u_c, weight.unsqueeze(1), c["mv"], alpha=-1)  # [B,1,2D]
    out = den.decoder[2]
    w2 = out.weight[0]
    per_query = torch.addmv(out.bias, neg_u.squeeze(1), w2, alpha=-1)  # w2 . u + b2 [B]
    if x_t.device.type != "cpu" or torch.is_grad_enabled():
        per_cand = torch.matmul(torch.maximum(c["dec"], neg_u), w2)  # w2 . max(a_k, -u) [B,K]
    else:
        # one scratch buffer for the [block,K,2D] maxima of every step: a fresh one per
        # step costs more than the step (the CPU allocator maps and faults in large blocks)
        scratch = c.get("_scratch")
        if scratch is None or scratch.dtype != c["dec"].dtype:
            scratch = c["_scratch"] = torch.empty((min(CPU_BLOCK, b),) + tuple(c["dec"].shape[1:]),
                                                  dtype=c["dec"].dtype)
        per_cand = x_t.new_empty(x_t.shape)
        for i in range(0, b, CPU_BLOCK):
            j = slice(i, i + CPU_BLOCK)
            top = torch.maximum(c["dec"][j], neg_u[j], out=scratch[: neg_u[j].shape[0]])
            torch.matmul(top, w2, out=per_cand[j])
    return per_cand.add_(per_query.unsqueeze(1)).add_(weight)
