"""Attention layers of the DiT (Wan2.1 parameter names) and the three self-attention modes.

Layers, tokens `(B, L, dim)`:
- `SelfAttention`: q, k, v, o, norm_q, norm_k (RMSNorm over the full width, as Wan).
- `CrossAttention`: Wan's text cross-attention, plus k_img / v_img / norm_k_img for the
  CLIP image tokens of Wan I2V; its K/V depend only on the context, so they are computed
  once per render (`kv`) and reused by every chunk.
- `AudioCrossAttention`: new for audio. Latent frame j's tokens attend only to latent frame
  j's audio tokens (the batch is reshaped to `B * T` frames), the result is multiplied by a
  face gate over the token grid, and `o` starts at zero so a converted model starts as its
  base.

Self-attention modes (one module, the "plan" object decides which keys a query sees):
- `FullPlan` (a): bidirectional over all tokens (teacher).
- `BlockCausalPlan` (b): a whole clip `[anchor | chunk 1 | chunk 2 | ...]`; chunk k sees the
  anchor, chunk k-1 and itself through a boolean block mask given to
  `scaled_dot_product_attention`.
- `CachedPlan` (c): one chunk; keys = cached anchor K/V + cached previous chunk K/V + its own,
  read from the stream's preallocated `KVWindow` (written in place, no per-chunk allocation)
  when autograd is off, concatenated otherwise.

RoPE positions are window-relative (see `tmrender.models.dit`): a key of chunk k-1 seen by
chunk k is rotated at the "previous" slot, while chunk k-1's own queries used the "current"
slot. Plan (b) therefore appends a second, differently rotated copy of each chunk's keys
(visible only to the next chunk) so that (b) and (c) compute the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tmrender.models.fused import rms_norm
from tmrender.models.rope import Rope

KV = tuple[Tensor, Tensor]  # keys and values, each (B, L, heads, head_dim)


class RMSNorm(nn.Module):
    """Wan's RMSNorm: x / rms(x) * weight, computed in float32. x: (..., dim)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class LayerNorm(nn.LayerNorm):
    """Wan's LayerNorm: computed in float32, affine only when asked. x: (..., dim)."""

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = False) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax attention. q (B, Lq, H, d), k/v (B, Lk, H, d), mask (Lq, Lk) bool (True =
    may attend) or None -> (B, Lq, H * d)."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2).flatten(2)


# ---- self-attention plans --------------------------------------------------------------


@dataclass(frozen=True)
class FullPlan:
    """(a) Bidirectional: every token sees every token. rope: all L tokens."""

    rope: Rope

    def assemble(self, layer: int, q: Tensor, k: Tensor, v: Tensor):
        return self.rope.apply(q), self.rope.apply(k), v, None


@dataclass(frozen=True)
class BlockCausalPlan:
    """(b) Sparse causal over a whole clip (training).

    rope: the L tokens at their "current" positions; prev_rope: the tokens of chunks
    1..K-1 at the "previous" slot, which are `prev_tokens` (a slice of the sequence);
    mask: (L, L + prev_len) bool over [current keys | previous-slot copies].
    """

    rope: Rope
    prev_rope: Rope
    prev_tokens: slice
    mask: Tensor

    def assemble(self, layer: int, q: Tensor, k: Tensor, v: Tensor):
        keys = torch.cat((self.rope.apply(k), self.prev_rope.apply(k[:, self.prev_tokens])), 1)
        values = torch.cat((v, v[:, self.prev_tokens]), dim=1)
        return self.rope.apply(q), keys, values, self.mask


class KVWindow:
    """Preallocated self-attention window of one stream: per layer, keys and values
    `[anchor | previous chunk | current chunk]` in buffers of the full window size, each
    (B, anchor_len + 2 * chunk_len, H, d), allocated once and written in place.

    The anchor is written once, the previous chunk at each commit (`write_prev`, which
    bumps `generation`: states made before it are stale) and the current chunk at every
    evaluation (`write_current`). Only used outside autograd: an in-place write would
    invalidate tensors that a backward pass saved.
    """

    def __init__(self, anchor: tuple[KV, ...], chunk_len: int) -> None:
        """Allocate (not fill: `write(anchor, 0)`) the buffers for anchor: per layer
        (k rotated, v), each (B, anchor_len, H, d); chunk_len: tokens of a chunk (C * S)."""
        self.anchor_len = anchor[0][0].shape[1]
        self.chunk_len = chunk_len
        self.generation = 0
        size = self.anchor_len + 2 * chunk_len
        self.keys = tuple(_window_buffer(k, size) for k, _ in anchor)
        self.values = tuple(_window_buffer(v, size) for _, v in anchor)

    def write(self, layers: tuple[KV, ...], start: int) -> tuple[KV, ...]:
        """Copy per-layer (k, v) (B, L, H, d) into tokens start..start+L of every layer;
        returns the written slices as views."""
        return tuple(self.write_layer(i, start, k, v) for i, (k, v) in enumerate(layers))

    def write_layer(self, layer: int, start: int, k: Tensor, v: Tensor) -> KV:
        """Copy one layer's k, v (B, L, H, d) into tokens start..start+L; returns the views."""
        stop = start + k.shape[1]
        assert stop <= self.keys[layer].shape[1], f"window of {self.keys[layer].shape[1]} tokens"
        keys, values = self.keys[layer][:, start:stop], self.values[layer][:, start:stop]
        keys.copy_(k)
        values.copy_(v)
        return keys, values

    def write_prev(self, prev: tuple[KV, ...]) -> tuple[KV, ...]:
        """Make per-layer (k rotated, v) the previous chunk; returns views of it."""
        assert prev[0][0].shape[1] <= self.chunk_len, "previous chunk longer than a chunk"
        self.generation += 1
        return self.write(prev, self.anchor_len)

    def write_current(self, layer: int, cached_len: int, k: Tensor, v: Tensor) -> KV:
        """Write the current chunk's (k rotated, v) (B, L, H, d) after the `cached_len`
        cached tokens; returns the layer's whole window (B, cached_len + L, H, d) as views."""
        self.write_layer(layer, cached_len, k, v)
        stop = cached_len + k.shape[1]
        return self.keys[layer][:, :stop], self.values[layer][:, :stop]

    def numel(self) -> int:
        """Elements held in the buffers."""
        return sum(t.numel() for t in self.keys + self.values)


def _window_buffer(like: Tensor, tokens: int) -> Tensor:
    """An uninitialised (B, tokens, H, d) buffer with like's dtype and device."""
    b, _, h, d = like.shape
    return torch.empty(b, tokens, h, d, dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class CachedPlan:
    """(c) One chunk against the KV cache (inference).

    rope: the chunk's tokens at the current slot; anchor / prev: per layer, cached keys
    (already rotated) and values, `prev` None before the first commit; window: the
    stream's preallocated buffers holding anchor and prev (None: concatenate instead,
    always the case under autograd).
    """

    rope: Rope
    anchor: tuple[KV, ...]
    prev: tuple[KV, ...] | None
    window: KVWindow | None = None

    def assemble(self, layer: int, q: Tensor, k: Tensor, v: Tensor):
        cached = [self.anchor[layer]] + ([self.prev[layer]] if self.prev is not None else [])
        if self.window is not None and not torch.is_grad_enabled():
            cached_len = sum(c[0].shape[1] for c in cached)
            keys, values = self.window.write_current(layer, cached_len, self.rope.apply(k), v)
            return self.rope.apply(q), keys, values, None
        keys = torch.cat([c[0] for c in cached] + [self.rope.apply(k)], dim=1)
        values = torch.cat([c[1] for c in cached] + [v], dim=1)
        return self.rope.apply(q), keys, values, None


def block_causal_mask(
    chunk_of_frame: Tensor, prev_chunk_of_frame: Tensor, tokens_per_frame: int
) -> Tensor:
    """Boolean mask of plan (b), True = may attend.

    chunk_of_frame: (T,) chunk index of each frame (0 = anchor); prev_chunk_of_frame: (P,)
    chunk index of each previous-slot copy. Query chunk c sees current keys of chunk 0
    and c, and previous-slot copies of chunk c - 1 (>= 1). Returns (T*S, (T+P)*S).
    """
    q = chunk_of_frame[:, None]
    sees_current = (chunk_of_frame[None] == 0) | (chunk_of_frame[None] == q)
    sees_prev = (prev_chunk_of_frame[None] == q - 1) & (prev_chunk_of_frame[None] >= 1)
    frames = torch.cat((sees_current, sees_prev), dim=1)
    return frames.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def split_heads(num_heads: int, x: Tensor) -> Tensor:
    """(..., heads * d) -> (..., heads, d)."""
    return x.unflatten(-1, (num_heads, -1))


def split_kv(num_heads: int, k: Tensor, v: Tensor) -> KV:
    """Keys and values (..., heads * d) -> each (..., heads, d)."""
    return split_heads(num_heads, k), split_heads(num_heads, v)


# ---- layers ----------------------------------------------------------------------------


class Projections(nn.Module):
    """Wan's attention projections: q (dim -> inner), k and v (kv_dim -> inner), o (inner ->
    dim), RMS-normed q and k; shared by the self-, cross- and audio attention."""

    def __init__(
        self, dim: int, kv_dim: int, inner: int, num_heads: int, qk_norm: bool, eps: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(kv_dim, inner)
        self.v = nn.Linear(kv_dim, inner)
        self.o = nn.Linear(inner, dim)
        self.norm_q = RMSNorm(inner, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(inner, eps) if qk_norm else nn.Identity()

    def query(self, x: Tensor) -> Tensor:
        """x (B, L, dim) -> normed q (B, L, H, d)."""
        return split_heads(self.num_heads, self.norm_q(self.q(x)))

    def project_kv(self, x: Tensor) -> KV:
        """x (B, L, kv_dim) -> normed (un-rotated) k and v, each (B, L, H, d)."""
        return split_kv(self.num_heads, self.norm_k(self.k(x)), self.v(x))


class SelfAttention(Projections):
    """Wan self-attention: RMS-normed q/k, 3-D RoPE (through the plan), SDPA."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__(dim, dim, dim, num_heads, qk_norm, eps)

    def forward(self, x: Tensor, plan, layer: int) -> tuple[Tensor, KV]:
        """x (B, L, dim) -> (output (B, L, dim), this call's un-rotated (k, v))."""
        q = self.query(x)
        k, v = self.project_kv(x)
        q_r, keys, values, mask = plan.assemble(layer, q, k, v)
        return self.o(attend(q_r, keys, values, mask)), (k, v)


class CrossAttention(Projections):
    """Wan text cross-attention (`t2v_cross_attn`), or with `image=True` Wan I2V's
    (`i2v_cross_attn`: extra k_img / v_img / norm_k_img for the CLIP image tokens)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, image: bool) -> None:
        super().__init__(dim, dim, dim, num_heads, qk_norm, eps)
        self.image = image
        if image:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def kv(self, text: Tensor, image: Tensor | None) -> tuple[KV, ...]:
        """text (B, Lt, dim), image (B, Li, dim) | None -> ((k, v) text[, (k, v) image])."""
        out = [self.project_kv(text)]
        if self.image:
            assert image is not None, "this cross-attention needs CLIP image tokens"
            out.append(
                split_kv(self.num_heads, self.norm_k_img(self.k_img(image)), self.v_img(image))
            )
        return tuple(out)

    def forward(self, x: Tensor, kv: tuple[KV, ...]) -> Tensor:
        """x (B, L, dim), kv from `kv()` -> (B, L, dim); image and text results are summed."""
        q = self.query(x)
        out = sum(attend(q, k, v) for k, v in kv)
        return self.o(out)


class AudioCrossAttention(Projections):
    """Per-latent-frame audio cross-attention, masked to the face, zero-initialised output.

    `Projections(dim, audio_dim, inner, ...)`: q dim -> inner, k/v audio_dim -> inner, o
    inner -> dim (zeros at init).
    """

    def kv(self, audio: Tensor) -> KV:
        """audio tokens (B, T, N, audio_dim) -> k, v each (B * T, N, H, d)."""
        assert audio.ndim == 4, f"audio tokens must be (B, T, N, D), got {tuple(audio.shape)}"
        return self.project_kv(audio.flatten(0, 1))

    def forward(self, x: Tensor, kv: KV, gate: Tensor | None) -> Tensor:
        """x (B, T, S, dim) -> (B, T, S, dim); frame j attends only to frame j's tokens.

        gate: (B or 1, 1, S, 1) face weight per token (None = whole frame).
        """
        b, t, s, _ = x.shape
        assert kv[0].shape[0] == b * t, f"audio for {kv[0].shape[0]} frames, x has {b}x{t}"
        q = self.query(x.flatten(0, 1))
        out = self.o(attend(q, *kv)).unflatten(0, (b, t))
        return out if gate is None else out * gate.to(out.dtype)
