"""The subcommands of `tmrender train` (loaded by `tmrender.cli.train` when it runs).

Each command parses its options and calls its recipe in `tmrender.train`. The defaults
are the recipe's own: the fields of its options dataclass, and for the loop the stage's
`tmrender.train.loop.SCHEDULES` entry, so that a Python caller gets the run a command-line
caller gets. `--device auto` (CUDA if present, else the CPU) is resolved once, before a
stage loads (`tmrender.train.distributed.rank_device`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from tmrender.cli.app import console, stdout
from tmrender.cli.options import DeviceOpt
from tmrender.config import SamplerConfig
from tmrender.data.corpus import list_clips
from tmrender.errors import UserInputError
from tmrender.eval.mouth import load_mouth_reader
from tmrender.models import presets
from tmrender.models.checkpoint import load_checkpoint
from tmrender.train import audio, dmd, mouth_reader, ode, teacher, vae
from tmrender.train import export as shipped
from tmrender.train.distributed import leave, rank_device
from tmrender.train.loop import (
    SCHEDULES,
    LoopOptions,
    Schedule,
    Stage,
    copy_export,
    format_log_row,
    loop_options,
    restore_networks,
    run_stage,
)
from tmrender.train.merge import merge_networks

stages_app = typer.Typer()

# -- options shared by the stages ------------------------------------------------------------

DataOption = Annotated[
    Path, typer.Option("--data", "-d", help="Corpus folder written by `tmrender synth`.")
]
InitOption = Annotated[
    Path, typer.Option("--init", help="The previous stage's export (a tmrender checkpoint).")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt instead of starting over.")
]
OutOption = Annotated[
    Path, typer.Option("--out", "-o", help="Run folder (checkpoint, log, loss curve).")
]
StepsOption = Annotated[int, typer.Option("--steps", help="Total training steps.")]
LrOption = Annotated[float, typer.Option("--lr", help="Peak learning rate (warm-up, cosine).")]
MaxMinutesOption = Annotated[
    float, typer.Option("--max-minutes", help="Stop cleanly after this many minutes (0: no limit).")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of weights and batches.")]
ThreadsOption = Annotated[int, typer.Option("--threads", help="CPU threads for torch.")]
ExportOption = Annotated[
    Path | None, typer.Option("--export", help="Also copy the stage's export to this path.")
]
CacheOption = Annotated[
    Path | None,
    typer.Option("--cache", help="Latent cache file to use or build (default: OUT/latents.pt)."),
]
BatchOption = Annotated[int, typer.Option("--batch", help="Windows per step (64-256 on a GPU).")]
ChunksOption = Annotated[
    int, typer.Option("--chunks", help="Chunks of C latent frames per window.")
]
ValClipsOption = Annotated[
    int, typer.Option("--val-clips", help="Last train clips held out for validation.")
]
ValEveryOption = Annotated[
    int, typer.Option("--val-every", help="Steps between validations (0: at the end).")
]
SampleEveryOption = Annotated[
    int,
    typer.Option(
        "--sample-every", help="Validations between lip-sync checks by sampling (0: never)."
    ),
]
MouthWeightOption = Annotated[
    float, typer.Option("--mouth-weight", help="Extra loss weight in the mouth box.")
]
TestOption = Annotated[
    bool,
    typer.Option(
        "--test/--no-test", help="Afterwards print the figures on DATA/test (if it exists)."
    ),
]
LOOP = LoopOptions  # the defaults every stage shares


def print_loop_row(row: dict) -> None:
    """`on_log` of `run_stage`: one console line per log row."""
    console.print(format_log_row(row), highlight=False)


def _progress(what: str, done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        console.print(f"{what}: {done}/{total}", highlight=False)


def _start(
    schedule: Schedule, max_minutes: float, seed: int, threads: int, device: str
) -> LoopOptions:
    """The loop's options of a stage run, on this process's device (`auto` resolved, under
    torchrun the GPU of its rank); torch's CPU threads set for what the stage does before
    the loop (caches, trajectories)."""
    torch.set_num_threads(threads)
    return loop_options(
        schedule, max_minutes=max_minutes, seed=seed, threads=threads, device=rank_device(device)
    )


def _train(
    stage: Stage, out: Path, loop: LoopOptions, resume: bool, export: Path | None
) -> dict | None:
    """Run `stage` on the loop; on the rank that reports (under torchrun rank 0), copy its
    export to `export` and return the run's figures; None on the other ranks."""
    result = run_stage(stage, out, loop, resume=resume, on_log=print_loop_row)
    if not leave():
        return None
    if export is not None:
        copy_export(out, export)
        console.print(f"exported {export}", highlight=False)
    return result


def _print(result: dict | None) -> None:
    if result is not None:
        stdout.print_json(json.dumps(result))


# -- the lip-sync instrument -----------------------------------------------------------------

READER = mouth_reader.TrainOptions


@stages_app.command(
    "mouth-reader",
    short_help="Train the mouth reader, the lip-sync instrument of `eval` (not a stage).",
    epilog=(
        "Examples:\n\n"
        "  tmrender train mouth-reader --data data --out runs/mouth_reader --steps 4000\n\n"
        "  tmrender train mouth-reader --data data --out runs/mouth_reader --resume "
        "--export weights/mouth_reader.safetensors\n\n"
        "  tmrender train mouth-reader --data data --out runs/mouth_reader --test-only"
    ),
)
def mouth_reader_command(
    data: DataOption,
    out: OutOption = Path("runs/mouth_reader"),
    steps: Annotated[int, typer.Option(help="Total optimizer steps.")] = READER.steps,
    batch: Annotated[int, typer.Option(help="Frames per step.")] = READER.batch,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine decay).")] = (
        READER.lr
    ),
    max_minutes: MaxMinutesOption = READER.max_minutes,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = (
        READER.checkpoint_every
    ),
    threads: ThreadsOption = READER.threads,
    resume: ResumeOption = False,
    export: Annotated[
        Path | None,
        typer.Option(help="Afterwards write fp16 weights here and record their SHA-256."),
    ] = None,
    test_only: Annotated[
        bool,
        typer.Option(
            "--test-only", help="Train nothing: print the checkpoint's figures on DATA/test."
        ),
    ] = False,
) -> None:
    """Train the mouth reader (the lip-sync instrument of `tmrender eval`) on DATA/train."""
    if steps < 1 or batch < 1 or threads < 1:
        raise UserInputError("--steps, --batch and --threads must be at least 1")
    opts = READER(
        steps=steps, batch=batch, lr=lr, max_minutes=max_minutes,
        checkpoint_every=checkpoint_every, threads=threads,
    )  # fmt: skip
    if test_only:
        model = mouth_reader.run_model(out)
    else:
        model = mouth_reader.train(data, out, opts, resume=resume, on_log=print_loop_row)
    if export is not None:
        digest = mouth_reader.export_weights(model, data, export)
        console.print(f"exported {export} (sha256 {digest[:12]}...)", highlight=False)
        model = load_mouth_reader(export)  # the figures below are those of the shipped file
    test_clips = list_clips(data, "test")
    figures = mouth_reader.evaluate_reader(model, test_clips, robustness=True)
    _print({"split": "test", **figures})


# -- stage 1: the VAE ------------------------------------------------------------------------

VAE = vae.VAEOptions


@stages_app.command(
    "vae",
    short_help="Stage 1: the causal VAE, with extra weight on the mouth.",
    epilog=(
        "Examples:\n\n"
        "  tmrender train vae --data data --out runs/vae --steps 3000 --max-minutes 60 "
        "--export weights/stages/vae.safetensors\n\n"
        "  tmrender train vae --data data --out runs/vae --device auto --crop-batch 64 "
        "--crop-size 0 --clip-batch 32 --steps 4000 --lr 2e-3\n\n"
        "  tmrender train vae --data data --out runs/vae --resume\n\n"
        "  tmrender train vae --data data --out runs/vae_t2 --temporal-stride 2 --steps 3500\n\n"
        "  tmrender train vae --data data --init weights/stages/dmd_t2.safetensors "
        "--decoder-only --temporal-weight 1 --out runs/vae_dec --steps 2400\n\n"
        "  tmrender train vae --data data --extra-data data_textured --extra-data data_textures "
        "--gan-weight 0.1 --fm-weight 1 --gan-start 1000 --out runs/vae_gan"
    ),
)
def vae_command(
    data: DataOption,
    out: OutOption = Path("runs/vae"),
    steps: StepsOption = SCHEDULES["vae"].steps,
    lr: LrOption = SCHEDULES["vae"].lr,
    max_minutes: MaxMinutesOption = LOOP.max_minutes,
    resume: ResumeOption = False,
    device: DeviceOpt = LOOP.device,
    seed: SeedOption = LOOP.seed,
    threads: ThreadsOption = LOOP.threads,
    export: ExportOption = None,
    crop_batch: Annotated[int, typer.Option(help="Cropped windows per step (phase 1).")] = (
        VAE.crop_batch
    ),
    crop_frames: Annotated[int, typer.Option(help="Frames per window of phase 1, 1 + 4k.")] = (
        VAE.crop_frames
    ),
    crop_size: Annotated[
        int, typer.Option(help="Square crop of phase 1, px (multiple of 8; 0: whole frames).")
    ] = VAE.crop,
    clip_batch: Annotated[int, typer.Option(help="Clips per step (phase 2).")] = VAE.clip_batch,
    clip_frames: Annotated[int, typer.Option(help="Frames per clip, 1 + 4k.")] = (VAE.clip_frames),
    clip_share: Annotated[
        float, typer.Option(help="Share of the steps on whole clips (interleaved).")
    ] = VAE.clip_share,
    mouth_weight: MouthWeightOption = VAE.mouth_weight,
    max_clips: Annotated[int, typer.Option(help="Train on at most this many clips (0: all).")] = (
        VAE.max_clips
    ),
    val_clips: ValClipsOption = VAE.val_clips,
    val_every: ValEveryOption = SCHEDULES["vae"].val_every,
    test: TestOption = True,
    latent_channels: Annotated[
        int, typer.Option(help="tm-mini variant: latent channels (the DiT follows).")
    ] = presets.TM_MINI.vae.latent_channels,
    spatial_stride: Annotated[
        int,
        typer.Option(help="tm-mini variant: VAE stride 4 (DiT patch 4x4) or 8 (patch 2x2)."),
    ] = presets.TM_MINI.vae.spatial_stride,
    temporal_stride: Annotated[
        int,
        typer.Option(
            help="tm-mini variant: video frames per latent frame, 4 or 2 (the DiT follows)."
        ),
    ] = presets.TM_MINI.vae.temporal_stride,
    init: Annotated[
        Path | None,
        typer.Option(help="Start from this checkpoint's VAE (and config) instead of a fresh one."),
    ] = None,
    decoder_only: Annotated[
        bool,
        typer.Option(help="With --init: train the decoder only (latents and their stats stay)."),
    ] = VAE.decoder_only,
    temporal_weight: Annotated[
        float,
        typer.Option(help="Weight of the L1 on frame-to-frame changes (against flicker)."),
    ] = VAE.temporal_weight,
    latent_noise: Annotated[
        float,
        typer.Option(
            help="With --decoder-only: std of noise on the unit-scale latents the decoder reads."
        ),
    ] = VAE.latent_noise,
    extra_data: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="DIR",
            help="Another corpus whose train clips are fit too (synth --textured or "
            "--textures-only); repeatable. Validation stays on --data.",
        ),
    ] = None,
    gan_weight: Annotated[
        float, typer.Option(help="Weight of the patch discriminator's hinge loss (0: off).")
    ] = VAE.gan_weight,
    fm_weight: Annotated[
        float,
        typer.Option(help="Weight of feature matching on the discriminator's features (0: off)."),
    ] = VAE.fm_weight,
    gan_start: Annotated[
        int, typer.Option(help="Steps of reconstruction alone before the discriminator joins.")
    ] = VAE.gan_start,
    disc_lead: Annotated[
        int, typer.Option(help="Steps the discriminator trains before --gan-start.")
    ] = VAE.disc_lead,
    disc_width: Annotated[
        int, typer.Option(help="Channels of the discriminator's first stage (then x2, x4).")
    ] = VAE.disc_width,
) -> None:
    """Train the causal VAE on DATA/train frames; export a checkpoint with its latent stats."""
    loop = _start(Schedule(steps, lr, val_every), max_minutes, seed, threads, device)
    if init is None:  # a fresh VAE of the tm-mini variant
        start = None
        cfg = presets.tm_mini_variant(
            latent_channels=latent_channels,
            spatial_stride=spatial_stride,
            temporal_stride=temporal_stride,
        )
    else:  # --init's VAE and config
        model, _ = load_checkpoint(init)
        cfg, start = model.cfg, model.vae
    opts = VAE(
        crop_batch=crop_batch, crop_frames=crop_frames, crop=crop_size, clip_batch=clip_batch,
        clip_frames=clip_frames, clip_share=clip_share, mouth_weight=mouth_weight,
        max_clips=max_clips, val_clips=val_clips, decoder_only=decoder_only,
        temporal_weight=temporal_weight, latent_noise=latent_noise, gan_weight=gan_weight,
        fm_weight=fm_weight, gan_start=gan_start, disc_lead=disc_lead, disc_width=disc_width,
    )  # fmt: skip
    extra = tuple(extra_data or ())
    stage = vae.VAEStage(data, out, cfg, opts, vae=start, seed=seed, extra_data=extra)
    result = _train(stage, out, loop, resume, export)
    if result is not None and test and (data / "test").is_dir():
        result["test"] = vae.test_figures(out / "export.safetensors", data, loop.device)
    _print(result)


# -- stage 2: the audio encoder --------------------------------------------------------------

AUDIO = audio.AudioOptions


@stages_app.command(
    "audio",
    short_help="Stage 2: the Wav2Vec2 audio encoder, on frame phonemes and mouth shapes.",
    epilog=(
        "Examples:\n\n"
        "  tmrender train audio --data data --init weights/stages/vae.safetensors "
        "--out runs/audio --steps 3000 --export weights/stages/audio.safetensors\n\n"
        "  tmrender train audio --data data --init weights/stages/vae.safetensors "
        "--out runs/audio --device auto --batch 128 --steps 4000 --lr 3e-3\n\n"
        "  tmrender train audio --data data --init weights/stages/vae.safetensors "
        "--out runs/audio --test-only"
    ),
)
def audio_command(
    data: DataOption,
    init: Annotated[
        Path, typer.Option("--init", help="The VAE stage's export; its audio encoder is trained.")
    ],
    out: OutOption = Path("runs/audio"),
    steps: StepsOption = SCHEDULES["audio"].steps,
    lr: LrOption = SCHEDULES["audio"].lr,
    max_minutes: MaxMinutesOption = LOOP.max_minutes,
    resume: ResumeOption = False,
    device: DeviceOpt = LOOP.device,
    seed: SeedOption = AUDIO.seed,
    threads: ThreadsOption = LOOP.threads,
    export: ExportOption = None,
    batch: Annotated[
        int, typer.Option("--batch", help="Windows of 2.8 s per step (64-256 on a GPU).")
    ] = AUDIO.batch,
    val_clips: ValClipsOption = AUDIO.val_clips,
    val_every: ValEveryOption = SCHEDULES["audio"].val_every,
    codec_clips: Annotated[
        int | None,
        typer.Option(
            help="Clips in the MP3/Opus/AAC pool (default: all); 0: none (no ffmpeg needed)."
        ),
    ] = audio.AugmentOptions.codec_clips,
    test: TestOption = True,
    test_only: Annotated[
        bool,
        typer.Option(
            "--test-only", help="Train nothing: print OUT/checkpoint.pt's figures on DATA/test."
        ),
    ] = False,
) -> None:
    """Train the audio encoder (Wav2Vec2) on the phoneme and mouth of every frame of
    DATA/train, under noise, reverberation, codecs and more; export the whole model."""
    if min(batch, val_clips, threads) < 1:
        raise UserInputError("--batch, --val-clips and --threads must be at least 1")
    if codec_clips is not None and codec_clips < 0:
        raise UserInputError(f"--codec-clips must be 0 or more, got {codec_clips}")
    loop = _start(Schedule(steps, lr, val_every), max_minutes, seed, threads, device)
    model, _ = load_checkpoint(init)
    augment = audio.AugmentOptions(codec_clips=codec_clips)
    opts = AUDIO(batch=batch, val_clips=val_clips, seed=seed, augment=augment)
    stage = audio.AudioStage(data, model, out, opts, init_name=init.name)
    if test_only:
        restore_networks(stage, out, loop.device)
        _print(stage.evaluate_test(data))
        return
    result = _train(stage, out, loop, resume, export)
    if result is not None and test and (data / "test").is_dir():
        result["test"] = stage.evaluate_test(data)
    _print(result)


# -- stage 3: the teacher --------------------------------------------------------------------

TEACHER = teacher.TeacherOptions


@stages_app.command(
    "teacher",
    short_help="Stage 3: the bidirectional audio-conditioned teacher DiT (flow matching).",
    epilog=(
        "Examples:\n\n"
        "  tmrender train teacher --data data --init weights/stages/audio_t2.safetensors "
        "--out runs/teacher --steps 3000 --export weights/stages/teacher_t2.safetensors\n\n"
        "  tmrender train teacher --data data --init weights/stages/audio_t2.safetensors "
        "--out runs/teacher --device auto --batch 128 --steps 4000 --lr 1e-3\n\n"
        "  tmrender train teacher --data data --init weights/stages/audio_t2.safetensors "
        "--out runs/teacher --resume"
    ),
)
def teacher_command(
    data: DataOption,
    init: InitOption,
    out: OutOption = Path("runs/teacher"),
    steps: StepsOption = SCHEDULES["teacher"].steps,
    lr: LrOption = SCHEDULES["teacher"].lr,
    max_minutes: MaxMinutesOption = LOOP.max_minutes,
    resume: ResumeOption = False,
    device: DeviceOpt = LOOP.device,
    seed: SeedOption = LOOP.seed,
    threads: ThreadsOption = LOOP.threads,
    export: ExportOption = None,
    batch: BatchOption = TEACHER.batch,
    chunks: ChunksOption = TEACHER.chunks,
    audio_drop: Annotated[
        float, typer.Option(help="Share of samples without audio (guidance dropout).")
    ] = TEACHER.audio_drop,
    mouth_weight: MouthWeightOption = TEACHER.mouth_weight,
    val_clips: ValClipsOption = TEACHER.val_clips,
    val_every: ValEveryOption = SCHEDULES["teacher"].val_every,
    sample_every: SampleEveryOption = TEACHER.sample_every,
    cache: CacheOption = None,
) -> None:
    """Train the bidirectional audio-conditioned teacher DiT by flow matching on the cached
    latents of DATA/train; export a checkpoint with DiT = teacher."""
    if batch < 1 or chunks < 1 or not 0 <= audio_drop <= 1:
        raise UserInputError("--batch and --chunks must be at least 1, --audio-drop in [0, 1]")
    opts = TEACHER(
        batch=batch, chunks=chunks, audio_drop=audio_drop, mouth_weight=mouth_weight,
        val_clips=val_clips, sample_every=sample_every,
    )  # fmt: skip
    loop = _start(Schedule(steps, lr, val_every), max_minutes, seed, threads, device)
    stage = teacher.TeacherStage(
        data, out, init, opts, device=loop.device, cache_path=cache,
        on_progress=lambda i, n: _progress("latents", i, n),
    )  # fmt: skip
    _print(_train(stage, out, loop, resume, export))


# -- stage 4: the student, by regression on the teacher's trajectories ----------------------

ODE = ode.OdeOptions


@stages_app.command(
    "ode",
    short_help="Stage 4: the sparse-causal student, regressed on the teacher's ODE trajectories.",
    epilog=(
        "Examples:\n\n"
        "  tmrender train ode --data data --init weights/stages/teacher_t2.safetensors "
        "--out runs/ode --pairs 1024 --steps 2000 --export weights/stages/ode.safetensors\n\n"
        "  tmrender train ode --data data --init weights/stages/teacher_t2.safetensors "
        "--out runs/ode --device auto --pairs 8192 --pair-batch 512 --batch 128\n\n"
        "  tmrender train ode --data data --init weights/stages/teacher_t2.safetensors "
        "--out runs/ode --cache runs/teacher/latents.pt --resume\n\n"
        "  tmrender train ode --data data --init weights/stages/teacher_t2.safetensors "
        "--student weights/stages/dmd_t2.safetensors --cfg-scale 2 --out runs/ode_cfg2"
    ),
)
def ode_command(
    data: DataOption,
    init: Annotated[Path, typer.Option("--init", help="The teacher stage's export.")],
    out: OutOption = Path("runs/ode"),
    steps: StepsOption = SCHEDULES["ode"].steps,
    lr: LrOption = SCHEDULES["ode"].lr,
    max_minutes: MaxMinutesOption = LOOP.max_minutes,
    resume: ResumeOption = False,
    device: DeviceOpt = LOOP.device,
    seed: SeedOption = ODE.seed,
    threads: ThreadsOption = LOOP.threads,
    export: ExportOption = None,
    batch: BatchOption = ODE.batch,
    chunks: ChunksOption = ODE.chunks,
    pairs: Annotated[int, typer.Option(help="Teacher trajectories to precompute.")] = ODE.pairs,
    val_pairs: Annotated[int, typer.Option(help="Trajectories of held-out clips.")] = (
        ODE.val_pairs
    ),
    pair_batch: Annotated[int, typer.Option(help="Windows per teacher sampling call.")] = (
        ODE.pair_batch
    ),
    teacher_steps: Annotated[
        int, typer.Option(help="Teacher Euler steps (x2 evaluations with guidance).")
    ] = ODE.teacher_steps,
    mouth_weight: MouthWeightOption = ODE.mouth_weight,
    val_clips: ValClipsOption = ODE.val_clips,
    val_every: ValEveryOption = SCHEDULES["ode"].val_every,
    sample_every: SampleEveryOption = ODE.sample_every,
    cache: CacheOption = None,
    cfg_scale: Annotated[
        float | None,
        typer.Option(help="The teacher's audio guidance for the trajectories (default: its own)."),
    ] = ODE.cfg_scale,
    student: Annotated[
        Path | None,
        typer.Option(help="Fine-tune this export's student instead of starting from the teacher."),
    ] = None,
) -> None:
    """Initialise the sparse-causal 2-step student by regression on the teacher's ODE
    trajectories (precomputed once into OUT); export a checkpoint with DiT = student."""
    if min(batch, chunks, pairs, val_pairs, pair_batch, teacher_steps) < 1:
        raise UserInputError("--batch, --chunks, --pairs, --val-pairs, --pair-batch and "
                             "--teacher-steps must be at least 1")  # fmt: skip
    opts = ODE(
        batch=batch, chunks=chunks, pairs=pairs, val_pairs=val_pairs, pair_batch=pair_batch,
        teacher_steps=teacher_steps, seed=seed, mouth_weight=mouth_weight,
        val_clips=val_clips, sample_every=sample_every, cfg_scale=cfg_scale,
        student=str(student or ""),
    )  # fmt: skip
    loop = _start(Schedule(steps, lr, val_every), max_minutes, seed, threads, device)
    stage = ode.OdeStage(
        data, out, init, opts, device=loop.device, cache_path=cache, on_progress=_progress
    )
    _print(_train(stage, out, loop, resume, export))


# -- stage 5: distribution-matching distillation ---------------------------------------------

DMD = dmd.DmdOptions


@stages_app.command(
    "dmd",
    short_help="Stage 5: distribution-matching distillation into the 2-step causal student.",
    epilog=(
        "Examples:\n\n"
        "  tmrender train dmd --data data --init weights/stages/ode.safetensors "
        "--teacher weights/stages/teacher_t2.safetensors --ode-run runs/ode --out runs/dmd "
        "--steps 600 --export weights/stages/dmd_t2.safetensors\n\n"
        "  tmrender train dmd --data data --init weights/stages/ode.safetensors "
        "--teacher weights/stages/teacher_t2.safetensors --ode-run runs/ode --out runs/dmd "
        "--device auto --batch 64 --reg-batch 64 --steps 1000\n\n"
        "  tmrender train dmd --data data --init weights/stages/ode.safetensors "
        "--teacher weights/stages/teacher_t2.safetensors --ode-run runs/ode --out runs/dmd "
        "--resume"
    ),
)
def dmd_command(
    data: DataOption,
    init: Annotated[Path, typer.Option("--init", help="The ode stage's export (the student).")],
    teacher: Annotated[
        Path, typer.Option("--teacher", help="The teacher stage's export (the real score).")
    ],
    ode_run: Annotated[
        Path | None,
        typer.Option(
            "--ode-run",
            help="The ode stage's run folder: reuse its latents.pt and trajectories.pt "
            "(default: build both in OUT).",
        ),
    ] = None,
    out: OutOption = Path("runs/dmd"),
    steps: Annotated[int, typer.Option("--steps", help="Generator updates.")] = (
        SCHEDULES["dmd"].steps
    ),
    lr: LrOption = SCHEDULES["dmd"].lr,
    max_minutes: MaxMinutesOption = LOOP.max_minutes,
    resume: ResumeOption = False,
    device: DeviceOpt = LOOP.device,
    seed: SeedOption = DMD.seed,
    threads: ThreadsOption = LOOP.threads,
    export: ExportOption = None,
    batch: BatchOption = DMD.batch,
    chunks: ChunksOption = DMD.chunks,
    critic_updates: Annotated[
        int, typer.Option(help="Fake-score updates before each generator update.")
    ] = DMD.critic_updates,
    real_context: Annotated[
        float, typer.Option(help="Share of clips whose first 1..K-1 chunks are real context.")
    ] = DMD.real_context,
    context: Annotated[
        str,
        typer.Option(help="Context K/V: refresh (re-run the chunk) or last_step (commit_kv)."),
    ] = DMD.context,
    cfg_scale: Annotated[
        float | None, typer.Option(help="Audio guidance of the real score (default: preset's).")
    ] = DMD.cfg_scale,
    reg_weight: Annotated[
        float, typer.Option(help="Weight of the ODE regression in the generator loss.")
    ] = DMD.reg_weight,
    reg_batch: Annotated[int, typer.Option(help="Trajectory pairs per generator update.")] = (
        DMD.reg_batch
    ),
    mouth_weight: MouthWeightOption = DMD.mouth_weight,
    pairs: Annotated[
        int, typer.Option(help="Teacher trajectories to sample when there is no --ode-run.")
    ] = DMD.pairs,
    val_clips: ValClipsOption = DMD.val_clips,
    val_every: ValEveryOption = SCHEDULES["dmd"].val_every,
    sample_every: SampleEveryOption = DMD.sample_every,
) -> None:
    """Distil the 2-step sparse-causal student from the teacher by asymmetric distribution
    matching (teacher with audio guidance as the real score, a fake score trained online,
    ODE regression, no GAN); export a checkpoint with DiT = the student."""
    if min(batch, reg_batch, pairs) < 1:
        raise UserInputError("--batch, --reg-batch and --pairs must be at least 1")
    opts = DMD(
        batch=batch, chunks=chunks, val_clips=val_clips, critic_updates=critic_updates,
        real_context=real_context, context=context, cfg_scale=cfg_scale, reg_weight=reg_weight,
        reg_batch=reg_batch, mouth_weight=mouth_weight, pairs=pairs, seed=seed,
        sample_every=sample_every,
    )  # fmt: skip
    loop = _start(Schedule(steps, lr, val_every), max_minutes, seed, threads, device)
    stage = dmd.DmdStage(
        data, out, init, teacher, opts, ode_run=ode_run, device=loop.device, on_progress=_progress
    )
    _print(_train(stage, out, loop, resume, export))


# -- stage 6: the shipped file ---------------------------------------------------------------

SHIPPED = shipped.ExportOptions


@stages_app.command(
    "export",
    short_help="Stage 6: write weights/tm-mini.safetensors from the student, with provenance.",
    epilog=(
        "Examples:\n\n"
        "  tmrender train export --init weights/stages/dmd_t2.safetensors --data data "
        "-o weights/tm-mini.safetensors\n\n"
        "  tmrender train export --init weights/stages/dmd_t2.safetensors --data data "
        "--deflicker-taps 1,2,2,2,1 --deflicker-keep 8,24 --retime 0.1,0.25 "
        "--keep-reference 16,48 --keep-follow 50 --chunk-latents 2 --report out/eval/report.json "
        "-o weights/tm-mini.safetensors\n\n"
        "  tmrender train export --init student.safetensors --dtype float32 -o m.safetensors"
    ),
)
def export_command(
    init: Annotated[
        Path, typer.Option("--init", help="The final stage's export (the distilled student).")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The shipped checkpoint to write.")
    ] = Path("weights/tm-mini.safetensors"),
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Corpus whose held-out clips decide fp16 per network."),
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="auto (fp16 where lip-sync r moves < 0.005), float16, float32.")
    ] = SHIPPED.dtype,
    clips: Annotated[int, typer.Option(help="Held-out clips for the fp16 check.")] = (
        SHIPPED.clips
    ),
    seconds: Annotated[float, typer.Option(help="Seconds of each clip rendered.")] = (
        SHIPPED.seconds
    ),
    split: Annotated[str, typer.Option(help="Split of the held-out clips (its last ones).")] = (
        SHIPPED.split
    ),
    stages: Annotated[
        Path | None,
        typer.Option(help="Folder of stage exports for the provenance (default: --init's)."),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(help="A `tmrender eval` report.json: its summary goes in as test figures."),
    ] = None,
    reader: Annotated[
        Path | None, typer.Option(help="Mouth reader weights (default: the shipped ones).")
    ] = None,
    threads: ThreadsOption = 2,
    deflicker_taps: Annotated[
        str | None,
        typer.Option(
            help="Taps of the zero-lag filter over output frames, e.g. 1,2,2,2,1; 'none': "
            "off (default: as the student's file says)."
        ),
    ] = None,
    deflicker_keep: Annotated[
        str | None,
        typer.Option(
            help="Edge-keeping levels lo,hi of that filter, e.g. 6,16: a pixel more than hi "
            "levels from its filtered value keeps its raw value; 'none': plain linear filter "
            "(default: as the student's file says)."
        ),
    ] = None,
    retime: Annotated[
        str | None,
        typer.Option(
            help="Re-timing back,forward (each 0..0.5), e.g. 0.1,0.25: each latent's first "
            "frame leans back towards the frame before, its last forward towards the frame "
            "after; 'none': off (default: as the student's file says)."
        ),
    ] = None,
    keep_reference: Annotated[
        str | None,
        typer.Option(
            help="Levels lo,hi, e.g. 8,24: a rendered pixel within lo levels of the portrait "
            "shows the portrait's own, beyond hi its own; 'none': off (default: as the "
            "student's file says)."
        ),
    ] = None,
    keep_follow: Annotated[
        float | None,
        typer.Option(
            help="Frames over which the kept reference follows the model's own steady "
            "drawing where it rests, e.g. 50; 0: it stays the decoder's picture of the "
            "portrait (default: as the student's file says)."
        ),
    ] = None,
    chunk_latents: Annotated[
        int | None,
        typer.Option(
            help="Latent frames rendered per chunk, e.g. 2: shorter chunks answer sooner "
            "live (default: the length the student was distilled on)."
        ),
    ] = None,
) -> None:
    """Write the shipped model: all networks in one file, fp16 where lip sync does not move,
    provenance in its metadata, and its line in the output folder's SHA256SUMS."""
    opts = SHIPPED(
        dtype=dtype, clips=clips, seconds=seconds, split=split,
        deflicker_taps=_sampler_numbers(deflicker_taps, "deflicker_taps", TAPS_NEED),
        deflicker_keep=_sampler_numbers(deflicker_keep, "deflicker_keep", KEEP_NEED),
        retime=_sampler_numbers(retime, "retime", RETIME_NEED),
        keep_reference=_sampler_numbers(keep_reference, "keep_reference", KEEP_REF_NEED),
        keep_follow=keep_follow, chunk_latent_frames=chunk_latents,
    )  # fmt: skip
    torch.set_num_threads(threads)
    result = shipped.export_from_corpus(init, output, opts, data, reader, stages, report)
    console.print(f"exported {output} (sha256 {result['sha256'][:12]}...)", highlight=False)
    _print(result)


TAPS_NEED = "--deflicker-taps needs symmetric taps of odd length and positive sum, e.g. 1,2,2,2,1"
KEEP_NEED = "--deflicker-keep needs two levels lo,hi with 0 <= lo < hi, e.g. 6,16"
KEEP_REF_NEED = "--keep-reference needs two levels lo,hi with 0 <= lo < hi, e.g. 8,24"
RETIME_NEED = "--retime needs two weights back,forward, each 0..0.5, e.g. 0.1,0.25"


def _sampler_numbers(text: str | None, field: str, need: str) -> tuple[float, ...] | None:
    """Comma-separated numbers for the SamplerConfig `field`, checked by SamplerConfig;
    None -> None (as the student's file says), "none" -> () (off); anything else that
    SamplerConfig refuses: one line (`need`)."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        numbers = tuple(float(v) for v in text.split(","))
        return getattr(SamplerConfig(**{field: numbers}), field)
    except ValueError as err:  # ConfigError too
        raise UserInputError(f"{need}; got {text!r}") from err


# -- joining stage files ---------------------------------------------------------------------


@stages_app.command(
    "merge",
    short_help="Join two stage files: the base's networks plus some of the donor's.",
    epilog=(
        "Example (the audio stage ran beside the VAE stage):\n\n"
        "  tmrender train merge --base weights/stages/vae.safetensors "
        "--donor runs/audio/export.safetensors --take audio_encoder "
        "-o weights/stages/audio.safetensors"
    ),
)
def merge_command(
    base: Annotated[Path, typer.Option(help="Stage file whose config and networks are kept.")],
    donor: Annotated[Path, typer.Option(help="Stage file the --take networks come from.")],
    take: Annotated[list[str], typer.Option(help="Network to take from the donor (repeatable).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged stage file.")],
) -> None:
    """Write a stage file with BASE's config and networks and TAKE from DONOR."""
    merge_networks(base, donor, take, output)
    console.print(
        f"wrote {output}: {base.name} + {', '.join(take)} of {donor.name}", highlight=False
    )
