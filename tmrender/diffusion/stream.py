"""The student's chunk-by-chunk rollout, written once (DESIGN.md section 1, the chunk loop).

The sparse-causal student streams a video chunk by chunk against its KV cache: each chunk
of C latent frames is denoised against the anchor and the previous chunk, then becomes
the context of the next one. Every caller runs this one loop (`rollout`) and differs only
in what it passes in:

- the renderer (`tmrender.render.pipeline`): batch 1, noise and audio tokens made chunk by
  chunk as the audio arrives, its own outputs as context, no gradient (and on a GPU the
  steady step replayed from a CUDA graph, by a `Student` subclass of its own);
- the ode stage: `TeacherForced` (one evaluation per chunk at a given timestep, the
  teacher's samples as context, gradient through the context K/V too) for its loss, and
  `Student` rollouts for its validation;
- the dmd stage: `Student` rollouts whose first chunks may take real latents as context,
  one denoising step carrying the gradient (`StreamPlan.exit_step`);
- the distillation-gap measurement (`tmrender.train.gap`).

Context (`StreamPlan.context`, the checkpoint's `SamplerConfig.context`): "refresh"
commits a finished chunk by one more forward at `context_t` (`WanDiT.commit_chunk`);
"last_step" keeps the K/V of the chunk's last denoising step (`WanDiT.commit_kv`), and a
real context chunk is first noised to that step's timestep.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from tmrender.config import SamplerConfig
from tmrender.diffusion.flow import interpolate, x0_from_velocity
from tmrender.diffusion.samplers import sample_chunk_student
from tmrender.models.dit import ChunkKV, StreamState, WanDiT

Context = Literal["refresh", "last_step"]
CONTEXTS: tuple[Context, ...] = ("refresh", "last_step")


@dataclass(frozen=True)
class StreamPlan:
    """How the student streams.

    sigmas: the timesteps of each chunk's denoising steps (decreasing, > 0);
    context: how a finished chunk becomes the next one's context ("refresh" or
    "last_step"); context_t: the timestep it is committed at ("refresh": the sampler's
    `context_timestep`; "last_step": the last of `sigmas`, to which real context chunks are
    noised); exit_step: the one denoising step whose x0 keeps its autograd graph when
    gradients are on (DMD2's backward simulation; -1: the last).
    """

    sigmas: tuple[float, ...]
    context: Context = "refresh"
    context_t: float = 0.0
    exit_step: int = -1

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be one of {', '.join(CONTEXTS)}, not {self.context!r}")

    @classmethod
    def for_sampler(cls, sampler: SamplerConfig, context: Context | None = None) -> StreamPlan:
        """The plan a checkpoint's sampler config streams with (`context` overrides its
        context mode: a stage's validation in the other mode)."""
        context = context or sampler.context
        sigmas = tuple(float(s) for s in sampler.student_sigmas)
        context_t = sampler.context_timestep if context == "refresh" else sigmas[-1]
        return cls(sigmas, context, float(context_t))

    def exiting_at(self, step: int) -> StreamPlan:
        """The same plan with the gradient through step `step`."""
        return replace(self, exit_step=step)


@dataclass(frozen=True)
class ChunkInput:
    """One chunk's inputs.

    noise (B, C, Tc, h, w): x at sigmas[0] (its dtype is the dtype of the sampler's
    arithmetic); tokens (B, Tc, N, D): audio tokens or the silence embedding; real (B, C,
    Tc, h, w): the real latents of the chunk, the context instead of the student's output
    where `use_real` (B,) bool (None: everywhere); real_eps (B, C, Tc, h, w): the noise
    of a real context chunk in "last_step" mode.
    """

    noise: Tensor
    tokens: Tensor
    real: Tensor | None = None
    use_real: Tensor | None = None
    real_eps: Tensor | None = None


@dataclass(frozen=True)
class ChunkOutput:
    """What a chunk's denoising gives: x0 (B, C, Tc, h, w) the prediction at the exit step
    (with its graph when gradients are on), clean (B, C, Tc, h, w) the final sample
    (no graph), kv the last evaluation's K/V (for "last_step" commits; None where no
    commit reads it)."""

    x0: Tensor
    clean: Tensor
    kv: ChunkKV | None


class Student:
    """The 2-step student on each chunk (`samplers.sample_chunk_student` at `plan.sigmas`,
    no guidance); its own output, or the real chunk, committed as context."""

    def __init__(self, dit: WanDiT, plan: StreamPlan) -> None:
        self.dit, self.plan = dit, plan

    def denoise(self, state: StreamState, chunk: ChunkInput) -> ChunkOutput:
        """The chunk's denoising steps against `state` (unchanged). Only the exit step
        runs with autograd (when it is on); the steps are chained without a graph."""
        grad = torch.is_grad_enabled()
        steps = len(self.plan.sigmas)
        exit_step = self.plan.exit_step % steps
        counter = itertools.count()
        kept: dict = {}

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            i = next(counter)
            with torch.set_grad_enabled(grad and i == exit_step):
                v, kept["kv"] = self.dit.forward_chunk(x, t, chunk.tokens, state, return_kv=True)
                v = v.to(x.dtype)
                if i == exit_step:
                    kept["x0"] = x0_from_velocity(x, v, self.plan.sigmas[i])
            return v.detach()

        with torch.no_grad():  # the chain between steps carries no graph
            clean = sample_chunk_student(velocity, chunk.noise, self.plan.sigmas)
        return ChunkOutput(kept["x0"], clean, kept["kv"])

    def commit(self, state: StreamState, chunk: ChunkInput, out: ChunkOutput) -> StreamState:
        """Make the chunk the next one's context, without gradient (`commit_context`)."""
        with torch.no_grad():
            return commit_context(self.dit, state, chunk, out, self.plan)


class TeacherForced(Student):
    """One evaluation per chunk at timestep t (B,) (the ode regression's input x at its
    timestep), the real chunks as context; gradient (when on) through every evaluation and
    every commit, the context K/V included."""

    def __init__(self, dit: WanDiT, plan: StreamPlan, t: Tensor) -> None:
        super().__init__(dit, plan)
        self.t = t

    def denoise(self, state: StreamState, chunk: ChunkInput) -> ChunkOutput:
        x = chunk.noise
        v = self.dit.forward_chunk(x, self.t, chunk.tokens, state).to(x.dtype)
        x0 = x0_from_velocity(x, v, self.t)
        return ChunkOutput(x0, x0, None)

    def commit(self, state: StreamState, chunk: ChunkInput, out: ChunkOutput) -> StreamState:
        assert chunk.real is not None and chunk.use_real is None, "teacher forcing needs real"
        return commit_context(self.dit, state, chunk, out, self.plan)


def rollout(
    stepper: Student, state: StreamState, chunks: Iterable[ChunkInput]
) -> Iterator[ChunkOutput]:
    """The chunk loop: denoise each chunk against the cache, hand it out, then (when a
    next chunk comes) commit it as context. Lazy: `chunks` may be made as the audio
    arrives, and the caller may stop at any time; the last chunk is never committed."""
    chunks = iter(chunks)
    chunk = next(chunks, None)
    while chunk is not None:
        out = stepper.denoise(state, chunk)
        yield out
        following = next(chunks, None)
        if following is not None:
            state = stepper.commit(state, chunk, out)
        chunk = following


def commit_context(
    dit: WanDiT, state: StreamState, chunk: ChunkInput, out: ChunkOutput, plan: StreamPlan
) -> StreamState:
    """The new stream state with this chunk as context: per sample the real chunk
    (`chunk.use_real`, all of it when None and `chunk.real` is given) or the student's
    output. "refresh": one forward of the chunk at `plan.context_t`; "last_step": the
    last step's K/V `out.kv`, or the real chunk noised with `chunk.real_eps` to
    `plan.context_t` and run at that timestep."""
    if plan.context == "refresh":
        context = out.clean
        if chunk.real is not None:
            context = _pick(chunk.use_real, chunk.real.to(out.clean.dtype), out.clean)
        return dit.commit_chunk(context, chunk.tokens, state, t=plan.context_t)
    use_real = chunk.use_real
    if chunk.real is None or (use_real is not None and not bool(use_real.any())):
        return dit.commit_kv(out.kv, state)
    noisy = interpolate(chunk.real.float(), chunk.real_eps, plan.context_t)
    t = torch.full((noisy.shape[0],), plan.context_t, device=noisy.device)
    real_kv = dit.chunk_kv(noisy, t, chunk.tokens, state)
    kv = real_kv if use_real is None else mix_kv(use_real, real_kv, out.kv)
    return dit.commit_kv(kv, state)


def mix_kv(use_a: Tensor, a: ChunkKV, b: ChunkKV) -> ChunkKV:
    """Per sample, the K/V of `a` where use_a (B,) else of `b`."""
    pick = use_a.view(-1, 1, 1, 1)
    layers = tuple(
        (torch.where(pick, ka, kb), torch.where(pick, va, vb))
        for (ka, va), (kb, vb) in zip(a.layers, b.layers, strict=True)
    )
    return ChunkKV(layers, a.frames)


def split_chunks(x: Tensor, chunk_frames: int, dim: int = 2) -> list[Tensor]:
    """A window along its frame axis `dim` (2 for latents (B, C, L, h, w), 1 for tokens
    (B, L, N, D)) -> its L / C chunks of C frames (views)."""
    length = x.shape[dim]
    assert length % chunk_frames == 0, f"{length} frames are not whole chunks of {chunk_frames}"
    return list(x.split(chunk_frames, dim=dim))


def _chunks_or_nones(x: Tensor | None, chunk_frames: int, count: int) -> list[Tensor | None]:
    return [None] * count if x is None else split_chunks(x, chunk_frames)


def _pick(use_real: Tensor | None, real: Tensor, own: Tensor) -> Tensor:
    if use_real is None:
        return real
    return torch.where(use_real.view(-1, 1, 1, 1, 1), real, own)


def student_rollout(
    dit: WanDiT,
    plan: StreamPlan,
    anchor: Tensor,
    tokens: Tensor,
    noise: Tensor,
    real: Tensor | None = None,
    use_real: Tensor | None = None,
    real_eps: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """A window streamed by the student from a fresh stream on `anchor`, as the renderer
    streams it (`Student`, `rollout`).

    anchor (B, C, 1, h, w); tokens (B, L, N, D); noise (B, C, L, h, w) at sigmas[0], in
    the dtype of the arithmetic; real (B, C, L, h, w) the window's real latents, the
    context of chunk k for the samples with `use_real` (B, K) bool (chunk k is a real
    prefix chunk where use_real[:, k]); real_eps (B, C, L, h, w) their noise in
    "last_step" mode. Returns (x0 at the plan's exit step, the final samples), each (B, C,
    L, h, w)."""
    c = dit.chunk_frames
    noises, token_chunks = split_chunks(noise, c), split_chunks(tokens, c, dim=1)
    reals = _chunks_or_nones(real, c, len(noises))
    eps = _chunks_or_nones(real_eps, c, len(noises))
    chunks = [
        ChunkInput(
            noise=noises[k],
            tokens=token_chunks[k],
            real=reals[k],
            use_real=None if use_real is None else use_real[:, k],
            real_eps=eps[k],
        )
        for k in range(len(noises))
    ]
    outs = list(rollout(Student(dit, plan), dit.start_stream(anchor), chunks))
    return torch.cat([o.x0 for o in outs], dim=2), torch.cat([o.clean for o in outs], dim=2)


def teacher_forced_x0(
    dit: WanDiT,
    plan: StreamPlan,
    anchor: Tensor,
    x: Tensor,
    t: Tensor,
    tokens: Tensor,
    real: Tensor,
    real_eps: Tensor | None = None,
) -> Tensor:
    """The student's x0 prediction of every chunk of a window at timestep t (B,), each chunk
    against the real previous chunks as context (teacher forcing, `TeacherForced`).

    anchor (B, C, 1, h, w); x (B, C, L, h, w) the noisy input at t for all chunks, in the
    dtype of the arithmetic; tokens (B, L, N, D); real (B, C, L, h, w) clean latents whose
    chunk k-1 is committed before chunk k; real_eps (B, C, L, h, w) their noise in
    "last_step" mode. Returns x0 = x - t v (B, C, L, h, w), with its graph when gradients
    are on (through the context K/V too)."""
    c = dit.chunk_frames
    parts = zip(
        split_chunks(x, c),
        split_chunks(tokens, c, dim=1),
        split_chunks(real, c),
        _chunks_or_nones(real_eps, c, x.shape[2] // c),
        strict=True,
    )
    chunks = [ChunkInput(xk, tk, real=rk, real_eps=ek) for xk, tk, rk, ek in parts]
    outs = rollout(TeacherForced(dit, plan, t), dit.start_stream(anchor), chunks)
    return torch.cat([o.x0 for o in outs], dim=2)
