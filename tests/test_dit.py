"""DiT: block-causal clip == chunked KV cache, zero-init audio, audio locality, face mask."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tmrender.config import DiTConfig
from tmrender.models.dit import WanDiT

C = 2  # latent frames per chunk
B, H, W = 2, 4, 6  # latent grid 4 x 6 -> 2 x 3 tokens per frame
N_AUDIO = 3


def tiny_cfg(**kw) -> DiTConfig:
    base = dict(
        dim=32,
        ffn_dim=64,
        freq_dim=16,
        num_heads=2,
        num_layers=2,
        audio_dim=8,
        audio_attn_dim=16,
        audio_num_heads=2,
        text_len=5,
        text_dim=12,
        image_embedding=True,
        image_tokens=3,
        image_dim=10,
    )
    return DiTConfig(**{**base, **kw})


def randomized(cfg: DiTConfig, seed: int = 0, keep_audio_zero: bool = False) -> WanDiT:
    """A DiT whose every weight is random (Wan zero-inits the head, which would hide bugs)."""
    torch.manual_seed(seed)
    dit = WanDiT(cfg, C).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    if keep_audio_zero:
        dit.zero_audio_output()
    return dit


def clip_inputs(chunks: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    frames = 1 + chunks * C
    x = torch.randn(B, 16, frames, H, W, generator=g)
    t_chunk = torch.rand(B, chunks, generator=g)
    t = torch.cat((torch.zeros(B, 1), t_chunk.repeat_interleave(C, 1)), dim=1)
    audio = torch.randn(B, frames - 1, N_AUDIO, 8, generator=g)
    face = torch.zeros(H, W)
    face[1:3, 2:5] = 1
    ctx = torch.randn(B, 4, 12, generator=g)
    clip = torch.randn(B, 3, 10, generator=g)
    return x, t_chunk, t, audio, face, ctx, clip


def chunk_slice(k: int) -> slice:
    return slice(1 + k * C, 1 + (k + 1) * C)


@torch.no_grad()
def test_block_causal_clip_equals_kv_cache_stream():
    dit = randomized(tiny_cfg())
    chunks = 4
    x, t_chunk, t, audio, face, ctx, clip = clip_inputs(chunks)
    full = dit(x, t, audio, face, ctx, clip, causal=True)
    state = dit.start_stream(x[:, :, :1], face, ctx, clip)
    sizes = []
    for k in range(chunks):
        sl = chunk_slice(k)
        a = audio[:, sl.start - 1 : sl.stop - 1]
        v = dit.forward_chunk(x[:, :, sl], t_chunk[:, k], a, state)
        assert v.shape == (B, 16, C, H, W)
        assert (v - full[:, :, sl]).abs().max() < 1e-4, f"chunk {k + 1}"
        state = dit.commit_chunk(x[:, :, sl], a, state, t=t_chunk[:, k])
        sizes.append(state.numel())
    assert len(set(sizes[1:])) == 1, "the cache must not grow"


@torch.no_grad()
def test_fast_commit_from_last_step_equals_clip():
    """commit_kv(kv of the last evaluation) == clip whose context chunk is at that t."""
    dit = randomized(tiny_cfg(text_len=0, image_embedding=False))
    x, t_chunk, t, audio, face, *_ = clip_inputs(3)
    full = dit(x, t, audio, face, causal=True)
    state = dit.start_stream(x[:, :, :1], face)
    for k in range(3):
        sl = chunk_slice(k)
        a = audio[:, sl.start - 1 : sl.stop - 1]
        v, kv = dit.forward_chunk(x[:, :, sl], t_chunk[:, k], a, state, return_kv=True)
        assert (v - full[:, :, sl]).abs().max() < 1e-4
        state = dit.commit_kv(kv, state)


@torch.no_grad()
def test_zero_initialised_audio_layers_leave_base_unchanged():
    cfg = tiny_cfg()
    with_audio = randomized(cfg, keep_audio_zero=True)
    base = WanDiT(dataclasses.replace(cfg, audio_layers=False), C).eval()
    missing = base.load_state_dict(with_audio.state_dict(), strict=False)
    assert not missing.missing_keys
    assert all("audio" in k for k in missing.unexpected_keys)
    x, _, t, audio, face, ctx, clip = clip_inputs(2)
    ref = base(x, t, None, face, ctx, clip)
    for causal in (False, True):
        out = with_audio(x, t, audio, face, ctx, clip, causal=causal)
        ref = base(x, t, None, face, ctx, clip, causal=causal)
        assert torch.equal(out, ref)


@torch.no_grad()
def test_frame_output_depends_only_on_its_own_audio():
    # one block: self-attention comes before the audio term, so nothing mixes frames after it
    dit = randomized(tiny_cfg(num_layers=1))
    x, _, t, audio, _, ctx, clip = clip_inputs(2)
    out = dit(x, t, audio, None, ctx, clip)
    j = 2  # latent frame 3 of the clip (audio index j, clip index j + 1)
    other = audio.clone()
    other[:, [i for i in range(audio.shape[1]) if i != j]] += 1.0
    out2 = dit(x, t, other, None, ctx, clip)
    assert torch.equal(out[:, :, j + 1], out2[:, :, j + 1])
    changed = [i for i in range(audio.shape[1]) if i != j]
    assert all((out[:, :, i + 1] - out2[:, :, i + 1]).abs().max() > 1e-4 for i in changed)
    own = audio.clone()
    own[:, j] += 1.0
    assert (dit(x, t, own, None, ctx, clip)[:, :, j + 1] - out[:, :, j + 1]).abs().max() > 1e-4


@torch.no_grad()
def test_causal_chunks_ignore_later_audio():
    dit = randomized(tiny_cfg(num_layers=3))
    x, _, t, audio, face, ctx, clip = clip_inputs(3)
    out = dit(x, t, audio, face, ctx, clip, causal=True)
    later = audio.clone()
    later[:, 2 * C :] += 1.0  # audio of chunk 3
    out2 = dit(x, t, later, face, ctx, clip, causal=True)
    assert torch.equal(out[:, :, : 1 + 2 * C], out2[:, :, : 1 + 2 * C])
    assert (out[:, :, 1 + 2 * C :] - out2[:, :, 1 + 2 * C :]).abs().max() > 1e-4


@torch.no_grad()
def test_face_mask_restricts_audio_to_face_tokens():
    dit = randomized(tiny_cfg(num_layers=1, text_len=0, image_embedding=False))
    x, _, t, audio, _, *_ = clip_inputs(1)
    face = torch.zeros(H, W)
    face[0:2, 0:2] = 1  # exactly token (0, 0) of the 2 x 3 token grid
    a = dit(x, t, audio, face)
    b = dit(x, t, audio + 1.0, face)
    diff = (a - b).abs().amax(dim=(0, 1, 2))  # (H, W)
    assert diff[0:2, 0:2].min() > 1e-5
    inside = torch.zeros(H, W, dtype=torch.bool)
    inside[0:2, 0:2] = True
    assert diff[~inside].max() == 0
    silent = dit(x, t, audio, torch.zeros(H, W))  # all-zero mask == no audio term
    assert torch.equal(silent, dit(x, t, None, None))


@torch.no_grad()
def test_window_positions_match_absolute_for_first_two_chunks():
    """With 2 chunks, window-relative RoPE positions are the absolute ones, so the causal
    clip equals a hand-masked bidirectional run; checked through a 2-chunk stream."""
    dit = randomized(tiny_cfg(text_len=0, image_embedding=False))
    pos = [dit._slot_positions(s, C) for s in (1, 2)]
    assert pos == [tuple(range(1, 1 + C)), tuple(range(1 + C, 1 + 2 * C))]


def test_shape_contract_is_asserted():
    dit = WanDiT(tiny_cfg(text_len=0, image_embedding=False), C)
    with pytest.raises(AssertionError, match="B, C, T, H, W"):
        dit(torch.randn(B, 16, H, W), torch.zeros(B))
    with pytest.raises(AssertionError, match="channels"):
        dit(torch.randn(B, 8, 3, H, W), torch.zeros(B))
    with pytest.raises(AssertionError, match="not 1 \\+ k"):
        dit(torch.randn(B, 16, 4, H, W), torch.zeros(B), causal=True)


def test_patch_embedding_matches_wan_conv3d():
    dit = randomized(tiny_cfg(text_len=0, image_embedding=False))
    x = torch.randn(B, 16, 3, H, W)
    tokens = dit._patchify(x, 1)
    a = torch.arange(3) < 1
    cond = torch.cat(
        (x, a.view(1, 1, 3, 1, 1).expand(B, 4, 3, H, W).float(), x * a.view(1, 1, 3, 1, 1)), 1
    )
    ref = dit.patch_embedding(cond).flatten(3).permute(0, 2, 3, 1)
    assert torch.allclose(tokens, ref, atol=1e-5)


def stream_velocities(dit: WanDiT, chunks: int, context: str) -> list[torch.Tensor]:
    """Stream `chunks` chunks of clip_inputs (refresh: commit_chunk; last_step: commit_kv
    of the last evaluation), two evaluations per chunk; returns every velocity."""
    x, t_chunk, _, audio, face, ctx, clip = clip_inputs(chunks)
    state = dit.start_stream(x[:, :, :1], face, ctx, clip)
    out = []
    for k in range(chunks):
        sl = chunk_slice(k)
        a = audio[:, sl.start - 1 : sl.stop - 1]
        out.append(dit.forward_chunk(x[:, :, sl], t_chunk[:, k], a, state))
        v, kv = dit.forward_chunk(x[:, :, sl], 0.5 * t_chunk[:, k], a, state, return_kv=True)
        out.append(v)
        if context == "refresh":
            state = dit.commit_chunk(x[:, :, sl], a, state, t=t_chunk[:, k])
        else:
            state = dit.commit_kv(kv, state)
    return out


@pytest.mark.parametrize("context", ["refresh", "last_step"])
def test_preallocated_kv_window_equals_concatenation_exactly(context):
    """In-place window buffers (autograd off) == the concatenating path (autograd on, as
    before the buffers), bit for bit in float32, over several chunks."""
    dit = randomized(tiny_cfg())
    for p in dit.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        state = dit.start_stream(clip_inputs(1)[0][:, :, :1])
        assert state.window is not None
        buffered = stream_velocities(dit, 4, context)
    with torch.enable_grad():
        assert dit.start_stream(clip_inputs(1)[0][:, :, :1]).window is None
        concatenated = stream_velocities(dit, 4, context)
    assert len(buffered) == 8
    for k, (b, c) in enumerate(zip(buffered, concatenated, strict=True)):
        assert torch.equal(b, c), f"evaluation {k}: max diff {(b - c).abs().max()}"


@torch.no_grad()
def test_kv_window_is_allocated_once_and_old_states_are_stale():
    dit = randomized(tiny_cfg(text_len=0, image_embedding=False))
    x, t_chunk, _, audio, face, *_ = clip_inputs(3)
    state = dit.start_stream(x[:, :, :1], face)
    buffers = [t.data_ptr() for t in state.window.keys + state.window.values]
    first = state
    for k in range(3):
        sl = chunk_slice(k)
        a = audio[:, sl.start - 1 : sl.stop - 1]
        dit.forward_chunk(x[:, :, sl], t_chunk[:, k], a, state)
        state = dit.commit_chunk(x[:, :, sl], a, state)
        assert state.window is first.window
        assert state.prev[0][0]._base is state.window.keys[0]  # a view, not a copy
    assert [t.data_ptr() for t in state.window.keys + state.window.values] == buffers
    with pytest.raises(AssertionError, match="stale StreamState"):
        dit.forward_chunk(x[:, :, chunk_slice(0)], t_chunk[:, 0], audio[:, :C], first)


def test_commit_under_autograd_drops_the_window_and_backpropagates():
    """A stream started without autograd, then a differentiable chunk and commit (as the
    training rollouts may do): the window is dropped, gradients flow, the old state holds."""
    dit = randomized(tiny_cfg(text_len=0, image_embedding=False))
    x, t_chunk, _, audio, face, *_ = clip_inputs(2)
    with torch.no_grad():
        state = dit.start_stream(x[:, :, :1], face)
    a = audio[:, :C]
    v = dit.forward_chunk(x[:, :, chunk_slice(0)], t_chunk[:, 0], a, state)
    committed = dit.commit_chunk(x[:, :, chunk_slice(0)], a, state)
    assert committed.window is None and state.window is not None
    v2 = dit.forward_chunk(x[:, :, chunk_slice(1)], t_chunk[:, 1], audio[:, C : 2 * C], committed)
    (v.square().mean() + v2.square().mean()).backward()
    assert dit.blocks[0].self_attn.k.weight.grad.abs().sum() > 0
    with torch.no_grad():
        again = dit.forward_chunk(x[:, :, chunk_slice(0)], t_chunk[:, 0], a, state)
    assert torch.allclose(again, v.detach(), atol=1e-6)
