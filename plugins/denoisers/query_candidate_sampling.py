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
folded into the maximum, see :func:`step`). On CPU without gradients that remainder
runs as one C loop per query (``query_candidate_step.c``, built by
:mod:`diffret_cli.native`), which reads ``mv`` and ``dec`` once per step; with torch ops
it is three passes and a scratch block, which stays as the fallback and the GPU path.

Candidate-only work (v2t: the texts' projections) is done once per gallery item, not
once per (query, candidate); for t2v, when more (query, candidate) pairs will follow
than the gallery has frames, each frame is projected once and the projections pooled
per pair (pooling is linear).
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from diffret_cli import native
from diffret_cli.sdk import DenoiserContext, uniform_step


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
        "w2": den.decoder[2].weight[0], "b2": den.decoder[2].bias,  # the decoder's last layer
    }, state_shape=(b, k))


#: queries per block of the per-step decoder on CPU: a block's [K,2D] maxima stay in
#: cache between the two passes over them (the maximum, then the last layer)
CPU_BLOCK = 16


def _logits_at(ctx: DenoiserContext, t: torch.Tensor, b: int) -> torch.Tensor:
    """Row ``t[i]`` of query i's logits: one gather from the [S*B,K] view of the table
    (the row indices are kept on the context: a fresh arange per step costs as much)."""
    rows = ctx.scratch.get("rows")
    if rows is None or rows.device != t.device:
        rows = ctx.scratch["rows"] = torch.arange(b, device=t.device)
    table = ctx.tensors["logit_table"]
    return torch.index_select(table.view(-1, table.shape[-1]), 0, t * b + rows)


@dataclass
class _CpuBuffers:
    """What the CPU step writes into at every step, allocated once per context: fresh
    [B,K,2D] blocks per step cost more than the step (the allocator maps and faults in
    large blocks), and per-block views made once save the slicing calls of 50 steps."""

    dec: torch.Tensor  # the context's a = W1_c p the blocks below are views of
    neg_u: torch.Tensor  # [B,1,2D]: -(W1_h h + b1) of the current step
    per_cand: torch.Tensor  # [B,K]: w2 . max(a_k, -u), before the per-query terms
    # per block of queries: (a = W1_c p [n,K,2D], -u [n,1,2D], maxima [n,K,2D], the maxima
    # as [n*K,2D] rows, their dot with w2 as [n*K]); the maxima share one scratch block
    blocks: list[tuple[torch.Tensor, ...]]

    @classmethod
    def for_context(cls, ctx: DenoiserContext, b: int) -> "_CpuBuffers":
        dec = ctx.tensors["dec"]
        found = ctx.scratch.get("cpu_buffers")
        if found is not None and found.dec is dec and found.per_cand.shape[0] == b:
            return found
        k, width = dec.shape[1], dec.shape[2]
        neg_u, per_cand = dec.new_empty(b, 1, width), dec.new_empty(b, k)
        scratch = dec.new_empty(min(CPU_BLOCK, b), k, width)
        blocks = []
        for i in range(0, b, CPU_BLOCK):
            n = min(CPU_BLOCK, b - i)
            top = scratch[:n]
            blocks.append((dec[i:i + n], neg_u[i:i + n], top, top.view(n * k, width), per_cand[i:i + n].view(-1)))
        ctx.scratch["cpu_buffers"] = found = cls(dec, neg_u, per_cand, blocks)
        return found


def step(den, x_t, t, ctx: DenoiserContext) -> torch.Tensor:
    """One model call on a folded context: equals the explicit step within rounding.

    The decoder's hidden layer is relu(a_k + u) with a_k = W1_c p_k (per candidate, fixed)
    and u = W1_h h + b1 (per query and step). Since relu(a + u) = max(a, -u) + u,
    w2 . relu(a_k + u) = w2 . max(a_k, -u) + w2 . u: the [B,K,2D] block takes one
    elementwise pass and one reduction per step instead of an add, a ReLU and a reduction
    (with the weighted sum over ``mv``, these passes are most of a step's cost; each runs
    at about the speed of a copy)."""
    if x_t.device.type == "cpu" and not torch.is_grad_enabled():
        return _cpu_step(x_t, t, ctx)
    c = ctx.tensors
    weight = torch.softmax(_logits_at(ctx, t, x_t.shape[0]) + x_t, dim=-1)  # Eq. 5
    # -(W1_h h + b1) = -(sum_k w_k (M p_k) + W1_h (Wp Wv c + bp) + b1)  (Eq. 6 and the decoder's
    # first layer), negated in the same product: the maximum below takes -u
    neg_u_c = torch.index_select(c["neg_u_table"], 0, t).unsqueeze(1)  # [B,1,2D]
    neg_u = torch.baddbmm(neg_u_c, weight.unsqueeze(1), c["mv"], alpha=-1)  # [B,1,2D]
    per_query = torch.addmv(c["b2"], neg_u.squeeze(1), c["w2"], alpha=-1)  # w2 . u + b2 [B]
    per_cand = torch.matmul(torch.maximum(c["dec"], neg_u), c["w2"])  # w2 . max(a_k, -u) [B,K]
    return per_cand.add_(per_query.unsqueeze(1)).add_(weight)


#: the fused CPU step in C (query_candidate_step.c), built on first use; see diffret_cli.native
KERNEL_NAME = "query_candidate_step"
_KERNEL_SOURCE = Path(__file__).with_name("query_candidate_step.c")
_P, _L = ctypes.c_void_p, ctypes.c_int64
_KERNEL_SIGNATURES = {"rerank_step": (None, [_L, _L, _L, _P, _P, _P, _P, _L, _P, _P, _P, _P, _L])}


@functools.cache
def _kernel_source() -> str | None:
    try:
        return _KERNEL_SOURCE.read_text(encoding="utf-8")
    except OSError:  # an install without its package data: the torch ops run
        return None


def native_kernel() -> native.Kernel | None:
    """The fused step kernel, or None where it cannot be built (or ``DIFFRET_NATIVE=0``)."""
    source = _kernel_source()
    return native.load(KERNEL_NAME, source, _KERNEL_SIGNATURES) if source is not None else None


def describe_step(device: str | torch.device) -> str:
    """One line for reports: what runs the re-ranking step on ``device`` in this process
    (the C kernel, or torch ops and why; always torch ops off the CPU)."""
    return native.describe(KERNEL_NAME) if torch.device(device).type == "cpu" else "torch ops"


def _native_step(kernel: native.Kernel, weight, neg_u_c, ctx: DenoiserContext) -> torch.Tensor | None:
    """The kernel's step, or None if a tensor is not the contiguous float32 it reads."""
    c = ctx.tensors
    mv, dec, w2, b2 = c["mv"], c["dec"], c["w2"], c["b2"]
    tensors = (mv, dec, w2, b2, weight, neg_u_c)
    if any(x.dtype != torch.float32 or not x.is_contiguous() for x in tensors):
        return None
    b, k, width = dec.shape
    if mv.shape != dec.shape or weight.shape != (b, k) or neg_u_c.shape not in ((width,), (b, width)):
        return None
    threads = max(1, min(torch.get_num_threads(), b))
    scratch = ctx.scratch.get("native_rows")
    if scratch is None or scratch.shape[0] < threads:
        scratch = ctx.scratch["native_rows"] = dec.new_empty(threads, width)
    out = torch.empty_like(weight)  # fresh: the sampler may keep every step's output
    row_stride = width if neg_u_c.dim() == 2 else 0  # a row per query, or one for all
    kernel.rerank_step(b, k, width, mv.data_ptr(), dec.data_ptr(), weight.data_ptr(), neg_u_c.data_ptr(),
                       row_stride, w2.data_ptr(), b2.data_ptr(), scratch.data_ptr(), out.data_ptr(), threads)
    return out


def _cpu_step(x_t, t, ctx: DenoiserContext) -> torch.Tensor:
    """:func:`step` on CPU without gradients: the same arithmetic, fused in C where the
    kernel builds (:func:`native_kernel`), else written into buffers kept on the context,
    the maxima a block of queries at a time. When every row is at one step (a sampler's
    chain), that step's table rows are views, not gathers."""
    c = ctx.tensors
    b = x_t.shape[0]
    s = uniform_step(t)
    if s is not None:
        if not 0 <= s < c["logit_table"].shape[0]:  # never a wrapped-around row
            raise IndexError(f"step {s} is outside this context's tables (0..{c['logit_table'].shape[0] - 1})")
        logits, neg_u_c = c["logit_table"][s], c["neg_u_table"][s]  # [B,K], [2D]
    else:
        logits, neg_u_c = _logits_at(ctx, t, b), torch.index_select(c["neg_u_table"], 0, t)  # [B,2D]
    weight = torch.softmax(logits + x_t, dim=-1)  # Eq. 5
    kernel = native_kernel()
    if kernel is not None:
        out = _native_step(kernel, weight, neg_u_c, ctx)
        if out is not None:
            return out
    if neg_u_c.dim() == 2:
        neg_u_c = neg_u_c.unsqueeze(1)  # [B,1,2D]
    buf = _CpuBuffers.for_context(ctx, b)
    torch.baddbmm(neg_u_c, weight.unsqueeze(1), c["mv"], alpha=-1, out=buf.neg_u)  # -u, as in step
    w2 = c["w2"]
    per_query = torch.addmv(c["b2"], buf.neg_u.view(b, -1), w2, alpha=-1)  # w2 . u + b2 [B]
    for dec, neg_u, top, top_rows, out in buf.blocks:
        torch.maximum(dec, neg_u, out=top)
        torch.mv(top_rows, w2, out=out)  # w2 . max(a_k, -u)
    # a fresh tensor: the sampler may keep every step's output (its trajectory)
    return torch.add(buf.per_cand, per_query.unsqueeze(1)).add_(weight)
