"""The distillation gap: the 2-step student against its 24-NFE teacher on the same windows
of the same clips (`tmrender eval --teacher FILE`).

Windows of `chunks` chunks are drawn (seeded) from the split's clips, encoded by the
teacher's VAE, and generated from the same noise by
- the teacher: bidirectional, Euler steps with audio guidance at the student's recorded
  `cfg_scale` (the guidance its targets used);
- the student: the renderer's chunk-by-chunk loop against its KV cache, in its own context
  mode (`tmrender.diffusion.stream.student_rollout`).
Both are decoded as the renderer decodes and read by the mouth reader; the VAE's own
reconstructions of the windows give the ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tmrender.diffusion.stream import StreamPlan, student_rollout
from tmrender.errors import UserInputError
from tmrender.models.talking import TalkingModel
from tmrender.models.vae import DECODER_PREFIX
from tmrender.train.latents import load_or_build_cache
from tmrender.train.windows import (
    decode_windows,
    device_noise,
    fixed_windows,
    lip_sync_r,
    sample_teacher,
    window_tokens,
)


@dataclass(frozen=True)
class GapOptions:
    windows: int = 24  # windows drawn across the split's clips
    chunks: int = 4  # chunks of C latent frames per window
    teacher_steps: int = 12  # Euler steps, x2 network evaluations with guidance
    refs_per_clip: int = 4
    seed: int = 1


FROZEN = ("vae", "audio_encoder")


def same_frozen_networks(a: TalkingModel, b: TalkingModel) -> bool:
    """Whether a and b share their VAE encoder and audio encoder (what defines the latents
    and audio features the DiT learned on), up to the fp16 rounding of an exported file.
    The decoders may differ: a decoder fine-tuned later (`train vae --decoder-only`)."""
    for name in FROZEN:
        mine, theirs = encoder_side(getattr(a, name)), encoder_side(getattr(b, name))
        if mine.keys() != theirs.keys():
            return False
        for key, value in mine.items():
            other = theirs[key]
            if value.shape != other.shape or not torch.equal(value.half(), other.half()):
                return False
    return True


def encoder_side(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's tensors without the VAE decoder's (what `train vae --decoder-only`
    trains)."""
    return {k: v for k, v in module.state_dict().items() if not k.startswith(DECODER_PREFIX)}


@torch.no_grad()
def teacher_gap(
    student: TalkingModel,
    teacher: TalkingModel,
    data: Path,
    split: str,
    cache_path: Path,
    reader,
    opts: GapOptions = GapOptions(),
) -> dict[str, float]:
    """Lip-sync r of the VAE's reconstructions, the teacher's samples and the student's
    rollouts on the same `opts.windows` windows of `split` (same noise for both), and
    the gap student - teacher. Both models on the CPU in float32; the teacher takes the
    student's VAE and audio encoder (the same networks, maybe rounded to fp16)."""
    if not same_frozen_networks(student, teacher):
        raise UserInputError("the teacher has another VAE or audio encoder than the model")
    for name in FROZEN:  # the student's copies (fp16-rounded, maybe a newer decoder)
        getattr(teacher, name).load_state_dict(getattr(student, name).state_dict())
    cache = load_or_build_cache(cache_path, teacher, data, split, opts.refs_per_clip)
    cfg = teacher.cfg
    c, fpl = cfg.chunk_latent_frames, cfg.frames_per_latent
    w = fixed_windows(cache, list(range(cache.clips)), opts.windows, opts.chunks, c, fpl, opts.seed)
    noise = device_noise(w.x0.shape, torch.Generator().manual_seed(opts.seed), w.x0.device)
    scale = student.cfg.sampler.cfg_scale
    taught, _ = sample_teacher(teacher.eval(), w, noise, opts.teacher_steps, cfg_scale=scale)
    plan = StreamPlan.for_sampler(student.cfg.sampler)
    tokens = window_tokens(student, w)
    _, rolled = student_rollout(student.eval().dit, plan, w.anchor, tokens, noise)
    figures = {
        "windows": opts.windows,
        "cfg_scale": scale,
        "sync_r_vae": lip_sync_r(reader, decode_windows(teacher, w.anchor, w.x0), w.opening),
        "sync_r_teacher": lip_sync_r(reader, decode_windows(teacher, w.anchor, taught), w.opening),
        "sync_r_student": lip_sync_r(reader, decode_windows(student, w.anchor, rolled), w.opening),
    }
    figures["gap"] = figures["sync_r_student"] - figures["sync_r_teacher"]
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
