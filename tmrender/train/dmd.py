"""Training recipe of the distilled student (`tmrender train dmd`): asymmetric distribution
matching distillation, a bidirectional teacher -> the sparse-causal 2-step student, as
TalkingMachines modifies CausVid (DMD: Yin et al. 2024, "One-step Diffusion with
Distribution Matching Distillation"; DMD2: Yin et al. 2024; CausVid: Yin et al. 2025).

Networks: the generator is the student (the ode stage's export: DiT, audio projection and
silence embedding trained); the real score is the frozen teacher (the teacher stage's
export) with classifier-free guidance on audio; the fake score is a copy of the teacher's
DiT trained online, by flow matching, on the student's outputs. No GAN.

1. Generation (`generate_clips`): a training clip is a window of K chunks of C latent
   frames with a reference from another moment of the clip as the anchor. The student
   produces every chunk as the renderer does (`start_stream`, 2 steps per chunk at
   `student_sigmas`, then the chunk becomes the context of the next one), so what it sees
   in training is what it sees when it streams. The context is mixed: with probability
   `real_context` a sample keeps its first r chunks real (r uniform in 1..K-1; teacher
   forcing) and the student continues from them, otherwise it rolls out from the anchor
   alone. The gradient runs through one denoising step per chunk, the same for the whole
   batch (`exit_step`, random: DMD2's backward simulation); the steps before it and the
   context commits run without gradient.
2. Distribution matching (`dmd_loss`): the clip [real prefix | student chunks] is noised
   at ONE timestep t for all its chunks; x0 predictions of the real score (teacher, CFG)
   and of the fake score give the DMD gradient (DMD paper eq. 7, in x0 form:
   grad = x0_fake - x0_real, normalised by mean |x0 - x0_real| per sample, as
   CausVid / Self-Forcing's `_compute_kl_grad`), applied to the student's chunks only.
3. Regression (`regression_loss`): the student's teacher-forced x0 against the teacher's
   ODE samples (the ode stage's trajectories), CausVid's ODE loss, kept as a regulariser.
   Generator loss = dmd + reg_weight * reg, mouth-weighted.
4. Critic (`critic_loss`): the fake score's flow-matching loss on the student's clips
   (detached), `critic_updates` of them before each generator update.

Context K/V (`DmdOptions.context`): "refresh" commits a finished chunk by re-running it
at `SamplerConfig.context_timestep` (`commit_chunk`, one extra forward per chunk);
"last_step" keeps the K/V of the chunk's last denoising step (`forward_chunk(...,
return_kv=True)` + `commit_kv`), the real-prefix chunks then noised to that step's
timestep. A student trained one way must stream the same way (`SamplerConfig.context`).

Validation on held-out pairs of the trajectories (clips never trained on): the student's
2-step rollout against the teacher's samples (`rollout_err`, `rollout_mouth_err`) and,
read by the mouth reader (an instrument, never in a loss), the lip sync of the decoded
rollouts (`sync_r`) next to the teacher's samples (`sync_r_teacher`) and VAE
reconstructions (`sync_r_vae`); `sync_gap` = sync_r - sync_r_teacher.

Export: a tmrender checkpoint whose `dit` is the student.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from tmrender.config import ModelConfig, SamplerConfig
from tmrender.data.corpus import list_clips
from tmrender.diffusion.flow import interpolate, shift_timesteps, x0_from_velocity
from tmrender.diffusion.stream import (
    CONTEXTS,
    Context,
    StreamPlan,
    student_rollout,
    teacher_forced_x0,
)
from tmrender.errors import UserInputError
from tmrender.files import atomic_write
from tmrender.models.checkpoint import load_checkpoint, save_checkpoint
from tmrender.models.dit import WanDiT
from tmrender.models.talking import TalkingModel
from tmrender.train.latents import (
    LatentCache,
    WindowBatch,
    cache_key,
    gather_windows,
    load_or_build_cache,
    sample_windows,
    split_clips,
    window_starts,
)
from tmrender.train.ode import OdeOptions, Trajectories, load_or_sample_trajectories
from tmrender.train.windows import (
    GuidedVelocity,
    autocast_for,
    decode_windows,
    device_noise,
    diffusion_networks,
    diffusion_parameters,
    lip_sync_r,
    load_reader,
    mouth_weights,
    weighted_mse,
    window_tokens,
    window_velocity,
)


@dataclass(frozen=True)
class DmdOptions:
    """What the dmd stage trains on and how (LoopOptions: the loop; steps = generator
    updates)."""

    # data
    batch: int = 8  # clips per update (use 64-256 on a GPU)
    chunks: int = 4  # chunks of C latent frames per clip (the teacher's window)
    refs_per_clip: int = 8
    val_clips: int = 8  # the last clips of the train split (the ode stage's held-out ones)
    # distillation
    critic_updates: int = 3  # fake-score updates before each generator update
    real_context: float = 0.5  # probability of a real prefix of 1..K-1 chunks as context
    context: Context = "refresh"  # context K/V: "refresh" (commit_chunk) or "last_step" (commit_kv)
    cfg_scale: float | None = None  # audio guidance of the real score (None: the sampler's)
    t_min: float = 0.02  # DMD timesteps: shift(U(t_min, t_max)), one per clip
    t_max: float = 0.98
    reg_weight: float = 1.0  # weight of the ODE regression in the generator loss
    reg_batch: int = 8  # trajectory pairs per generator update
    mouth_weight: float = 4.0  # extra weight inside the mouth box (both losses, critic too)
    # teacher trajectories, when no ode run folder is given (as the ode stage samples them)
    pairs: int = 1024
    val_pairs: int = 16
    teacher_steps: int = 12
    pair_batch: int = 16
    seed: int = 0
    # validation
    sample_every: int = 1  # validation rounds between lip-sync checks; 0 = never
    reader: str = ""  # mouth reader weights ("" = the shipped ones, if present)

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise UserInputError(f"--context must be one of {', '.join(CONTEXTS)}")
        if self.chunks < 2:
            raise UserInputError("--chunks must be at least 2 (a chunk and its context)")
        if self.critic_updates < 0 or not 0 <= self.real_context <= 1:
            raise UserInputError("--critic-updates >= 0 and --real-context in [0, 1]")
        if not 0 < self.t_min < self.t_max <= 1:
            raise UserInputError("need 0 < t_min < t_max <= 1")


# ---- batches -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutPlan:
    """How the student streams a batch of clips: noise (B, C, L, h, w) its input at
    t = 1; prefix (B,) int64 real chunks at the start (0: its own outputs throughout);
    exit_step: which student step carries the gradient; context_eps (B, C, L, h, w):
    noise of real context chunks in "last_step" mode."""

    noise: Tensor
    prefix: Tensor
    exit_step: int
    context_eps: Tensor

    @classmethod
    def own_outputs(cls, noise: Tensor, steps: int) -> RolloutPlan:
        """The renderer's loop: no real context, the last step's output."""
        prefix = torch.zeros(noise.shape[0], dtype=torch.long, device=noise.device)
        return cls(noise, prefix, steps - 1, torch.zeros_like(noise))


@dataclass(frozen=True)
class DmdBatch:
    """One update's randomness, drawn from the loop's CPU generator (so resume is exact).

    windows: K-chunk training clips; rollout: the student's noise and context mix;
    t (B,): the score timestep; eps (B, C, L, h, w): its noise; reg_rows / reg_level
    (R,): trajectory pairs and student timestep numbers; reg_eps (R, C, Lp, h, w): noise
    of their context chunks in "last_step" mode.
    """

    windows: WindowBatch
    rollout: RolloutPlan
    t: Tensor
    eps: Tensor
    reg_rows: Tensor
    reg_level: Tensor
    reg_eps: Tensor


def make_dmd_batch(
    windows: WindowBatch,
    gen: torch.Generator,
    opts: DmdOptions,
    sampler: SamplerConfig,
    chunk_frames: int,
    pairs: Trajectories,
) -> DmdBatch:
    """Every random number of one update for `windows` and the regression on `pairs`
    (see `DmdBatch`)."""
    b = windows.latents.shape[0]
    device = windows.latents.device
    chunks = windows.x0.shape[2] // chunk_frames
    with_prefix = torch.rand(b, generator=gen) < opts.real_context
    length = torch.randint(1, chunks, (b,), generator=gen)
    prefix = torch.where(with_prefix, length, torch.zeros_like(length))
    exit_step = int(torch.randint(len(sampler.student_sigmas), (1,), generator=gen))
    u = opts.t_min + (opts.t_max - opts.t_min) * torch.rand(b, generator=gen)
    rollout = RolloutPlan(
        noise=device_noise(windows.x0.shape, gen, device),
        prefix=prefix.to(device),
        exit_step=exit_step,
        context_eps=device_noise(windows.x0.shape, gen, device),
    )
    return DmdBatch(
        windows=windows,
        rollout=rollout,
        t=shift_timesteps(u, sampler.shift).to(device),
        eps=device_noise(windows.x0.shape, gen, device),
        reg_rows=torch.randint(len(pairs), (opts.reg_batch,), generator=gen),
        reg_level=torch.randint(len(sampler.student_sigmas), (opts.reg_batch,), generator=gen),
        reg_eps=device_noise((opts.reg_batch, *pairs.noise.shape[1:]), gen, device),
    )


def real_frames(prefix: Tensor, chunks: int, chunk_frames: int) -> Tensor:
    """prefix (B,) -> bool (B, 1, L, 1, 1): True on the frames of the real prefix chunks."""
    chunk = torch.arange(chunks * chunk_frames, device=prefix.device) // chunk_frames
    return (chunk[None] < prefix[:, None]).view(prefix.shape[0], 1, -1, 1, 1)


# ---- the student's generation --------------------------------------------------------------


def generate_clips(
    dit: WanDiT,
    anchor: Tensor,
    tokens: Tensor,
    real: Tensor,
    plan: RolloutPlan,
    sampler: SamplerConfig,
    context: Context,
) -> tuple[Tensor, Tensor]:
    """The student streams every chunk of the clips (module docstring, step 1), through
    the renderer's loop (`stream.student_rollout`).

    anchor (B, C, 1, h, w); tokens (B, L, N, D) the student's audio tokens; real (B, C,
    L, h, w) the clips' real latents (the prefix context). Context chunk k is real where
    k < plan.prefix, else the student's own output. Returns (x0 at the plan's exit step,
    with its graph when gradients are on; the final 2-step samples, no graph), each (B,
    C, L, h, w)."""
    stream_plan = StreamPlan.for_sampler(sampler, context).exiting_at(plan.exit_step)
    chunks = real.shape[2] // dit.chunk_frames
    use_real = plan.prefix[:, None] > torch.arange(chunks, device=plan.prefix.device)
    return student_rollout(
        dit, stream_plan, anchor, tokens, plan.noise, real, use_real, plan.context_eps
    )


# ---- losses --------------------------------------------------------------------------------


def dmd_loss(
    x0: Tensor, x0_real: Tensor, x0_fake: Tensor, weight: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Distribution matching loss whose gradient w.r.t. x0 is the DMD gradient (DMD paper
    eq. 7 in x0 form, normalised as DMD2/CausVid's `_compute_kl_grad`):

        grad = (x0_fake - x0_real) / mean_w |x0 - x0_real|   (per sample)
        loss = 1/2 sum_w (x0 - sg(x0 - grad))^2 / sum_w 1

    x0 (B, C, L, h, w) the generator's sample (with graph); x0_real / x0_fake the score
    networks' x0 predictions on its noised version; weight (B, 1, L, h, w) >= 0, zero on
    frames that are not the generator's. Figures: "dmd_grad" mean |grad| where weighted."""
    with torch.no_grad():
        w = weight.expand_as(x0)
        per_sample = (w * (x0 - x0_real).abs()).sum((1, 2, 3, 4)) / w.sum((1, 2, 3, 4)).clamp(
            min=1e-8
        )
        grad = (x0_fake - x0_real) / per_sample.clamp(min=1e-6).view(-1, 1, 1, 1, 1)
        grad = torch.nan_to_num(grad)
        target = x0 - grad
    loss = 0.5 * weighted_mse(x0, target, weight)
    mean_grad = (w * grad.abs()).sum() / w.sum().clamp(min=1e-8)
    return loss, {"dmd_grad": mean_grad.detach()}


def score_x0(
    dit: WanDiT,
    anchor: Tensor,
    x_t: Tensor,
    t: Tensor,
    tokens: Tensor,
    face: Tensor | None,
    cfg_scale: float = 1.0,
) -> Tensor:
    """x0 prediction of a bidirectional score network on the noised clip x_t (B, C, L, h,
    w) at t (B,), with audio CFG v = v_u + s (v_c - v_u) when cfg_scale != 1 (both
    branches in one doubled-batch forward, `teacher.GuidedVelocity`)."""
    fn = GuidedVelocity(dit, anchor, tokens, face, cfg_scale != 1.0)
    v = fn(x_t, t, True)
    if cfg_scale != 1.0:
        v_uncond = fn(x_t, t, False)
        v = v_uncond + cfg_scale * (v - v_uncond)
    return x0_from_velocity(x_t.float(), v.float(), t)


def critic_loss(
    fake: WanDiT,
    anchor: Tensor,
    clip: Tensor,
    t: Tensor,
    eps: Tensor,
    tokens: Tensor,
    face: Tensor,
    weight: Tensor,
) -> Tensor:
    """The fake score's flow-matching loss on the (detached) clip (B, C, L, h, w):
    velocity eps - clip at x_t = (1 - t) clip + t eps, weighted (B, 1, L, h, w)."""
    x_t = interpolate(clip, eps, t)
    v = window_velocity(fake, anchor, x_t, t, tokens, face)
    return weighted_mse(v, eps - clip, weight)


def regression_loss(
    model: TalkingModel,
    windows: WindowBatch,
    x: Tensor,
    t: Tensor,
    target: Tensor,
    eps: Tensor,
    opts: DmdOptions,
) -> Tensor:
    """CausVid's ODE regression of the student: teacher-forced x0 from x (B, C, L, h, w)
    at t (B,) against the teacher's samples `target`; the context chunks are the targets,
    clean ("refresh") or noised with `eps` to the last student timestep ("last_step")."""
    plan = StreamPlan.for_sampler(model.cfg.sampler, opts.context)
    tokens = window_tokens(model, windows)
    pred = teacher_forced_x0(model.dit, plan, windows.anchor, x, t, tokens, target, eps)
    return weighted_mse(pred, target, mouth_weights(windows, opts.mouth_weight))


# ---- the stage -----------------------------------------------------------------------------


class DmdStage:
    """`tmrender train dmd`: see the module docstring.

    init: the ode stage's export (the student); teacher: the teacher stage's export;
    ode_run: the ode stage's run folder (its latents.pt and trajectories.pt are reused),
    or None to build both here."""

    name = "dmd"
    VAL_SEED = 4321

    def __init__(
        self,
        data: Path,
        out_dir: Path,
        init: Path,
        teacher: Path,
        opts: DmdOptions,
        ode_run: Path | None = None,
        device: str = "cpu",
        on_progress=None,
    ) -> None:
        self.opts = opts
        self.init, self.teacher_path = Path(init), Path(teacher)
        self.student, self.init_meta = load_checkpoint(self.init, device=device)
        self.teacher, _ = load_checkpoint(self.teacher_path, device=device)
        check_same_family(self.student, self.teacher)
        self.teacher.requires_grad_(False)
        self.fake = copy.deepcopy(self.teacher.dit).requires_grad_(True)
        cfg = self.student.cfg
        self.c, self.fpl = cfg.chunk_latent_frames, cfg.frames_per_latent
        self.length = opts.chunks * self.c
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.cache = self._cache(data, out_dir, ode_run, on_progress).to(device)
        self.train_pairs, self.val_pairs = self._trajectories(out_dir, ode_run, on_progress)
        train_clips, self.val_clips = split_clips(self.cache, opts.val_clips)
        self.train_starts = window_starts(self.cache, train_clips, self.length)
        self.reader = load_reader(opts.reader)
        self.rounds = 0
        self.last_val: dict[str, float] = {}
        self.teacher_sync: float | None = None

    # -- setup
    def _cache(self, data: Path, out_dir: Path, ode_run: Path | None, on_progress):
        """The ode run's latent cache when given (it must be this corpus's and model's:
        the trajectories index into it), else one in this run folder. Keyed with the
        teacher, as the ode stage keys it (the student's config may differ in its
        streaming context mode only)."""
        report = None if on_progress is None else (lambda i, n: on_progress("latents", i, n))
        if ode_run is None:
            return load_or_build_cache(
                out_dir / "latents.pt",
                self.teacher,
                data,
                refs_per_clip=self.opts.refs_per_clip,
                on_clip=report,
            )
        path = Path(ode_run) / "latents.pt"
        expected = cache_key(self.teacher, list_clips(data, "train"), self.opts.refs_per_clip)
        if not path.exists():
            raise UserInputError(f"no latent cache in the ode run folder {ode_run}")
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if state.get("key") != expected:
            raise UserInputError(
                f"{path} was made for another corpus, VAE or --refs-per-clip than --data and "
                "--init; give the ode stage's --data, or leave out --ode-run"
            )
        return LatentCache.from_state(state)

    def _trajectories(self, out_dir: Path, ode_run: Path | None, on_progress):
        if ode_run is not None:
            path = Path(ode_run) / "trajectories.pt"
            if not path.exists():
                raise UserInputError(f"no trajectories.pt in the ode run folder {ode_run}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            train, val = Trajectories(**state["train"]), Trajectories(**state["val"])
        else:
            o = self.opts
            ode_opts = OdeOptions(
                chunks=o.chunks,
                refs_per_clip=o.refs_per_clip,
                val_clips=o.val_clips,
                pairs=o.pairs,
                val_pairs=o.val_pairs,
                teacher_steps=o.teacher_steps,
                pair_batch=o.pair_batch,
                cfg_scale=o.cfg_scale,
                seed=o.seed,
            )
            report = None
            if on_progress is not None:
                report = lambda i, n: on_progress("trajectories", i, n)  # noqa: E731
            train, val = load_or_sample_trajectories(
                out_dir / "trajectories.pt",
                self.teacher_path,
                self.teacher,
                self.cache,
                ode_opts,
                report,
            )
        frames = int(self.cache.latents.shape[0])
        if int(train.starts.max()) + train.noise.shape[2] > frames:
            raise UserInputError("the trajectories do not fit the latent cache (another corpus?)")
        device = self.cache.device
        return train.to(device), val.to(device)

    # -- Stage protocol
    def networks(self) -> dict[str, nn.Module]:
        return {**diffusion_networks(self.student), "fake": self.fake}

    def optimizers(self) -> dict[str, list[nn.Parameter]]:
        generator = diffusion_parameters(self.student)
        return {"generator": generator, "critic": list(self.fake.parameters())}

    def updates(self, step: int) -> list[str]:
        return ["critic"] * self.opts.critic_updates + ["generator"]

    def batch(self, gen: torch.Generator, device: torch.device) -> DmdBatch:
        self._to(device)
        w = sample_windows(
            self.cache, self.train_starts, self.opts.batch, self.length, self.c, self.fpl, gen
        )
        return make_dmd_batch(w, gen, self.opts, self.student.cfg.sampler, self.c, self.train_pairs)

    def loss(self, opt_name: str, batch: DmdBatch) -> tuple[Tensor, dict[str, float]]:
        if opt_name == "critic":
            return self.critic_step(batch)
        return self.generator_step(batch)

    # -- the two updates
    def _generate(self, batch: DmdBatch, plan: RolloutPlan) -> tuple[Tensor, Tensor]:
        """The student's clips under `plan` -> (clip [real prefix | student's exit-step
        x0] (B, C, L, h, w), weight on the student's frames (B, 1, L, h, w))."""
        s, w, o = self.student, batch.windows, self.opts
        tokens = window_tokens(s, w)
        x0, _ = generate_clips(s.dit, w.anchor, tokens, w.x0, plan, s.cfg.sampler, o.context)
        is_real = real_frames(plan.prefix, o.chunks, self.c)
        clip = torch.where(is_real, w.x0.float(), x0)
        weight = (~is_real).float() * mouth_weights(w, o.mouth_weight)
        return clip, weight

    def critic_step(self, batch: DmdBatch) -> tuple[Tensor, dict[str, float]]:
        """Fake-score flow matching on the student's clips (generated without gradient,
        their final 2-step outputs)."""
        w, o = batch.windows, self.opts
        last = len(self.student.cfg.sampler.student_sigmas) - 1
        with torch.no_grad():
            clip, _ = self._generate(batch, replace(batch.rollout, exit_step=last))
            tokens = window_tokens(self.teacher, w)
        weight = mouth_weights(w, o.mouth_weight)
        loss = critic_loss(self.fake, w.anchor, clip, batch.t, batch.eps, tokens, w.face, weight)
        return loss, {}

    def generator_step(self, batch: DmdBatch) -> tuple[Tensor, dict[str, float]]:
        """DMD through the student's chunks + the ODE regression."""
        w, o, teacher = batch.windows, self.opts, self.teacher
        clip, weight = self._generate(batch, batch.rollout)
        with torch.no_grad():
            tokens = window_tokens(teacher, w)
            x_t = interpolate(clip.detach(), batch.eps, batch.t)
            scale = teacher.cfg.sampler.cfg_scale if o.cfg_scale is None else o.cfg_scale
            x0_real = score_x0(teacher.dit, w.anchor, x_t, batch.t, tokens, w.face, scale)
            x0_fake = score_x0(self.fake, w.anchor, x_t, batch.t, tokens, w.face)
        dmd, figures = dmd_loss(clip, x0_real, x0_fake, weight)
        reg = self._regression(batch)
        figures.update({"dmd_loss": dmd.detach(), "reg_loss": reg.detach()})
        return dmd + o.reg_weight * reg, figures

    def _regression(self, batch: DmdBatch) -> Tensor:
        level = batch.reg_level.to(self.cache.device)
        return self._pair_regression(self.train_pairs, batch.reg_rows, level, batch.reg_eps)

    def _pair_regression(
        self, pairs: Trajectories, rows: Tensor, level: Tensor, eps: Tensor
    ) -> Tensor:
        """`regression_loss` on trajectory pairs `rows` (CPU) at student timestep numbers
        `level` (B,), context noise `eps`."""
        w = gather_windows(
            self.cache, pairs.starts[rows], pairs.refs[rows], pairs.noise.shape[2], self.c
        )
        idx = rows.to(pairs.noise.device)
        first = (level == 0)[:, None, None, None, None]
        x = torch.where(first, pairs.noise[idx], pairs.mid[idx]).float()
        sigmas = torch.tensor(self.student.cfg.sampler.student_sigmas, device=x.device)
        target = pairs.x0[idx].float()
        return regression_loss(self.student, w, x, sigmas[level], target, eps, self.opts)

    # -- validation and export
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Figures on the held-out trajectories (module docstring); the rollout also in the
        other context mode (`_other`), which tells whether a student trained one way
        could stream the other way."""
        device = next(self.student.dit.parameters()).device
        self._to(device)
        pairs = self.val_pairs
        w = gather_windows(self.cache, pairs.starts, pairs.refs, pairs.noise.shape[2], self.c)
        target = pairs.x0.float()
        other = CONTEXTS[1 - CONTEXTS.index(self.opts.context)]
        with autocast_for(device):
            figures = self.regression_figures(pairs)
            x0 = self.rollout(w, pairs.noise.float())
            x0_other = self.rollout(w, pairs.noise.float(), other)
        figures["rollout_err"] = float((x0 - target).pow(2).mean())
        figures["rollout_err_other"] = float((x0_other - target).pow(2).mean())
        figures["rollout_mouth_err"] = float(weighted_mse(x0, target, w.mouth + 1e-6))
        self.rounds += 1
        o = self.opts
        if self.reader is not None and o.sample_every and (self.rounds - 1) % o.sample_every == 0:
            figures.update(self.sync_figures(w, target, x0, x0_other))
        self.last_val = figures
        return figures

    def regression_figures(self, pairs: Trajectories) -> dict[str, float]:
        """The regression loss at each student timestep level on `pairs` (fixed noise)."""
        device = pairs.noise.device
        rows = torch.arange(len(pairs))
        gen = torch.Generator().manual_seed(self.VAL_SEED)
        eps = device_noise(pairs.x0.shape, gen, device)
        figures = {}
        for level in range(len(self.student.cfg.sampler.student_sigmas)):
            levels = torch.full((len(pairs),), level, dtype=torch.long, device=device)
            figures[f"reg_t{level}"] = float(self._pair_regression(pairs, rows, levels, eps))
        return figures

    def sync_figures(
        self, w: WindowBatch, target: Tensor, x0: Tensor, x0_other: Tensor
    ) -> dict[str, float]:
        """Lip sync read off decoded rollouts (both context modes) and off the teacher's
        samples of the same windows (computed once: the teacher is frozen)."""
        s = self.student

        def sync(latents: Tensor) -> float:
            return lip_sync_r(self.reader, decode_windows(s, w.anchor, latents), w.opening)

        if self.teacher_sync is None:
            self.teacher_sync = sync(target)
        figures = {"sync_r": sync(x0), "sync_r_other": sync(x0_other)}
        figures["sync_r_teacher"] = self.teacher_sync
        figures["sync_gap"] = figures["sync_r"] - self.teacher_sync
        return figures

    def rollout(self, windows: WindowBatch, noise: Tensor, context: str | None = None) -> Tensor:
        """The student's streaming 2-step samples of `windows` from `noise` (B, C, L, h, w),
        its own outputs as context: the renderer's loop, in context mode `context` (None:
        this stage's)."""
        s, o = self.student, self.opts
        plan = RolloutPlan.own_outputs(noise, len(s.cfg.sampler.student_sigmas))
        tokens = window_tokens(s, windows)
        context = context or o.context
        _, clean = generate_clips(
            s.dit, windows.anchor, tokens, windows.x0, plan, s.cfg.sampler, context
        )
        return clean

    def export(self, path: Path) -> dict:
        o = self.opts
        extra = {
            "stage": "dmd",
            "init": self.init.name,
            "teacher": self.teacher_path.name,
            "options": {f.name: getattr(o, f.name) for f in fields(o)},
            "clips": self.cache.clips,
            "validation": self.last_val,
        }
        model = self.student
        if o.context != model.cfg.sampler.context:
            model = with_context(model, o.context)
        with atomic_write(path) as partial:
            save_checkpoint(model, partial, trained=True, extra_meta=extra)
        return extra

    def _to(self, device: torch.device) -> None:
        if self.cache.device != device:
            self.cache = self.cache.to(device)
            self.train_pairs = self.train_pairs.to(device)
            self.val_pairs = self.val_pairs.to(device)
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        self.teacher.eval()


def check_same_family(student: TalkingModel, teacher: TalkingModel) -> None:
    """The student and the teacher must share every dimension (the fake score is a copy
    of the teacher's DiT and judges the student's latents); the student's streaming
    context mode may differ."""
    a = with_context_cfg(student.cfg, "refresh")
    b = with_context_cfg(teacher.cfg, "refresh")
    if a != b:
        differ = [f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]
        raise UserInputError(f"--init and --teacher have different configs ({', '.join(differ)})")


def with_context_cfg(cfg: ModelConfig, context: str) -> ModelConfig:
    """`cfg` with the sampler's streaming context mode set to `context`."""
    return replace(cfg, sampler=replace(cfg.sampler, context=context))


def with_context(model: TalkingModel, context: str) -> TalkingModel:
    """A model sharing `model`'s tensors under a config that streams with `context`."""
    with torch.device("meta"):
        out = TalkingModel(with_context_cfg(model.cfg, context))
    out.load_state_dict(model.state_dict(), assign=True)
    return out
