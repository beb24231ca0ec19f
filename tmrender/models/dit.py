"""Wan2.1-style diffusion transformer with per-frame audio cross-attention, able to run
bidirectionally, block-sparse-causally over a clip, or chunk by chunk with a KV cache.

Layout: latents are `B, C, T, H, W` (asserted). Inside, tokens are `(B, T, S, dim)` with
`S = (H / ph) * (W / pw)` tokens per latent frame (patch `(1, ph, pw)`), frame-major.

Parameter names are Wan2.1's (wan/modules/model.py): patch_embedding, text_embedding,
time_embedding, time_projection, blocks.N.{norm1, self_attn.{q,k,v,o,norm_q,norm_k}, norm3,
cross_attn.{..., k_img, v_img, norm_k_img}, norm2, ffn.{0,2}, modulation}, head.{head,
modulation}, img_emb.proj.{0,1,3,4}. Added: blocks.N.{norm_audio, audio_cross_attn.{q, k, v,
o, norm_q, norm_k}}. A Wan2.1 state dict therefore maps in by name (`tmrender.convert`),
leaving only the audio layers missing.

Image conditioning (Wan I2V): the input is `[x | mask | reference]` along channels; the
first `anchor_frames` latent frames of a clip are the anchor (the clean reference-image
latent, timestep 0, mask 1, reference = itself); every other frame has mask 0 and a zero
reference. tm-mini has no text encoder: `text_len = 0` removes cross_attn altogether — a
learned constant context would only add a per-block bias-like term at a cost, the identity
already reaches every chunk through the anchor in self-attention and the reference channels.

Modes (see `tmrender.models.attention`):
    v = dit(x, t, audio, face_mask)                        # (a) teacher, bidirectional
    v = dit(x, t, audio, face_mask, causal=True)           # (b) training, block mask
    state = dit.start_stream(anchor, face_mask)            # (c) inference:
    v = dit.forward_chunk(x_t, t, audio, state)            #     per denoising step
    state = dit.commit_chunk(x0, audio, state)             #     once per chunk
Clip x is `[anchor (A frames) | chunk 1 (C) | chunk 2 (C) | ...]`; chunk k sees the anchor,
chunk k-1 and itself; `audio` covers the frames after the anchor.

RoPE time positions are window-relative: the anchor sits at 0..A-1, the previous chunk at
A..A+C-1 and the current chunk at A+C..A+2C-1 (chunk 1, which has no previous chunk, at
A..A+C-1). For chunks 1 and 2 these are the absolute positions (so the bidirectional
teacher and the student agree there), and chunk 1000 looks exactly like chunk 2: positions
never leave the range seen in training, whatever the length of the audio. Cached keys are
stored rotated at the previous slot (`commit_kv` rotates them when a chunk is committed).

KV-cache refresh: `commit_chunk` re-runs the clean chunk once at `t = 0` (CausVid,
Self-Forcing), stopping after the last block's K/V (no head); the cache then holds the
anchor (computed once) and the chunk just committed: constant size. The faster alternative
— keep the K/V of the last denoising step, `v, kv = forward_chunk(..., return_kv=True)`
then `commit_kv(kv, state)` — saves that forward but needs a student trained on noisy
context (plan (b) with the context chunk at the last timestep).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tmrender.config import DiTConfig
from tmrender.models.attention import (
    KV,
    AudioCrossAttention,
    BlockCausalPlan,
    CachedPlan,
    CrossAttention,
    FullPlan,
    KVWindow,
    LayerNorm,
    SelfAttention,
    block_causal_mask,
)
from tmrender.models.fused import gated_residual, modulated_norm
from tmrender.models.rope import Rope, grid_positions

ROPE_CACHE_SIZE = 16  # memoised RoPE tables per DiT (position sets x grids x devices)

# ---- helpers ---------------------------------------------------------------------------


def sinusoidal_embedding(dim: int, t: Tensor) -> Tensor:
    """Wan's timestep embedding: [cos(t w_i), sin(t w_i)], w_i = 10000^(-i / (dim/2)).

    t: any shape (float, network units 0..1000) -> t.shape + (dim,) float32.
    """
    assert dim % 2 == 0
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angle = t.to(torch.float64)[..., None] * freqs
    return torch.cat((angle.cos(), angle.sin()), dim=-1).float()


def check_latent(x: Tensor, channels: int, name: str = "x") -> None:
    assert x.ndim == 5, f"{name} must be B, C, T, H, W; got shape {tuple(x.shape)}"
    assert x.shape[1] == channels, f"{name} has {x.shape[1]} channels, expected {channels}"


@dataclass(frozen=True)
class ChunkKV:
    """Per-layer un-rotated self-attention (k, v), each (B, Tc * S, H, d), of one chunk."""

    layers: tuple[KV, ...]
    frames: int


@dataclass(frozen=True)
class StreamState:
    """The KV cache and embedding cache of one stream (constant size).

    grid: latent (H, W); anchor: per layer (k rotated, v) of the anchor, computed once;
    prev: per layer (k rotated at the previous slot, v) of the last committed chunk, None
    before the first commit; chunks_done: chunks committed so far; context: per layer the
    cross-attention K/V of text/CLIP tokens (None without cross_attn); gate: face gate
    (B or 1, 1, S, 1) or None; window: the preallocated K/V buffers that anchor and prev
    are views of (None when the stream started under autograd), `generation` its commit
    count when this state was made (an older state of the stream is stale).
    """

    batch: int
    grid: tuple[int, int]
    anchor: tuple[KV, ...]
    prev: tuple[KV, ...] | None
    chunks_done: int
    context: tuple[tuple[KV, ...], ...] | None
    gate: Tensor | None
    window: KVWindow | None = None
    generation: int = 0

    def numel(self) -> int:
        """Elements held in the caches (the same after 2 or 2000 chunks)."""
        tensors = [t for layer in self.context or () for kv in layer for t in kv]
        if self.window is not None:
            return sum(t.numel() for t in tensors) + self.window.numel()
        tensors += [t for kv in self.anchor for t in kv]
        tensors += [t for kv in self.prev or () for t in kv]
        return sum(t.numel() for t in tensors)

    def check_fresh(self) -> None:
        """Assert that no later commit of this stream has overwritten this state's cache."""
        assert self.window is None or self.generation == self.window.generation, (
            "stale StreamState: a later commit overwrote its KV cache; use the newest state"
        )


# ---- modules ---------------------------------------------------------------------------


class WanBlock(nn.Module):
    """Wan attention block + audio cross-attention. x (B, T, S, dim), e (B, T, 6, dim) f32."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        dim, eps = cfg.dim, cfg.eps
        self.norm1 = LayerNorm(dim, eps)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.qk_norm, eps)
        if cfg.has_context:
            self.norm3 = LayerNorm(dim, eps, True) if cfg.cross_attn_norm else nn.Identity()
            self.cross_attn = CrossAttention(
                dim, cfg.num_heads, cfg.qk_norm, eps, cfg.image_embedding
            )
        if cfg.audio_layers:
            self.norm_audio = LayerNorm(dim, eps, True) if cfg.cross_attn_norm else nn.Identity()
            self.audio_cross_attn = AudioCrossAttention(
                dim, cfg.audio_dim, cfg.audio_attn_dim, cfg.audio_num_heads, cfg.qk_norm, eps
            )
        self.norm2 = LayerNorm(dim, eps)
        self.ffn = nn.Sequential(
            nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def reset_parameters(self) -> None:
        """Own parameters only (submodules reset themselves): the modulation table."""
        nn.init.normal_(self.modulation, std=self.modulation.shape[-1] ** -0.5)

    def _mod(self, e: Tensor) -> tuple[Tensor, ...]:
        """e (B, T, 6, dim) -> six (B, T, 1, dim) float32: shift/scale/gate of attn, ffn."""
        return tuple(m.unsqueeze(2) for m in (self.modulation.float() + e).unbind(2))

    def attn_input(self, x: Tensor, e: Tensor) -> Tensor:
        """Modulated input of self-attention, flattened to (B, T*S, dim)."""
        shift, scale = self._mod(e)[:2]
        return modulated_norm(x, shift, scale, self.norm1.eps).flatten(1, 2)

    def forward(
        self,
        x: Tensor,
        e: Tensor,
        plan,
        layer: int,
        context: tuple[KV, ...] | None,
        audio: KV | None,
        audio_from: int,
        gate: Tensor | None,
    ) -> tuple[Tensor, KV]:
        """Returns (x, this layer's un-rotated self-attention (k, v)).

        audio: per-frame audio K/V for frames `audio_from:` of x (None: no audio term).
        """
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = self._mod(e)
        h = modulated_norm(x, shift_a, scale_a, self.norm1.eps)
        y, kv = self.self_attn(h.flatten(1, 2), plan, layer)
        x = gated_residual(x, y.view_as(x), gate_a)
        if context is not None:
            x = x + self.cross_attn(self.norm3(x).flatten(1, 2), context).view_as(x)
        if audio is not None:
            head, tail = x[:, :audio_from], x[:, audio_from:]
            tail = tail + self.audio_cross_attn(self.norm_audio(tail), audio, gate)
            x = torch.cat((head, tail), dim=1)
        y = self.ffn(modulated_norm(x, shift_f, scale_f, self.norm2.eps))
        return gated_residual(x, y, gate_f), kv


class Head(nn.Module):
    """Wan output head: modulated LayerNorm + linear to patch pixels. x (B, T, S, dim)."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float):
        super().__init__()
        self.norm = LayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def reset_parameters(self) -> None:
        """Own parameters only (submodules reset themselves): the modulation table."""
        nn.init.normal_(self.modulation, std=self.modulation.shape[-1] ** -0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x (B, T, S, dim), e (B, T, dim) float32 -> (B, T, S, prod(patch) * out_dim)."""
        shift, scale = (self.modulation.float() + e.unsqueeze(2)).unbind(2)
        return self.head(modulated_norm(x, shift.unsqueeze(2), scale.unsqueeze(2), self.norm.eps))


class MLPProj(nn.Module):
    """Wan I2V `img_emb`: CLIP image tokens (B, 257, 1280) -> (B, 257, dim)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, in_dim),
            nn.GELU(),
            nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class WanDiT(nn.Module):
    """The DiT. `chunk_frames` is C, the latent frames per autoregressive chunk."""

    def __init__(self, cfg: DiTConfig, chunk_frames: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.chunk_frames = chunk_frames
        self._rope_cache: dict[tuple, Rope] = {}
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(
            cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        if cfg.has_context:
            self.text_embedding = nn.Sequential(
                nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
            )
        self.time_embedding = nn.Sequential(
            nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(dim, cfg.out_dim, cfg.patch_size, cfg.eps)
        if cfg.image_embedding:
            self.img_emb = MLPProj(cfg.image_dim, dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Wan's init (xavier linears, N(0, .02) embeddings, zero head) + zero audio `o`."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        embeddings = [self.time_embedding] + ([self.text_embedding] if self.cfg.has_context else [])
        for seq in embeddings:
            for m in seq.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        self.zero_audio_output()

    def zero_audio_output(self) -> None:
        """Set every audio cross-attention output projection to zero (model == its base)."""
        for block in self.blocks:
            if self.cfg.audio_layers:
                nn.init.zeros_(block.audio_cross_attn.o.weight)
                nn.init.zeros_(block.audio_cross_attn.o.bias)

    # ---- embeddings ---------------------------------------------------------------------

    def _patchify(self, x: Tensor, anchor_frames: int) -> Tensor:
        """x (B, out_dim, T, H, W) -> tokens (B, T, S, dim), with Wan I2V mask/reference
        channels: the first `anchor_frames` frames are the anchor."""
        check_latent(x, self.cfg.out_dim)
        x = x.to(self.patch_embedding.weight.dtype)
        b, _, t, h, w = x.shape
        ph, pw = self.cfg.patch_size[1:]
        assert h % ph == 0 and w % pw == 0, f"latent {h}x{w} not divisible by patch {ph}x{pw}"
        if self.cfg.mask_channels:
            is_anchor = (torch.arange(t, device=x.device) < anchor_frames).to(x.dtype)
            is_anchor = is_anchor.view(1, 1, t, 1, 1)
            mask = is_anchor.expand(b, self.cfg.mask_channels, t, h, w)
            x = torch.cat((x, mask, x * is_anchor), dim=1)
        # Conv3d with stride == kernel == (1, ph, pw) as one matmul over patches (CPU's
        # conv3d has no fast path for this); the weights stay Wan's `patch_embedding`.
        cin = x.shape[1]
        patches = x.view(b, cin, t, h // ph, ph, w // pw, pw).permute(0, 2, 3, 5, 1, 4, 6)
        conv = self.patch_embedding
        return F.linear(patches.flatten(4), conv.weight.flatten(1), conv.bias).flatten(2, 3)

    def _unpatchify(self, y: Tensor, h: int, w: int) -> Tensor:
        """y (B, T, S, ph*pw*out_dim) (Wan order: patch dims, then channel) -> B, C, T, H, W."""
        b, t = y.shape[:2]
        ph, pw = self.cfg.patch_size[1:]
        c = self.cfg.out_dim
        y = y.view(b, t, h // ph, w // pw, ph, pw, c)
        return y.permute(0, 6, 1, 2, 4, 3, 5).reshape(b, c, t, h, w)

    def _time(self, t: Tensor, b: int, frames: int, anchor_frames: int) -> tuple[Tensor, Tensor]:
        """t (B,) or (B, T) in [0, 1] -> e (B, T, dim), e0 (B, T, 6, dim), float32.

        A (B,) timestep applies to the non-anchor frames; anchor frames get t = 0."""
        if t.ndim == 1:
            assert t.shape[0] == b, f"t has {t.shape[0]} entries for batch {b}"
            is_anchor = torch.arange(frames, device=t.device) < anchor_frames
            t = torch.where(is_anchor[None], torch.zeros_like(t[:, None]), t[:, None])
        assert t.shape == (b, frames), f"t must be (B,) or (B, T) = ({b}, {frames})"
        freq = sinusoidal_embedding(self.cfg.freq_dim, t * self.cfg.num_train_timesteps)
        dtype = self.time_embedding[0].weight.dtype
        e = self.time_embedding(freq.to(dtype)).float()
        e0 = self.time_projection(e.to(dtype)).float().unflatten(-1, (6, self.cfg.dim))
        return e, e0

    def _context(
        self, b: int, device: torch.device, text: Tensor | None, clip: Tensor | None
    ) -> tuple[tuple[KV, ...], ...] | None:
        """Per-layer cross-attention K/V of text (B, Lt<=text_len, text_dim) and CLIP tokens
        (B, image_tokens, image_dim); missing inputs are zeros (Wan pads text with zeros)."""
        cfg = self.cfg
        if not cfg.has_context:
            assert text is None and clip is None, "this DiT has no cross-attention"
            return None
        dtype = self.patch_embedding.weight.dtype
        padded = torch.zeros(b, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)
        if text is not None:
            assert text.ndim == 3 and text.shape[0] == b and text.shape[1] <= cfg.text_len
            padded[:, : text.shape[1]] = text.to(dtype)
        context = self.text_embedding(padded)
        image = None
        if cfg.image_embedding:
            if clip is None:
                clip = torch.zeros(b, cfg.image_tokens, cfg.image_dim, device=device, dtype=dtype)
            image = self.img_emb(clip.to(dtype))
        return tuple(block.cross_attn.kv(context, image) for block in self.blocks)

    def face_gate(self, face_mask: Tensor | None, h: int, w: int) -> Tensor | None:
        """face_mask (H, W) or (B, H, W) over the latent grid (bool or [0, 1]) -> token gate
        (B or 1, 1, S, 1): a token is in the face when any latent cell of its patch is (max
        pool). An all-zero mask drops the audio of that sample (CFG dropout)."""
        if face_mask is None:
            return None
        m = face_mask if face_mask.ndim == 3 else face_mask[None]
        assert m.shape[1:] == (h, w), f"face_mask {tuple(face_mask.shape)} vs latent {h}x{w}"
        ph, pw = self.cfg.patch_size[1:]
        pooled = nn.functional.max_pool2d(m[:, None].float(), (ph, pw))
        return pooled.flatten(1)[:, None, :, None]

    def _audio_kv(self, audio: Tensor | None, b: int, frames: int) -> list[KV | None]:
        """audio tokens (B, frames, N, audio_dim) -> per-layer per-frame K/V (or Nones)."""
        if audio is None or not self.cfg.audio_layers:
            return [None] * len(self.blocks)
        assert audio.ndim == 4 and audio.shape[:2] == (b, frames), (
            f"audio tokens must be (B, T, N, D) = ({b}, {frames}, N, D); got {tuple(audio.shape)}"
        )
        assert audio.shape[3] == self.cfg.audio_dim
        dtype = self.patch_embedding.weight.dtype
        return [block.audio_cross_attn.kv(audio.to(dtype)) for block in self.blocks]

    # ---- positions ----------------------------------------------------------------------

    def _slot_positions(self, slot: int, frames: int) -> tuple[int, ...]:
        """Time positions of a chunk in window slot 1 (previous) or 2 (current)."""
        start = self.cfg.anchor_frames + (slot - 1) * self.chunk_frames
        return tuple(range(start, start + frames))

    def _slot_rope(self, slot: int, frames: int, h: int, w: int, device: torch.device) -> Rope:
        """Rope of a chunk of `frames` latent frames in window slot 1 or 2, looked up by
        Python numbers only: no device tensor is read back, so the chunk step can be
        captured in a CUDA graph (`tmrender.render.graphs`)."""
        return self._rope_at(self._slot_positions(slot, frames), h, w, device)

    def _rope(self, frames: Tensor, h: int, w: int) -> Rope:
        """Rope of the tokens of `frames` (T,) time positions on an h x w latent grid."""
        if frames.is_meta:
            return self._rope_of(frames, h, w)
        return self._rope_at(tuple(frames.tolist()), h, w, frames.device)

    def _rope_at(self, positions: tuple[int, ...], h: int, w: int, device: torch.device) -> Rope:
        """`_rope` memoised by its positions (a stream asks for the same few over and over)."""
        key = (positions, h, w, torch.device(device))
        rope = self._rope_cache.get(key)
        if rope is None:
            rope = self._rope_of(torch.tensor(positions, device=device), h, w)
            if len(self._rope_cache) >= ROPE_CACHE_SIZE:
                self._rope_cache.clear()
            self._rope_cache[key] = rope
        return rope

    def _rope_of(self, frames: Tensor, h: int, w: int) -> Rope:
        ph, pw = self.cfg.patch_size[1:]
        pos = grid_positions(frames, h // ph, w // pw)
        return Rope.at(pos, self.cfg.head_dim, self.cfg.rope_theta)

    def _block_causal_plan(self, t: int, h: int, w: int, device: torch.device) -> BlockCausalPlan:
        """Plan (b) for a clip of `t` frames = anchor + whole chunks."""
        a, c = self.cfg.anchor_frames, self.chunk_frames
        assert t > a and (t - a) % c == 0, f"clip of {t} frames is not {a} + k * {c}"
        frame = torch.arange(t, device=device)
        chunk = torch.where(frame < a, 0, 1 + (frame - a).div(c, rounding_mode="floor"))
        local = (frame - a).remainder(c)
        cur = torch.where(frame < a, frame, a + (chunk.clamp(max=2) - 1) * c + local)
        prev_frames = slice(a, t - c)  # chunks 1..K-1, each also seen by its successor
        s = (h // self.cfg.patch_size[1]) * (w // self.cfg.patch_size[2])
        return BlockCausalPlan(
            rope=self._rope(cur, h, w),
            prev_rope=self._rope(a + local[prev_frames], h, w),
            prev_tokens=slice(prev_frames.start * s, prev_frames.stop * s),
            mask=block_causal_mask(chunk, chunk[prev_frames], s),
        )

    # ---- core ---------------------------------------------------------------------------

    def _run(
        self,
        tokens: Tensor,
        e0: Tensor,
        plan,
        context,
        audio_kv: list[KV | None],
        audio_from: int,
        gate: Tensor | None,
        kv_only: bool = False,
    ) -> tuple[Tensor | None, tuple[KV, ...]]:
        """Run the blocks. Returns (tokens or None when kv_only, per-layer (k, v)).

        kv_only: stop after the last block's K/V (a cache refresh needs no output)."""
        kvs = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if kv_only and i == last:
                kvs.append(block.self_attn.project_kv(block.attn_input(tokens, e0)))
                return None, tuple(kvs)
            ctx = None if context is None else context[i]
            tokens, kv = block(tokens, e0, plan, i, ctx, audio_kv[i], audio_from, gate)
            kvs.append(kv)
        return tokens, tuple(kvs)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        audio: Tensor | None = None,
        face_mask: Tensor | None = None,
        context: Tensor | None = None,
        clip_fea: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        """Whole clip: bidirectional (a) or block-sparse-causal (b, `causal=True`).

        x: (B, out_dim, T, H, W), anchor first (A = cfg.anchor_frames frames, clean);
        t: (B,) for the non-anchor frames (anchor at 0) or (B, T) per frame, in [0, 1];
        audio: (B, T - A, N, audio_dim) tokens, None = no audio term (the base model);
        face_mask: (H, W) or (B, H, W); context: (B, Lt, text_dim); clip_fea: (B, 257, 1280).
        Returns the velocity (B, out_dim, T, H, W) (its anchor frames are meaningless).
        """
        check_latent(x, self.cfg.out_dim)
        b, _, frames, h, w = x.shape
        a = self.cfg.anchor_frames
        tokens = self._patchify(x, a)
        e, e0 = self._time(t, b, frames, a)
        if causal:
            plan = self._block_causal_plan(frames, h, w, x.device)
        else:
            plan = FullPlan(self._rope(torch.arange(frames, device=x.device), h, w))
        ctx = self._context(b, x.device, context, clip_fea)
        audio_kv = self._audio_kv(audio, b, frames - a)
        gate = self.face_gate(face_mask, h, w)
        tokens, _ = self._run(tokens, e0, plan, ctx, audio_kv, a, gate)
        return self._unpatchify(self.head(tokens, e), h, w).float()

    # ---- streaming (mode c) -------------------------------------------------------------

    def start_stream(
        self,
        anchor: Tensor,
        face_mask: Tensor | None = None,
        context: Tensor | None = None,
        clip_fea: Tensor | None = None,
    ) -> StreamState:
        """Embedding cache of a render: anchor (B, out_dim, A, H, W) clean reference latent
        -> per-layer anchor K/V (at t = 0), cross-attention K/V, face gate."""
        check_latent(anchor, self.cfg.out_dim, "anchor")
        b, _, a, h, w = anchor.shape
        assert a == self.cfg.anchor_frames, (
            f"anchor has {a} frames, config says {self.cfg.anchor_frames}"
        )
        tokens = self._patchify(anchor, a)
        _, e0 = self._time(torch.zeros(b, device=anchor.device), b, a, a)
        rope = self._rope(torch.arange(a, device=anchor.device), h, w)
        ctx = self._context(b, anchor.device, context, clip_fea)
        _, kvs = self._run(
            tokens, e0, FullPlan(rope), ctx, [None] * len(self.blocks), a, None, True
        )
        anchor_kv = tuple((rope.apply(k), v) for k, v in kvs)
        window = None
        if not torch.is_grad_enabled():  # in-place buffers only outside autograd
            window = KVWindow(anchor_kv, self.chunk_frames * tokens.shape[2])
            anchor_kv = window.write(anchor_kv, 0)
        return StreamState(
            batch=b,
            grid=(h, w),
            anchor=anchor_kv,
            prev=None,
            chunks_done=0,
            context=ctx,
            gate=self.face_gate(face_mask, h, w),
            window=window,
        )

    def _chunk(
        self, x: Tensor, t: Tensor, audio: Tensor | None, state: StreamState, kv_only: bool
    ) -> tuple[Tensor | None, ChunkKV]:
        check_latent(x, self.cfg.out_dim)
        b, _, frames, h, w = x.shape
        assert (b, (h, w)) == (state.batch, state.grid), "chunk does not match the stream"
        assert 1 <= frames <= self.chunk_frames, (
            f"chunk of {frames} frames, C = {self.chunk_frames}"
        )
        assert t.shape == (b,), f"t must be (B,) = ({b},)"
        state.check_fresh()
        slot = min(state.chunks_done + 1, 2)
        rope = self._slot_rope(slot, frames, h, w, x.device)
        plan = CachedPlan(rope, state.anchor, state.prev, state.window)
        tokens = self._patchify(x, 0)
        e, e0 = self._time(t, b, frames, 0)
        audio_kv = self._audio_kv(audio, b, frames)
        tokens, kvs = self._run(tokens, e0, plan, state.context, audio_kv, 0, state.gate, kv_only)
        out = None if kv_only else self._unpatchify(self.head(tokens, e), h, w).float()
        return out, ChunkKV(kvs, frames)

    def forward_chunk(
        self,
        x: Tensor,
        t: Tensor,
        audio: Tensor | None,
        state: StreamState,
        return_kv: bool = False,
    ) -> Tensor | tuple[Tensor, ChunkKV]:
        """One denoising evaluation of the next chunk against the cache (state unchanged).

        x: (B, out_dim, Tc, H, W) noisy chunk, 1 <= Tc <= C; t: (B,) in [0, 1];
        audio: (B, Tc, N, audio_dim) tokens (silence embedding already substituted), or
        None for no audio term. Returns velocity (B, out_dim, Tc, H, W) float32, and with
        `return_kv` this evaluation's ChunkKV for `commit_kv`.
        """
        v, kv = self._chunk(x, t, audio, state, kv_only=False)
        return (v, kv) if return_kv else v

    def commit_chunk(
        self, x0: Tensor, audio: Tensor | None, state: StreamState, t: Tensor | float = 0.0
    ) -> StreamState:
        """Refresh the cache with the finished chunk x0 (B, out_dim, Tc, H, W): one forward
        at timestep `t` ((B,) or a float; default 0, clean) up to the last block's K/V;
        returns the new state (anchor kept, previous chunk replaced)."""
        if isinstance(t, Tensor):
            tt = t.to(device=x0.device, dtype=torch.float32).expand(x0.shape[0])
        else:  # a fill, not a host-to-device copy: the commit may run inside a CUDA graph
            tt = torch.full((x0.shape[0],), float(t), dtype=torch.float32, device=x0.device)
        return self.commit_kv(self.chunk_kv(x0, tt, audio, state), state)

    def chunk_kv(self, x: Tensor, t: Tensor, audio: Tensor | None, state: StreamState) -> ChunkKV:
        """The K/V every block computes for chunk x (B, out_dim, Tc, H, W) at t (B,) against
        the cache (state unchanged), without the output head: what `commit_kv` keeps."""
        return self._chunk(x, t, audio, state, kv_only=True)[1]

    def commit_kv(self, kv: ChunkKV, state: StreamState) -> StreamState:
        """Make `kv` the previous chunk: rotate its keys at the previous slot. With a
        window (outside autograd) they are written into its buffers in place, which makes
        `state` and older states of the stream stale; under autograd the window is dropped
        (the new state concatenates, the old stays valid)."""
        state.check_fresh()
        h, w = state.grid
        device = kv.layers[0][0].device
        rope = self._slot_rope(1, kv.frames, h, w, device)
        prev = tuple((rope.apply(k), v) for k, v in kv.layers)
        window = state.window if not torch.is_grad_enabled() else None
        if window is not None:
            prev = window.write_prev(prev)
        return replace(
            state,
            prev=prev,
            chunks_done=state.chunks_done + 1,
            window=window,
            generation=0 if window is None else window.generation,
        )
