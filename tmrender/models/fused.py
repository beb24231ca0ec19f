"""Optional kernel fusion of the DiT's float32 elementwise chains, for GPUs.

Wan computes its modulation, norms, gates and RoPE in float32 around bf16 matmuls; run
eagerly, each is a chain of 3-8 memory-bound kernels over the whole token tensor (a large
share of a 14B denoising step on a GPU; timings in docs/). The pure functions below are
marked `@fusable`; `enable_fusion()` makes every marked function run as its
`torch.compile` version (one fused kernel each, compiled on first use per shape family).
Fusion is off by default, so CPU renders and the tests run the eager functions exactly.
Whole blocks are not compiled: their per-layer arguments (layer index, cache tuples) would
make dynamo recompile per block and fall back to eager past its cache limit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

Fn = TypeVar("Fn", bound=Callable)
_state = {"enabled": False}


def enable_fusion(enabled: bool = True) -> None:
    """Switch the `@fusable` functions to their compiled versions (process-wide)."""
    _state["enabled"] = enabled


def fusable(fn: Fn) -> Fn:
    """Mark a pure tensor function for fusion by `enable_fusion`."""
    compiled: list[Callable] = []

    @functools.wraps(fn)
    def dispatch(*args):
        if not _state["enabled"]:
            return fn(*args)
        if not compiled:
            compiled.append(torch.compile(fn, fullgraph=True, dynamic=True))
        return compiled[0](*args)

    return dispatch  # type: ignore[return-value]


@fusable
def modulated_norm(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """Wan's adaLN: LayerNorm(x) * (1 + scale) + shift in float32, back to x's dtype.
    x (..., dim); shift, scale broadcast to x (float32)."""
    normed = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    return (normed * (1 + scale) + shift).to(x.dtype)


@fusable
def gated_residual(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """x + y * gate, the product in float32 (Wan). x, y (..., dim); gate broadcasts."""
    return x + (y.float() * gate).to(x.dtype)


@fusable
def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Wan's RMSNorm in float32: x / rms(x) * weight, in x's dtype. x (..., dim)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return xf.type_as(x) * weight


@fusable
def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on adjacent pairs in float32. x (B, L, H, d); cos, sin (L, d / 2) -> x's shape
    and dtype."""
    b, n, h, d = x.shape
    re, im = x.float().reshape(b, n, h, d // 2, 2).unbind(-1)
    cos, sin = cos[None, :, None], sin[None, :, None]
    out = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)
    return out.reshape(b, n, h, d).to(x.dtype)
