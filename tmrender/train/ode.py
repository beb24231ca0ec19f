"""Training recipe of the ODE initialisation of the student (`tmrender train ode`), as
CausVid does it: the sparse-causal student regresses the teacher's probability-flow ODE.

1. Trajectories (once, into the run folder; the expensive part): for `pairs` windows of
   the training clips (and `val_pairs` of held-out clips) the teacher (`--init`, the
   teacher stage's export) samples from noise with audio CFG (`teacher.sample_teacher`,
   12 Euler steps x 2), recording x at the student's timesteps
   `SamplerConfig.student_sigmas` (tm-mini: 1.0, which is the noise itself, and 0.75, a
   point of the Euler grid) and its final sample x0. Stored in float16.
2. Regression: the student is the same WanDiT started from the teacher's weights, run
   through the renderer's own chunk loop (`tmrender.diffusion.stream`): the anchor's K/V
   cached once (`start_stream`), each chunk of C latent frames denoised against anchor +
   previous chunk (`forward_chunk`), and the cache then refreshed with the clean chunk at
   `SamplerConfig.context_timestep` (`commit_chunk`). During training the clean context
   chunk is the teacher's own sample of that chunk (teacher forcing, `teacher_forced_x0`),
   and every window sample takes one of the student's timesteps at random: input x at
   that timestep, for all its chunks. Loss in x0 space (CausVid's regression): the
   student's x0 = x_t - t v against the teacher's x0, weighted `1 + mouth_weight` in the
   mouth box. The audio projection and the silence embedding train with it.
   Because the streaming path is differentiable and equals the block-causal clip
   forward (a DiT test), this is the student's inference computation, gradients
   included, at the cost of one extra forward per context chunk.

Validation on held-out pairs: the x0 error at each student timestep (teacher-forced),
the error of a real 2-step rollout (`stream.student_rollout`: the renderer's loop, own
outputs as context, in the checkpoint's context mode) against the teacher's sample, and
every `sample_every` rounds the lip sync of decoded rollouts (`sync_r`) next to that of
the teacher's samples (`sync_r_teacher`) and of VAE reconstructions (`sync_r_vae`), read
by the mouth reader (an instrument only).

Export: a tmrender checkpoint whose `dit` is the student.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import Tensor

from tmrender.diffusion.stream import StreamPlan, student_rollout, teacher_forced_x0
from tmrender.errors import UserInputError
from tmrender.files import atomic_write, sha256_file
from tmrender.models.checkpoint import load_checkpoint, save_checkpoint
from tmrender.models.talking import TalkingModel
from tmrender.train.latents import (
    LatentCache,
    WindowBatch,
    frozen_digest,
    gather_windows,
    load_or_build_cache,
    pick_references,
    split_clips,
    window_starts,
)
from tmrender.train.windows import (
    DiffusionStage,
    autocast_for,
    decode_windows,
    device_noise,
    diffusion_networks,
    lip_sync_r,
    load_reader,
    mouth_weights,
    sample_teacher,
    weighted_mse,
    window_tokens,
)

TRAJECTORY_VERSION = 1


@dataclass(frozen=True)
class OdeOptions:
    """What the ode stage regresses on and how it is validated (LoopOptions: the loop)."""

    # data
    batch: int = 8  # windows per step (use 64-256 on a GPU)
    chunks: int = 4  # chunks of C latent frames per window
    refs_per_clip: int = 8
    val_clips: int = 8  # the last clips of the train split, never trained on
    # teacher trajectories (precomputed once)
    pairs: int = 1024
    val_pairs: int = 16
    teacher_steps: int = 12  # Euler steps; with CFG 2 evaluations each (24 NFE)
    pair_batch: int = 16  # windows per teacher sampling call (256+ on a GPU)
    cfg_scale: float | None = None  # the teacher's audio guidance (None: its sampler's)
    seed: int = 0
    # student
    student: str = ""  # start the student from this export's DiT ("" = the teacher's)
    mouth_weight: float = 4.0
    # validation
    sample_every: int = 2  # validation rounds between lip-sync checks; 0 = never
    reader: str = ""  # mouth reader weights ("" = the shipped ones, if present)


# ---- trajectories --------------------------------------------------------------------------


@dataclass(frozen=True)
class Trajectories:
    """Teacher ODE samples of P windows: starts/refs (P,) int64 (window and reference of
    the latent cache), noise / mid / x0 (P, C, L, h, w) float16: x at t = 1, x at the
    student's second timestep `mid_t`, and the teacher's final sample."""

    starts: Tensor
    refs: Tensor
    noise: Tensor
    mid: Tensor
    x0: Tensor

    def to(self, device: torch.device | str) -> Trajectories:
        """The latents on `device`; starts and refs (indices) stay on the CPU."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Trajectories(
            **{k: v if k in ("starts", "refs") else v.to(device) for k, v in moved.items()}
        )

    def state(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name).cpu() for f in fields(self)}

    def __len__(self) -> int:
        return self.starts.shape[0]


@torch.no_grad()
def sample_trajectories(
    teacher: TalkingModel,
    cache: LatentCache,
    clips: list[int],
    count: int,
    chunks: int,
    steps: int,
    batch: int,
    gen: torch.Generator,
    on_batch: Callable[[int, int], None] | None = None,
    cfg_scale: float | None = None,
) -> Trajectories:
    """`count` windows of `clips`, each with a reference outside it, sampled by the teacher
    (audio guidance `cfg_scale`, None: its sampler's) from seeded noise, recording the
    student's second timestep (see `Trajectories`)."""
    cfg = teacher.cfg
    c, fpl = cfg.chunk_latent_frames, cfg.frames_per_latent
    length = chunks * c
    sigma_mid = cfg.sampler.student_sigmas[1]
    table = window_starts(cache, clips, length)
    starts = table[torch.randint(len(table), (count,), generator=gen)]
    refs = pick_references(cache, starts, length, gen, fpl)
    parts: dict[str, list[Tensor]] = {"noise": [], "mid": [], "x0": []}
    device = cache.device
    for i in range(0, count, batch):
        w = gather_windows(cache, starts[i : i + batch], refs[i : i + batch], length, c)
        noise = device_noise(w.x0.shape, gen, device)
        with autocast_for(device):
            x0, trajectory = sample_teacher(
                teacher, w, noise, steps, cfg_scale=cfg_scale, record=[sigma_mid]
            )
        for name, value in (("noise", noise), ("mid", trajectory[sigma_mid]), ("x0", x0)):
            parts[name].append(value.half().cpu())
        if on_batch is not None:
            on_batch(min(i + batch, count), count)
    return Trajectories(starts, refs, **{k: torch.cat(v) for k, v in parts.items()})


def trajectory_key(init: Path, cache: LatentCache, opts: OdeOptions, held_out: list[int]) -> str:
    """What a trajectory file depends on: the teacher file, the cache, the windows drawn."""
    parts = {
        "version": TRAJECTORY_VERSION,
        "teacher": sha256_file(init),
        "cache": cache.key,
        "held_out": held_out,
        **{k: getattr(opts, k) for k in ("chunks", "pairs", "val_pairs", "teacher_steps", "seed")},
    }
    if opts.cfg_scale is not None:  # keys of files sampled before the option stay valid
        parts["cfg_scale"] = opts.cfg_scale
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def load_or_sample_trajectories(
    path: Path,
    init: Path,
    teacher: TalkingModel,
    cache: LatentCache,
    opts: OdeOptions,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[Trajectories, Trajectories]:
    """(training, held-out) trajectories from `path` when its key matches, else sampled
    by `teacher` (on its device) and written there."""
    train_clips, val_clips = split_clips(cache, opts.val_clips)
    key = trajectory_key(init, cache, opts, val_clips)
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("key") == key:
            return Trajectories(**state["train"]), Trajectories(**state["val"])
    gen = torch.Generator().manual_seed(opts.seed)
    was_training = teacher.training
    teacher.eval()
    val = sample_trajectories(
        teacher,
        cache,
        val_clips,
        opts.val_pairs,
        opts.chunks,
        opts.teacher_steps,
        opts.pair_batch,
        gen,
        cfg_scale=opts.cfg_scale,
    )
    train = sample_trajectories(
        teacher,
        cache,
        train_clips,
        opts.pairs,
        opts.chunks,
        opts.teacher_steps,
        opts.pair_batch,
        gen,
        on_batch,
        cfg_scale=opts.cfg_scale,
    )
    teacher.train(was_training)
    with atomic_write(path) as partial:
        torch.save({"key": key, "train": train.state(), "val": val.state()}, partial)
    return train, val


# ---- batches and loss ----------------------------------------------------------------------


@dataclass(frozen=True)
class OdeBatch:
    """Windows with the student's input x (B, C, L, h, w) at its timestep t (B,) and the
    teacher's sample target (B, C, L, h, w); level (B,) int64 which student timestep."""

    windows: WindowBatch
    x: Tensor
    t: Tensor
    target: Tensor
    level: Tensor


def make_ode_batch(
    cache: LatentCache,
    pairs: Trajectories,
    rows: Tensor,
    level: Tensor,
    sigmas: tuple[float, float],
    chunk_frames: int,
) -> OdeBatch:
    """The pairs `rows` (B,) (CPU) at student timestep numbers `level` (B,) (0: t = sigmas[0],
    the noise; 1: sigmas[1], the teacher's trajectory point)."""
    device = cache.device
    length = pairs.noise.shape[2]
    w = gather_windows(cache, pairs.starts[rows], pairs.refs[rows], length, chunk_frames)
    idx = rows.to(pairs.noise.device)
    first = (level == 0).to(device)[:, None, None, None, None]
    x = torch.where(first, pairs.noise[idx].to(device), pairs.mid[idx].to(device)).float()
    t = torch.tensor(sigmas, device=device)[level.to(device)]
    return OdeBatch(w, x, t, pairs.x0[idx].to(device).float(), level)


def ode_regression_loss(
    model: TalkingModel, batch: OdeBatch, mouth_weight: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """x0 regression of the student on the teacher's samples (CausVid's ODE loss), mouth
    weighted, the samples as the context (teacher forcing, refreshed at the sampler's
    `context_timestep`). Figures: the unweighted x0 error at each student timestep level."""
    w = batch.windows
    tokens = window_tokens(model, w)
    plan = StreamPlan.for_sampler(model.cfg.sampler)
    pred = teacher_forced_x0(model.dit, plan, w.anchor, batch.x, batch.t, tokens, batch.target)
    loss = weighted_mse(pred, batch.target, mouth_weights(w, mouth_weight))
    err = (pred.detach() - batch.target).pow(2).mean((1, 2, 3, 4))
    figures = {}
    for level in (0, 1):
        mask = (batch.level == level).to(err.device)
        figures[f"err_t{level}"] = (err * mask).sum() / mask.sum().clamp(min=1)
    return loss, figures


# ---- the stage -----------------------------------------------------------------------------


def start_student_from(model: TalkingModel, path: Path, device: str) -> None:
    """Replace model's DiT side (DiT, audio projection, silence embedding) with the one in
    the export at `path` (a student to fine-tune); its VAE and audio encoder must be the
    teacher's."""
    other, _ = load_checkpoint(path, device=device)
    if frozen_digest(other) != frozen_digest(model):
        raise UserInputError(f"{path} has another VAE or audio encoder than the teacher")
    mine, theirs = diffusion_networks(model), diffusion_networks(other)
    for name in ("dit", "audio_proj", "silence"):
        mine[name].load_state_dict(theirs[name].state_dict())


class OdeStage(DiffusionStage):
    """`tmrender train ode`: see the module docstring. `init`: the teacher's export."""

    name = "ode"

    def __init__(
        self,
        data: Path,
        out_dir: Path,
        init: Path,
        opts: OdeOptions,
        device: str = "cpu",
        cache_path: Path | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.opts = opts
        self.init = Path(init)
        self.model, _ = load_checkpoint(self.init, device=device)
        if opts.cfg_scale is not None:  # the student's config records its targets' guidance
            sampler = replace(self.model.cfg.sampler, cfg_scale=opts.cfg_scale)
            self.model.cfg = replace(self.model.cfg, sampler=sampler)
        cfg = self.model.cfg
        self.c, self.fpl = cfg.chunk_latent_frames, cfg.frames_per_latent
        self.sigmas = cfg.sampler.student_sigmas
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)

        def report(what: str):
            return None if on_progress is None else (lambda i, n: on_progress(what, i, n))

        cache = load_or_build_cache(
            cache_path or out_dir / "latents.pt",
            self.model,
            data,
            refs_per_clip=opts.refs_per_clip,
            on_clip=report("latents"),
        )
        self.cache = cache.to(device)
        self.train_pairs, self.val_pairs = load_or_sample_trajectories(
            out_dir / "trajectories.pt",
            self.init,
            self.model,
            self.cache,
            opts,
            report("trajectories"),
        )
        if opts.student:
            start_student_from(self.model, Path(opts.student), device)
        if self.model.cfg.sampler.context != "refresh":
            raise UserInputError(
                "the ode stage trains a student that refreshes its context; "
                f"{init} streams with {self.model.cfg.sampler.context!r}"
            )
        self.reader = load_reader(opts.reader)
        self.rounds = 0
        self.last_val: dict[str, float] = {}

    # -- Stage protocol (networks, optimizers, updates: DiffusionStage)
    def batch(self, gen: torch.Generator, device: torch.device) -> OdeBatch:
        self._to(device)
        b = self.opts.batch
        rows = torch.randint(len(self.train_pairs), (b,), generator=gen)
        level = torch.randint(2, (b,), generator=gen)
        return make_ode_batch(self.cache, self.train_pairs, rows, level, self.sigmas, self.c)

    def loss(self, opt_name: str, batch: OdeBatch) -> tuple[Tensor, dict[str, float]]:
        return ode_regression_loss(self.model, batch, self.opts.mouth_weight)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        device = next(self.model.dit.parameters()).device
        self._to(device)
        m, o, pairs = self.model, self.opts, self.val_pairs
        rows = torch.arange(len(pairs))
        figures: dict[str, float] = {}
        with autocast_for(device):
            for level in (0, 1):
                batch = make_ode_batch(
                    self.cache, pairs, rows, torch.full_like(rows, level), self.sigmas, self.c
                )
                _, fig = ode_regression_loss(m, batch, o.mouth_weight)
                figures[f"err_t{level}"] = float(fig[f"err_t{level}"])
            w, target = batch.windows, batch.target
            plan = StreamPlan.for_sampler(m.cfg.sampler)
            tokens = window_tokens(m, w)
            _, x0 = student_rollout(m.dit, plan, w.anchor, tokens, pairs.noise.to(device).float())
            figures["rollout_err"] = float((x0 - target).pow(2).mean())
            figures["rollout_mouth_err"] = float(weighted_mse(x0, target, w.mouth + 1e-6))
            self.rounds += 1
            if (
                self.reader is not None
                and o.sample_every
                and (self.rounds - 1) % o.sample_every == 0
            ):
                figures["sync_r"] = lip_sync_r(
                    self.reader, decode_windows(m, w.anchor, x0), w.opening
                )
                figures["sync_r_teacher"] = lip_sync_r(
                    self.reader, decode_windows(m, w.anchor, target), w.opening
                )
                figures["sync_r_vae"] = lip_sync_r(
                    self.reader, decode_windows(m, w.anchor, w.x0), w.opening
                )
        self.last_val = figures
        return figures

    def export(self, path: Path) -> dict:
        extra = {
            "stage": "ode",
            "init": self.init.name,
            "pairs": len(self.train_pairs),
            "cfg_scale": self.model.cfg.sampler.cfg_scale,
            "student_start": Path(self.opts.student).name if self.opts.student else "teacher",
            "student_sigmas": list(self.sigmas),
            "validation": self.last_val,
        }
        with atomic_write(path) as partial:
            save_checkpoint(self.model, partial, trained=True, extra_meta=extra)
        return extra

    def _to(self, device: torch.device) -> None:
        if self.cache.device != device:
            self.cache = self.cache.to(device)
        if self.train_pairs.noise.device != device:
            self.train_pairs = self.train_pairs.to(device)
            self.val_pairs = self.val_pairs.to(device)
