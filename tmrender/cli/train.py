"""`tmrender train STAGE`: training recipes, one subcommand per stage (tmrender.train)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console, stdout

train_app = typer.Typer(
    name="train",
    help="Train a model stage; every stage resumes from its run folder with --resume.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

DataOption = Annotated[
    Path, typer.Option("--data", "-d", help="Corpus folder written by `tmrender synth`.")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt instead of starting over.")
]
# options of the one training loop (tmrender.train.loop.LoopOptions); defaults per stage
OutOption = Annotated[
    Path, typer.Option("--out", "-o", help="Run folder (checkpoint, log, curve).")
]
StepsOption = Annotated[int, typer.Option("--steps", help="Total training steps.")]
LrOption = Annotated[float, typer.Option("--lr", help="Peak learning rate (warm-up, cosine).")]
MaxMinutesOption = Annotated[
    float, typer.Option("--max-minutes", help="Stop cleanly after this many minutes (0: no limit).")
]
TrainDeviceOption = Annotated[
    str, typer.Option("--device", help="cpu, cuda or cuda:N (bf16 autocast on CUDA).")
]
TrainSeedOption = Annotated[int, typer.Option("--seed", help="Seed of weights and batches.")]
ThreadsOption = Annotated[int, typer.Option("--threads", help="CPU threads for torch.")]
ExportOption = Annotated[
    Path | None, typer.Option("--export", help="Also copy the stage's export to this path.")
]


def print_loop_row(row: dict) -> None:
    """`on_log` of `tmrender.train.loop.run_stage`: one console line per log row."""

    def fmt(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    if "val" in row:
        text = ", ".join(f"{k} {fmt(v)}" for k, v in row["val"].items())
        console.print(f"step {row['step']}: validation {text}", highlight=False)
    else:
        skip = ("step", "seconds")
        text = ", ".join(f"{k} {fmt(v)}" for k, v in row.items() if k not in skip)
        console.print(f"step {row['step']}: {text} ({row['seconds']} s)", highlight=False)


@train_app.command(
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
def mouth_reader(
    data: DataOption,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run folder (checkpoint, log, loss curve).")
    ] = Path("runs/mouth_reader"),
    steps: Annotated[int, typer.Option(help="Total optimizer steps.")] = 4000,
    batch: Annotated[int, typer.Option(help="Frames per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine decay).")] = 2e-3,
    max_minutes: Annotated[
        float, typer.Option(help="Stop after this many minutes (0: no limit).")
    ] = 0.0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 250,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 1,
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
    import json

    from tmrender.errors import UserInputError
    from tmrender.train import mouth_reader as recipe

    if steps < 1 or batch < 1 or threads < 1:
        raise UserInputError("--steps, --batch and --threads must be at least 1")
    opts = recipe.TrainOptions(
        steps=steps, batch=batch, lr=lr, max_minutes=max_minutes,
        checkpoint_every=checkpoint_every, threads=threads,
    )  # fmt: skip
    if test_only:
        model = _checkpoint_model(out)
    else:
        model = recipe.train(data, out, opts, resume=resume, on_log=print_loop_row)
    if export is not None:
        from tmrender.eval.mouth import load_mouth_reader

        digest = export_weights(model, data, export)
        console.print(f"exported {export} (sha256 {digest[:12]}...)", highlight=False)
        model = load_mouth_reader(export)  # the figures below are those of the shipped file
    from tmrender.data.corpus import list_clips

    test_clips = list_clips(data, "test")
    figures = {"split": "test", **recipe.evaluate_reader(model, test_clips, robustness=True)}
    stdout.print_json(json.dumps(figures))


def _checkpoint_model(out: Path):
    from tmrender.errors import UserInputError
    from tmrender.train.mouth_reader import load_training_checkpoint

    path = out / "checkpoint.pt"
    if not path.exists():
        raise UserInputError(f"no checkpoint in {out}; train first")
    return load_training_checkpoint(path)[0].eval()


def export_weights(model, data: Path, path: Path, val_clips: int = 10) -> str:
    """Write fp16 weights if they read the held-out train clips as well as fp32
    (|dr| < 1e-3), else fp32; record the SHA-256 in the folder's SHA256SUMS."""
    import tempfile

    from tmrender.data.corpus import list_clips
    from tmrender.eval.mouth import load_mouth_reader, save_mouth_reader
    from tmrender.files import record_checksum
    from tmrender.train.mouth_reader import evaluate_reader

    held_out = list_clips(data, "train")[-val_clips:]
    reference = evaluate_reader(model, held_out)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "half.safetensors"
        save_mouth_reader(model, probe, half=True)
        halved = evaluate_reader(load_mouth_reader(probe), held_out)
    half = all(abs(halved[k]["r"] - reference[k]["r"]) < 1e-3 for k in model.cfg.outputs)
    extra = {"dtype": "float16" if half else "float32", "held_out_figures": reference}
    digest = save_mouth_reader(model, path, half=half, extra=extra)
    record_checksum(path.parent / "SHA256SUMS", path, digest)
    return digest


@train_app.command(
    "export",
    short_help="Stage 6: write weights/tm-mini.safetensors from the student, with provenance.",
    epilog=(
        "Examples:\n\n"
        "  tmrender train export --init weights/stages/dmd_t2.safetensors --data data "
        "-o weights/tm-mini.safetensors\n\n"
        "  tmrender train export --init weights/stages/dmd_t2.safetensors --data data "
        "--report out/eval/report.json -o weights/tm-mini.safetensors\n\n"
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
    ] = "auto",
    clips: Annotated[int, typer.Option(help="Held-out clips for the fp16 check.")] = 6,
    seconds: Annotated[float, typer.Option(help="Seconds of each clip rendered.")] = 6.0,
    split: Annotated[str, typer.Option(help="Split of the held-out clips (its last ones).")] = (
        "train"
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
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 2,
    deflicker: Annotated[
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
) -> None:
    """Write the shipped model: all networks in one file, fp16 where lip sync does not move,
    provenance in its metadata, and its line in the output folder's SHA256SUMS."""
    import json

    import torch

    from tmrender.train import export as recipe

    opts = recipe.ExportOptions(
        dtype=dtype, clips=clips, seconds=seconds, split=split,
        deflicker_taps=parse_taps(deflicker), deflicker_keep=parse_keep(deflicker_keep),
        retime=parse_retime(retime),
    )  # fmt: skip
    torch.set_num_threads(threads)
    score = None
    if dtype == "auto" and data is not None:
        score = recipe.default_score(data, opts, reader)
    result = recipe.export_model(
        init, output, opts, score=score, stages_dir=stages or init.parent, report=report
    )
    console.print(f"exported {output} (sha256 {result['sha256'][:12]}...)", highlight=False)
    stdout.print_json(json.dumps(result))


def parse_taps(text: str | None) -> tuple[float, ...] | None:
    """--deflicker: None -> None (keep), "none" -> () (off), "1,2,1" -> (1.0, 2.0, 1.0);
    the taps must pass `SamplerConfig`'s own check."""
    return _sampler_numbers(
        text, "deflicker_taps", "--deflicker needs symmetric taps of odd length and positive "
        "sum, e.g. 1,2,2,2,1",
    )  # fmt: skip


def parse_keep(text: str | None) -> tuple[float, ...] | None:
    """--deflicker-keep: None -> None (keep), "none" -> () (off), "6,16" -> (6.0, 16.0)."""
    return _sampler_numbers(
        text, "deflicker_keep", "--deflicker-keep needs two levels lo,hi with 0 <= lo < hi, "
        "e.g. 6,16",
    )  # fmt: skip


def parse_retime(text: str | None) -> tuple[float, ...] | None:
    """--retime: None -> None (keep), "none" -> () (off), "0.1,0.25" -> (0.1, 0.25)."""
    return _sampler_numbers(
        text, "retime", "--retime needs two weights back,forward, each 0..0.5, e.g. 0.1,0.25"
    )


def _sampler_numbers(text: str | None, field: str, need: str) -> tuple[float, ...] | None:
    """Comma-separated numbers for the SamplerConfig `field`, checked by SamplerConfig;
    None -> None, "none" -> (); anything else: one line (`need`) and exit 2."""
    from tmrender.config import SamplerConfig
    from tmrender.errors import UserInputError

    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        numbers = tuple(float(v) for v in text.split(","))
        return getattr(SamplerConfig(**{field: numbers}), field)
    except (ValueError, AssertionError) as err:
        raise UserInputError(f"{need}; got {text!r}") from err


def parse_blocks(text: str) -> tuple[int, ...]:
    """--dec-blocks "0,1" -> (0, 1); one line on anything else."""
    from tmrender.errors import UserInputError

    try:
        blocks = tuple(int(v) for v in text.split(","))
    except ValueError:
        blocks = ()
    if not blocks or min(blocks) < 0:
        raise UserInputError(f"--dec-blocks needs counts per level such as 0,1; got {text!r}")
    return blocks


@train_app.command(
    "vae",
    short_help="Stage 1: the causal VAE, with extra weight on the mouth.",
    epilog=(
        "Examples:\n\n"
        "  tmrender train vae --data data --out runs/vae --steps 3000 --max-minutes 60 "
        "--export weights/stages/vae.safetensors\n\n"
        "  tmrender train vae --data data --out runs/vae --device cuda --crop-batch 64 "
        "--crop 0 --clip-batch 32 --steps 4000 --lr 2e-3\n\n"
        "  tmrender train vae --data data --out runs/vae --resume\n\n"
        "  tmrender train vae --data data --out runs/vae_t2 --temporal-stride 2 --steps 3500\n\n"
        "  tmrender train vae --data data --init weights/stages/dmd_t2.safetensors "
        "--decoder-only --dec-blocks 0,1 --out runs/vae_dec --steps 2400"
    ),
)
def vae_command(
    data: DataOption,
    out: OutOption = Path("runs/vae"),
    steps: StepsOption = 3000,
    lr: LrOption = 2e-3,
    max_minutes: MaxMinutesOption = 0.0,
    resume: ResumeOption = False,
    device: TrainDeviceOption = "cpu",
    seed: TrainSeedOption = 0,
    threads: ThreadsOption = 2,
    export: ExportOption = None,
    crop_batch: Annotated[int, typer.Option(help="Cropped windows per step (phase 1).")] = 8,
    crop_frames: Annotated[int, typer.Option(help="Frames per window of phase 1, 1 + 4k.")] = 5,
    crop: Annotated[int, typer.Option(help="Crop of phase 1, px (multiple of 8; 0: whole).")] = 64,
    clip_batch: Annotated[int, typer.Option(help="Clips per step (phase 2).")] = 4,
    clip_frames: Annotated[int, typer.Option(help="Frames per clip, 1 + 4k.")] = 9,
    clip_share: Annotated[
        float, typer.Option(help="Share of the steps on whole clips (interleaved).")
    ] = 0.25,
    mouth_weight: Annotated[float, typer.Option(help="Extra loss weight in the mouth box.")] = 4.0,
    max_clips: Annotated[int, typer.Option(help="Train on at most this many clips (0: all).")] = 0,
    val_clips: Annotated[int, typer.Option(help="Last train clips held out for validation.")] = 4,
    val_every: Annotated[int, typer.Option(help="Steps between validations (0: at the end).")] = (
        500
    ),
    test: Annotated[
        bool, typer.Option(help="Afterwards print the figures on DATA/test (if it exists).")
    ] = True,
    latent_channels: Annotated[
        int, typer.Option(help="tm-mini variant: latent channels (the DiT follows).")
    ] = 8,
    dec_blocks: Annotated[
        str | None,
        typer.Option(
            help="Decoder residual blocks per level, coarse -> fine (tm-mini: 0,0). With "
            "--init: add blocks to its decoder (they start as identity), e.g. 0,1.",
        ),
    ] = None,
    spatial_stride: Annotated[
        int,
        typer.Option(help="tm-mini variant: VAE stride 4 (DiT patch 4x4) or 8 (patch 2x2)."),
    ] = 4,
    temporal_stride: Annotated[
        int,
        typer.Option(
            help="tm-mini variant: video frames per latent frame, 4 or 2 (the DiT follows)."
        ),
    ] = 4,
    init: Annotated[
        Path | None,
        typer.Option(help="Start from this checkpoint's VAE (and config) instead of a fresh one."),
    ] = None,
    decoder_only: Annotated[
        bool,
        typer.Option(help="With --init: train the decoder only (latents and their stats stay)."),
    ] = False,
    temporal_weight: Annotated[
        float,
        typer.Option(help="Weight of the L1 on frame-to-frame changes (against flicker)."),
    ] = 0.0,
    latent_noise: Annotated[
        float,
        typer.Option(
            help="With --decoder-only: std of noise on the unit-scale latents the decoder reads."
        ),
    ] = 0.0,
    lookahead: Annotated[
        bool,
        typer.Option(
            "--lookahead",
            help="With --init: give the decoder one latent frame of look-ahead (new weights "
            "start at zero; the stream holds one latent back).",
        ),
    ] = False,
) -> None:
    """Train the causal VAE on DATA/train frames; export a checkpoint with its latent stats."""
    import dataclasses
    import json
    import shutil

    from tmrender.errors import UserInputError
    from tmrender.models.presets import tm_mini_variant
    from tmrender.train import vae as recipe
    from tmrender.train.loop import LoopOptions, run_stage

    start = None
    if init is not None:
        from tmrender.models.checkpoint import load_checkpoint

        model, _ = load_checkpoint(init)
        start = model.vae
        if dec_blocks is not None:
            start = recipe.add_decoder_blocks(start, parse_blocks(dec_blocks), seed)
        if lookahead:
            start = recipe.add_lookahead(start)
        cfg = dataclasses.replace(model.cfg, vae=start.cfg)
    elif lookahead:
        raise UserInputError("--lookahead widens a trained decoder: give --init")
    else:
        try:
            blocks = parse_blocks(dec_blocks or "0,0")
            cfg = tm_mini_variant(latent_channels, blocks, spatial_stride, temporal_stride)
        except AssertionError as err:
            raise UserInputError(f"bad --latent-channels/--dec-blocks: {err}") from err

    opts = recipe.VAEOptions(
        crop_batch=crop_batch, crop_frames=crop_frames, crop=crop, clip_batch=clip_batch,
        clip_frames=clip_frames,
        clip_share=clip_share, mouth_weight=mouth_weight, max_clips=max_clips,
        val_clips=val_clips, decoder_only=decoder_only, temporal_weight=temporal_weight,
        latent_noise=latent_noise,
    )  # fmt: skip
    loop = LoopOptions(
        steps=steps, lr=lr, warmup=min(200, steps // 10), max_minutes=max_minutes,
        checkpoint_every=max(1, min(500, steps // 4)), log_every=max(1, min(50, steps // 20)),
        val_every=val_every, seed=seed, threads=threads, device=device,
    )  # fmt: skip
    stage = recipe.VAEStage(data, out, cfg, opts, vae=start, seed=seed)
    result = run_stage(stage, out, loop, resume=resume, on_log=print_loop_row)
    exported = out / "export.safetensors"
    if export is not None:
        export.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(exported, export)
        console.print(f"exported {export}", highlight=False)
    if test and (data / "test").is_dir():
        result["test"] = recipe.test_figures(exported, data, device)
    stdout.print_json(json.dumps(result))


InitOption = Annotated[
    Path, typer.Option("--init", help="The previous stage's export (a tmrender checkpoint).")
]
CacheOption = Annotated[
    Path | None,
    typer.Option(help="Latent cache file to use or build (default: OUT/latents.pt)."),
]
AudioHeadsOption = Annotated[
    Path | None,
    typer.Option(
        help="Narrow audio path: the DiT reads the 7 mouth parameters of this frozen mouth "
        "head (weights/stages/audio_heads.safetensors, or the audio run's checkpoint.pt) "
        "instead of the encoder's features.",
    ),
]
BatchOption = Annotated[int, typer.Option("--batch", help="Windows per step (64-256 on a GPU).")]
ChunksOption = Annotated[int, typer.Option(help="Chunks of C latent frames per window.")]
ValClipsOption = Annotated[int, typer.Option(help="Last train clips held out for validation.")]
ValEveryOption = Annotated[int, typer.Option(help="Steps between validations (0: at the end).")]
SampleEveryOption = Annotated[
    int, typer.Option(help="Validations between lip-sync checks by sampling (0: never).")
]
MouthWeightOption = Annotated[float, typer.Option(help="Extra loss weight in the mouth box.")]


def _loop_options(steps, lr, max_minutes, val_every, seed, threads, device):
    from tmrender.train.loop import LoopOptions

    return LoopOptions(
        steps=steps, lr=lr, warmup=min(200, max(1, steps // 10)), max_minutes=max_minutes,
        checkpoint_every=max(1, min(500, steps // 4)), log_every=max(1, min(50, steps // 20)),
        val_every=val_every, seed=seed, threads=threads, device=device,
    )  # fmt: skip


def _set_threads(threads: int) -> None:
    """Torch CPU threads for the work a stage does before the loop (cache, trajectories)."""
    import torch

    torch.set_num_threads(threads)


def _rank_device(device: str) -> str:
    """`--device` of this process: under torchrun it joins the ranks and `cuda` is the GPU
    of its LOCAL_RANK (tmrender.train.distributed); otherwise `device` as given."""
    from tmrender.train.distributed import rank_device

    return rank_device(device)


def _progress(what: str, done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        console.print(f"{what}: {done}/{total}", highlight=False)


def _finish_stage(stage, out: Path, loop, resume: bool, export: Path | None) -> None:
    import json
    import shutil

    from tmrender.train.distributed import leave, parallel
    from tmrender.train.loop import run_stage

    result = run_stage(stage, out, loop, resume=resume, on_log=print_loop_row)
    main = parallel(loop.device).main
    leave()
    if not main:
        return  # under torchrun, rank 0 reports
    if export is not None:
        export.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "export.safetensors", export)
        console.print(f"exported {export}", highlight=False)
    stdout.print_json(json.dumps(result))


@train_app.command(
    "teacher",
    short_help="Stage 3: the bidirectional audio-conditioned teacher DiT (flow matching).",
    epilog=(
        "Examples:\n\n"
        "  tmrender train teacher --data data --init weights/stages/audio_t2.safetensors "
        "--out runs/teacher --steps 3000 --export weights/stages/teacher_t2.safetensors\n\n"
        "  tmrender train teacher --data data --init weights/stages/audio_t2.safetensors "
        "--out runs/teacher --device cuda --batch 128 --steps 4000 --lr 1e-3\n\n"
        "  tmrender train teacher --data data --init weights/stages/audio_t2.safetensors "
        "--out runs/teacher --resume"
    ),
)
def teacher_command(
    data: DataOption,
    init: InitOption,
    out: OutOption = Path("runs/teacher"),
    steps: StepsOption = 3000,
    lr: LrOption = 5e-4,
    max_minutes: MaxMinutesOption = 0.0,
    resume: ResumeOption = False,
    device: TrainDeviceOption = "cpu",
    seed: TrainSeedOption = 0,
    threads: ThreadsOption = 2,
    export: ExportOption = None,
    batch: BatchOption = 8,
    chunks: ChunksOption = 4,
    audio_drop: Annotated[
        float, typer.Option(help="Share of samples without audio (guidance dropout).")
    ] = 0.1,
    mouth_weight: MouthWeightOption = 4.0,
    val_clips: ValClipsOption = 8,
    val_every: ValEveryOption = 250,
    sample_every: SampleEveryOption = 2,
    cache: CacheOption = None,
    audio_heads: AudioHeadsOption = None,
) -> None:
    """Train the bidirectional audio-conditioned teacher DiT by flow matching on the cached
    latents of DATA/train; export a checkpoint with DiT = teacher."""
    from tmrender.errors import UserInputError
    from tmrender.train import teacher as recipe

    if batch < 1 or chunks < 1 or not 0 <= audio_drop <= 1:
        raise UserInputError("--batch and --chunks must be at least 1, --audio-drop in [0, 1]")
    opts = recipe.TeacherOptions(
        batch=batch, chunks=chunks, audio_drop=audio_drop, mouth_weight=mouth_weight,
        val_clips=val_clips, sample_every=sample_every, audio_heads=str(audio_heads or ""),
    )  # fmt: skip
    device = _rank_device(device)
    loop = _loop_options(steps, lr, max_minutes, val_every, seed, threads, device)
    _set_threads(threads)
    stage = recipe.TeacherStage(
        data, out, init, opts, device=device, cache_path=cache,
        on_progress=lambda i, n: _progress("latents", i, n),
    )  # fmt: skip
    _finish_stage(stage, out, loop, resume, export)


@train_app.command(
    "ode",
    short_help="Stage 4: the sparse-causal student, regressed on the teacher's ODE trajectories.",
    epilog=(
        "Examples:\n\n"
        "  tmrender train ode --data data --init weights/stages/teacher_t2.safetensors "
        "--out runs/ode --pairs 1024 --steps 2000 --export weights/stages/ode.safetensors\n\n"
        "  tmrender train ode --data data --init weights/stages/teacher_t2.safetensors "
        "--out runs/ode --device cuda --pairs 8192 --pair-batch 512 --batch 128\n\n"
        "  tmrender train ode --data data --init weights/stages/teacher_t2.safetensors "
        "--out runs/ode --cache runs/teacher/latents.pt --resume\n\n"
        "  tmrender train ode --data data --init weights/stages/teacher_t2.safetensors "
        "--student weights/stages/dmd_t2.safetensors "
        "--audio-heads weights/stages/audio_heads.safetensors "
        "--out runs/ode_narrow   (the narrow audio path)"
    ),
)
def ode_command(
    data: DataOption,
    init: Annotated[Path, typer.Option("--init", help="The teacher stage's export.")],
    out: OutOption = Path("runs/ode"),
    steps: StepsOption = 2000,
    lr: LrOption = 2e-4,
    max_minutes: MaxMinutesOption = 0.0,
    resume: ResumeOption = False,
    device: TrainDeviceOption = "cpu",
    seed: TrainSeedOption = 0,
    threads: ThreadsOption = 2,
    export: ExportOption = None,
    batch: BatchOption = 8,
    chunks: ChunksOption = 4,
    pairs: Annotated[int, typer.Option(help="Teacher trajectories to precompute.")] = 1024,
    val_pairs: Annotated[int, typer.Option(help="Trajectories of held-out clips.")] = 16,
    pair_batch: Annotated[int, typer.Option(help="Windows per teacher sampling call.")] = 16,
    teacher_steps: Annotated[
        int, typer.Option(help="Teacher Euler steps (x2 evaluations with guidance).")
    ] = 12,
    mouth_weight: MouthWeightOption = 4.0,
    face_mask: Annotated[
        bool, typer.Option(help="Gate the student's audio by the face box (renderer: none).")
    ] = False,
    val_clips: ValClipsOption = 8,
    val_every: ValEveryOption = 250,
    sample_every: SampleEveryOption = 2,
    cache: CacheOption = None,
    cfg_scale: Annotated[
        float | None,
        typer.Option(help="The teacher's audio guidance for the trajectories (default: its own)."),
    ] = None,
    student: Annotated[
        Path | None,
        typer.Option(help="Fine-tune this export's student instead of starting from the teacher."),
    ] = None,
    audio_heads: AudioHeadsOption = None,
    narrow_warmup: Annotated[
        int, typer.Option(help="With --audio-heads: steps fitting the new projection first.")
    ] = 400,
) -> None:
    """Initialise the sparse-causal 2-step student by regression on the teacher's ODE
    trajectories (precomputed once into OUT); export a checkpoint with DiT = student."""
    from tmrender.errors import UserInputError
    from tmrender.train import ode as recipe

    if min(batch, chunks, pairs, val_pairs, pair_batch, teacher_steps) < 1:
        raise UserInputError("--batch, --chunks, --pairs, --val-pairs, --pair-batch and "
                             "--teacher-steps must be at least 1")  # fmt: skip
    opts = recipe.OdeOptions(
        batch=batch, chunks=chunks, pairs=pairs, val_pairs=val_pairs, pair_batch=pair_batch,
        teacher_steps=teacher_steps, seed=seed, mouth_weight=mouth_weight, face_mask=face_mask,
        val_clips=val_clips, sample_every=sample_every, cfg_scale=cfg_scale,
        student=str(student or ""), audio_heads=str(audio_heads or ""),
        narrow_warmup=narrow_warmup,
    )  # fmt: skip
    device = _rank_device(device)
    loop = _loop_options(steps, lr, max_minutes, val_every, seed, threads, device)
    _set_threads(threads)
    stage = recipe.OdeStage(
        data, out, init, opts, device=device, cache_path=cache, on_progress=_progress
    )
    _finish_stage(stage, out, loop, resume, export)


@train_app.command(
    "audio",
    short_help="Stage 2: the Wav2Vec2 audio encoder, on frame phonemes and mouth shapes.",
    epilog=(
        "Examples:\n\n"
        "  tmrender train audio --data data --init weights/stages/vae.safetensors "
        "--out runs/audio --steps 3000 --export weights/stages/audio.safetensors\n\n"
        "  tmrender train audio --data data --init weights/stages/vae.safetensors "
        "--out runs/audio --device cuda --batch 128 --steps 4000 --lr 3e-3\n\n"
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
    steps: StepsOption = 3000,
    lr: LrOption = 2e-3,
    max_minutes: MaxMinutesOption = 0.0,
    resume: ResumeOption = False,
    device: TrainDeviceOption = "cpu",
    seed: TrainSeedOption = 0,
    threads: ThreadsOption = 2,
    export: ExportOption = None,
    batch: Annotated[
        int, typer.Option("--batch", help="Windows of 2.8 s per step (64-256 on a GPU).")
    ] = 16,
    val_clips: ValClipsOption = 8,
    val_every: ValEveryOption = 250,
    codec_clips: Annotated[
        int | None,
        typer.Option(
            help="Clips in the MP3/Opus/AAC pool (default: all); 0: none (no ffmpeg needed)."
        ),
    ] = None,
    test: Annotated[
        bool, typer.Option(help="Afterwards print the figures on DATA/test (if it exists).")
    ] = True,
    test_only: Annotated[
        bool,
        typer.Option(
            "--test-only", help="Train nothing: print OUT/checkpoint.pt's figures on DATA/test."
        ),
    ] = False,
) -> None:
    """Train the audio encoder (Wav2Vec2) on the phoneme and mouth of every frame of
    DATA/train, under noise, reverberation, codecs and more; export the whole model."""
    import json
    import shutil

    from tmrender.errors import UserInputError
    from tmrender.models.checkpoint import load_checkpoint
    from tmrender.train import audio as recipe
    from tmrender.train.loop import load_training_networks, run_stage

    if min(batch, val_clips, threads) < 1:
        raise UserInputError("--batch, --val-clips and --threads must be at least 1")
    if codec_clips is not None and codec_clips < 0:
        raise UserInputError(f"--codec-clips must be 0 or more, got {codec_clips}")
    _set_threads(threads)
    model, _ = load_checkpoint(init)
    augment = recipe.AugmentOptions(codec_clips=codec_clips)
    opts = recipe.AudioOptions(batch=batch, val_clips=val_clips, seed=seed, augment=augment)
    stage = recipe.AudioStage(data, model, out, opts, init_name=init.name)
    if test_only:
        if not (out / "checkpoint.pt").exists():
            raise UserInputError(f"no checkpoint in {out}; train first")
        states = load_training_networks(out / "checkpoint.pt")
        for name, net in stage.networks().items():
            net.load_state_dict(states[name])
            net.to(device).eval()
        stdout.print_json(json.dumps(stage.evaluate_test(data)))
        return
    loop = _loop_options(steps, lr, max_minutes, val_every, seed, threads, device)
    result = run_stage(stage, out, loop, resume=resume, on_log=print_loop_row)
    if export is not None:
        export.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "export.safetensors", export)
        console.print(f"exported {export}", highlight=False)
    if test and (data / "test").is_dir():
        result["test"] = stage.evaluate_test(data)
    stdout.print_json(json.dumps(result))


@train_app.command(
    "dmd",
    short_help="Stage 5: distribution-matching distillation into the 2-step causal student.",
    epilog=(
        "Examples:\n\n"
        "  tmrender train dmd --data data --init weights/stages/ode.safetensors "
        "--teacher weights/stages/teacher_t2.safetensors --ode-run runs/ode --out runs/dmd "
        "--steps 600 --export weights/stages/dmd_t2.safetensors\n\n"
        "  tmrender train dmd --data data --init weights/stages/ode.safetensors "
        "--teacher weights/stages/teacher_t2.safetensors --ode-run runs/ode --out runs/dmd "
        "--device cuda --batch 64 --reg-batch 64 --steps 1000\n\n"
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
    steps: Annotated[int, typer.Option("--steps", help="Generator updates.")] = 600,
    lr: LrOption = 1e-4,
    max_minutes: MaxMinutesOption = 0.0,
    resume: ResumeOption = False,
    device: TrainDeviceOption = "cpu",
    seed: TrainSeedOption = 0,
    threads: ThreadsOption = 2,
    export: ExportOption = None,
    batch: BatchOption = 8,
    chunks: ChunksOption = 4,
    critic_updates: Annotated[
        int, typer.Option(help="Fake-score updates before each generator update.")
    ] = 3,
    real_context: Annotated[
        float, typer.Option(help="Share of clips whose first 1..K-1 chunks are real context.")
    ] = 0.5,
    context: Annotated[
        str,
        typer.Option(help="Context K/V: refresh (re-run the chunk) or last_step (commit_kv)."),
    ] = "refresh",
    cfg_scale: Annotated[
        float | None, typer.Option(help="Audio guidance of the real score (default: preset's).")
    ] = None,
    reg_weight: Annotated[
        float, typer.Option(help="Weight of the ODE regression in the generator loss.")
    ] = 1.0,
    reg_batch: Annotated[int, typer.Option(help="Trajectory pairs per generator update.")] = 8,
    mouth_weight: MouthWeightOption = 4.0,
    face_mask: Annotated[
        bool, typer.Option(help="Gate the student's audio by the face box (renderer: none).")
    ] = False,
    pairs: Annotated[
        int, typer.Option(help="Teacher trajectories to sample when there is no --ode-run.")
    ] = 1024,
    val_clips: ValClipsOption = 8,
    val_every: ValEveryOption = 100,
    sample_every: SampleEveryOption = 1,
) -> None:
    """Distil the 2-step sparse-causal student from the teacher by asymmetric distribution
    matching (teacher with audio guidance as the real score, a fake score trained online,
    ODE regression, no GAN); export a checkpoint with DiT = the student."""
    from tmrender.errors import UserInputError
    from tmrender.train import dmd as recipe

    if min(batch, reg_batch, pairs) < 1 or critic_updates < 0:
        raise UserInputError("--batch, --reg-batch and --pairs must be at least 1")
    opts = recipe.DmdOptions(
        batch=batch, chunks=chunks, val_clips=val_clips, critic_updates=critic_updates,
        real_context=real_context, context=context, cfg_scale=cfg_scale, reg_weight=reg_weight,
        reg_batch=reg_batch, mouth_weight=mouth_weight, face_mask=face_mask, pairs=pairs,
        seed=seed, sample_every=sample_every,
    )  # fmt: skip
    device = _rank_device(device)
    loop = _loop_options(steps, lr, max_minutes, val_every, seed, threads, device)
    _set_threads(threads)
    stage = recipe.DmdStage(
        data, out, init, teacher, opts, ode_run=ode_run, device=device, on_progress=_progress
    )
    _finish_stage(stage, out, loop, resume, export)


@train_app.command(
    "merge",
    short_help="Join two stage files: the base's networks plus some of the donor's.",
    epilog=(
        "Example (the audio stage ran beside the VAE stage):\n\n"
        "  tmrender train merge --base weights/stages/vae.safetensors "
        "--donor runs/audio/export.safetensors --take audio_encoder "
        "-o weights/stages/audio.safetensors"
    ),
)
def merge(
    base: Annotated[Path, typer.Option(help="Stage file whose config and networks are kept.")],
    donor: Annotated[Path, typer.Option(help="Stage file the --take networks come from.")],
    take: Annotated[list[str], typer.Option(help="Network to take from the donor (repeatable).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged stage file.")],
) -> None:
    """Write a stage file with BASE's config and networks and TAKE from DONOR."""
    from tmrender.train.merge import merge_networks

    merge_networks(base, donor, take, output)
    console.print(
        f"wrote {output}: {base.name} + {', '.join(take)} of {donor.name}", highlight=False
    )
