"""``diffret bench encode``: frames per second through the encoder's image tower.

The image tower is where evaluation and stage 1 spend most of their time (paper Table 4:
about 80% of inference is feature extraction). The encoder is the registered
``open_clip`` plugin with random weights (no download): by default CLIP ViT-B/32 on a GPU
and a small ViT on CPU, or any open_clip model name given. FLOPs per frame are counted by
torch's FLOP counter on one forward, so TFLOP/s is achieved throughput, not a datasheet
figure. The count runs with gradients enabled so that attention is not the fused
inference kernel, which the counter cannot see; it covers the convolution and every
matrix product except the attention scores (QK^T and AV, about 1-3% of a ViT's work).
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffret_cli.bench.timing import PeakMemory, environment, resolve_device, synchronize
from diffret_cli.errors import ConfigError
from diffret_cli.registry import create

#: a small ViT (4 layers, width 256, 224 px, patch 32) for CPU runs
SMALL_VIT = {
    "embed_dim": 256, "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 256, "patch_size": 32, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 512, "width": 256, "heads": 4, "layers": 1},
}
FULL_VIT = "ViT-B-32-quickgelu"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_encoder(model: str | None, device: torch.device):
    """``model``: an open_clip model name, "small" (:data:`SMALL_VIT`) or None (ViT-B/32
    on a GPU, "small" on CPU). Random weights."""
    name = model or (FULL_VIT if device.type == "cuda" else "small")
    if name == "small":
        return name, create("encoders", "open_clip", model="custom", model_config=SMALL_VIT, pretrained=None)
    return name, create("encoders", "open_clip", model=name, pretrained=None)


def bench_encode(*, batch: int = 64, device: str = "cpu", model: str | None = None, steps: int = 3,
                 warmup: int = 1, precision: str | None = None) -> dict:
    """Frames per second of ``encode_frames`` on ``batch`` frames per call, timed over
    ``steps`` calls after ``warmup``; ``precision`` fp32 / bf16 / fp16 (autocast; default
    fp32 on CPU, bf16 on a GPU)."""
    if batch < 1 or steps < 1:
        raise ValueError(f"batch and steps must be >= 1, got {batch}, {steps}")
    dev = resolve_device(device)
    precision = precision or ("bf16" if dev.type == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    name, enc = build_encoder(model, dev)
    enc = enc.to(dev).eval()
    size = enc.image_size
    frames = torch.randn(batch, 1, 3, size, size, device=dev)
    mask = torch.ones(batch, 1, dtype=torch.long, device=dev)
    dtype = PRECISIONS[precision]
    amp = torch.autocast(dev.type, dtype=dtype) if dtype is not None else nullcontext()

    def forward():
        with torch.inference_mode(), amp:
            return enc.encode_frames(frames, mask)

    with FlopCounterMode(display=False) as counter, torch.enable_grad(), amp:
        enc.encode_frames(frames, mask)  # unfused attention: its projections are counted
    flops = counter.get_total_flops()
    for _ in range(warmup):
        forward()
    with PeakMemory(dev) as mem:
        synchronize(dev)
        start = time.perf_counter()
        for _ in range(steps):
            forward()
        synchronize(dev)
        seconds = time.perf_counter() - start
    per_call = seconds / steps
    return {"benchmark": "encode", "model": name, "batch": batch, "image_size": size, "precision": precision,
            "steps": steps, "seconds_per_call": round(per_call, 5), "frames_per_s": round(batch / per_call, 2),
            "gflops_per_frame": round(flops / batch / 1e9, 4), "tflops": round(flops / per_call / 1e12, 4),
            "parameters_m": round(sum(p.numel() for p in enc.clip.visual.parameters()) / 1e6, 2),
            "peak_memory_mb": round(mem.megabytes, 1), "memory_kind": mem.kind, "environment": environment(dev)}
