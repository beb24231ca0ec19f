"""`tmrender train export`: the shipped inference checkpoint (`weights/tm-mini.safetensors`).

One tmrender checkpoint (`tmrender.models.checkpoint`) with every network of the final
stage's file, stored in fp16 network by network where the lip-sync figure does not move
(|dr| < `ExportOptions.tolerance` on held-out clips rendered through the real streaming
path), `trained: true`, and provenance in its metadata:

    extra = {"shipped": {"dtype": {network: "float16" | "float32"},
                         "half_check": {"clips", "seconds", "r_float32", "r_exported", ...}},
             "init": the final stage file's own extra metadata (its steps, corpus, figures),
             "stages": {file stem: extra metadata} of every stage file beside it,
             "test_figures": the summary of a `tmrender eval` report, when given}

and its `<sha256>  <name>` line in the SHA256SUMS of the output folder. The same inputs
give the same bytes (checkpoint metadata is one sorted JSON key), so the line is stable.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tmrender.config import SamplerConfig
from tmrender.errors import UserInputError
from tmrender.files import SUMS_FILE, atomic_write, record_checksum, sha256_file
from tmrender.models.checkpoint import CheckpointError, load_checkpoint, read_metadata
from tmrender.models.checkpoint import save_checkpoint as write_checkpoint
from tmrender.models.talking import TalkingModel

NETWORKS = ("vae", "audio_encoder", "audio_proj", "silence", "dit")
DTYPES = ("auto", "float16", "float32")

ScoreFn = Callable[[TalkingModel], float]


@dataclass(frozen=True)
class ExportOptions:
    """How the shipped file is written."""

    # precision: auto = fp16 per network where the score moves less than `tolerance`
    dtype: str = "auto"
    tolerance: float = 0.005
    # held-out clips for the fp16 check (the last `clips` of the train split by default)
    clips: int = 6
    seconds: float = 6.0  # of each clip, from its start
    split: str = "train"
    seed: int = 0
    # the shipped sampler's `deflicker_taps` (None: as the student's file says)
    deflicker_taps: tuple[float, ...] | None = None
    # and its edge-keeping levels `deflicker_keep` (None: as the student's file says)
    deflicker_keep: tuple[float, ...] | None = None
    # and the re-timing weights `retime` before it (None: as the student's file says)
    retime: tuple[float, ...] | None = None
    # and the levels `keep_reference` at which still pixels show the portrait's own
    # (None: as the student's file says)
    keep_reference: tuple[float, ...] | None = None
    # and the frames `keep_follow` over which the keeper follows the model's steady drawing
    # (None: as the student's file says)
    keep_follow: float | None = None
    # latent frames rendered per chunk (None: the length the student was distilled on)
    chunk_latent_frames: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UserInputError(f"--dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        chunk = self.chunk_latent_frames
        if chunk is not None and chunk < 1:
            raise UserInputError(f"--chunk-latents must be at least 1; got {chunk}")
        follow = self.keep_follow
        if follow is not None and not (follow == 0 or follow >= 1):
            raise UserInputError(f"--keep-follow must be 0 or at least 1 frame; got {follow}")
        if self.clips < 1 or self.seconds <= 0:
            raise UserInputError("--clips must be at least 1 and --seconds positive")


def shipped_sampler(sampler: SamplerConfig, opts: ExportOptions) -> SamplerConfig:
    """The student's sampler with the deflicker taps, edge-keeping levels, re-timing
    weights, reference-keeping levels and follow that `opts` sets (None: as the student's file
    says). Turning the filter off drops its levels too; levels for no filter at all are
    refused (they would be silently ignored)."""
    taps = sampler.deflicker_taps if opts.deflicker_taps is None else opts.deflicker_taps
    keep = sampler.deflicker_keep if opts.deflicker_keep is None else opts.deflicker_keep
    if keep and not taps:
        if opts.deflicker_keep:
            raise UserInputError("--deflicker-keep needs a filter to keep edges from: give "
                                 "--deflicker-taps too")  # fmt: skip
        keep = ()
    retime = sampler.retime if opts.retime is None else opts.retime
    keep_reference = sampler.keep_reference if opts.keep_reference is None else opts.keep_reference
    follow = sampler.keep_follow if opts.keep_follow is None else opts.keep_follow
    if follow and not keep_reference:
        raise UserInputError("--keep-follow needs a reference to keep: give --keep-reference too")
    return replace(
        sampler, deflicker_taps=taps, deflicker_keep=keep, retime=retime,
        keep_reference=keep_reference, keep_follow=follow,
    )  # fmt: skip


# -- precision ------------------------------------------------------------------------------


def with_half_networks(model: TalkingModel, networks: Sequence[str]) -> TalkingModel:
    """A copy of `model` whose named networks are stored in float16 (other tensors keep
    their dtype). `load_checkpoint` casts them back to the compute dtype."""
    out = copy.deepcopy(model)
    for name in networks:
        getattr(out, name).half()
    return out


def rounded_to_half(model: TalkingModel, networks: Sequence[str]) -> TalkingModel:
    """A float32 copy of `model` whose named networks' floating tensors went through
    float16: what a file written by `with_half_networks` loads as."""
    out = with_half_networks(model, networks)
    for name in networks:
        getattr(out, name).float()
    return out


def choose_half_networks(
    model: TalkingModel, score: ScoreFn, tolerance: float
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Networks that may be stored in fp16: all of them if the score of the all-fp16 model
    is within `tolerance` of the fp32 one, else greedily one by one (NETWORKS order),
    keeping each whose addition stays within it. Every accepted set was measured.

    Returns (the networks, figures {"r_float32", "r_exported", "trials": {set: r}})."""
    reference = score(model)
    trials: dict[str, float] = {}

    def measure(names: tuple[str, ...]) -> float:
        value = score(rounded_to_half(model, names))
        trials["+".join(names)] = round(value, 5)
        return value

    chosen: tuple[str, ...] = NETWORKS
    value = measure(chosen)
    if abs(value - reference) >= tolerance:
        chosen, value = (), reference
        for name in NETWORKS:
            candidate = measure((*chosen, name))
            if abs(candidate - reference) < tolerance:
                chosen, value = (*chosen, name), candidate
    figures = {"r_float32": round(reference, 5), "r_exported": round(value, 5), "trials": trials}
    return chosen, figures


def held_out_lipsync(clips: Sequence[Path], reader, seconds: float, seed: int = 0) -> ScoreFn:
    """A score function: mean lip-sync r (mouth reader's opening on the frames rendered by
    the streaming pipeline from each clip's first frame and audio, against the true
    opening) over the first `seconds` of `clips`. The clips are read once, here."""
    from tmrender.data.corpus import read_clip
    from tmrender.data.visemes import PARAMS, SAMPLES_PER_FRAME
    from tmrender.eval.metrics import pearson
    from tmrender.eval.mouth import read_mouth
    from tmrender.eval.sources import model_source
    from tmrender.render.pipeline import RenderOptions

    opening = PARAMS.index("open")
    loaded = [_head_of(read_clip(p), seconds, SAMPLES_PER_FRAME) for p in clips]
    column = list(reader.cfg.outputs).index("open")

    def score(model: TalkingModel) -> float:
        render = model_source(model, RenderOptions(seed=seed))
        rs = [
            pearson(read_mouth(reader, render(clip))[:, column], clip.mouth[:, opening])
            for clip in loaded
        ]
        return float(np.mean(rs))

    return score


def _head_of(clip, seconds: float, samples_per_frame: int):
    """The first `seconds` of a Clip (frames, audio, mouth, pose, boxes cut alike)."""
    from tmrender.data.corpus import FPS

    frames = min(len(clip.frames), max(1, round(seconds * FPS)))
    return replace(
        clip,
        frames=clip.frames[:frames],
        audio=clip.audio[: frames * samples_per_frame],
        mouth=clip.mouth[:frames],
        pose=clip.pose[:frames],
        boxes=clip.boxes[:frames],
    )


# -- provenance -----------------------------------------------------------------------------


def stage_provenance(folder: Path | None, exclude: Path | None = None) -> dict[str, Any]:
    """{file stem: extra metadata} of every tmrender checkpoint in `folder` (the stage
    exports under weights/stages/), sorted by name; other files are skipped."""
    if folder is None or not Path(folder).is_dir():
        return {}
    out = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        if exclude is not None and path.resolve() == Path(exclude).resolve():
            continue
        try:
            out[path.stem] = read_metadata(path)["extra"]
        except CheckpointError:
            continue
    return out


def report_summary(report: Path) -> dict[str, Any]:
    """The per-source summaries of a `tmrender eval` report.json (test figures)."""
    try:
        data = json.loads(Path(report).read_text())
        return {
            "data": data.get("meta", {}).get("data"),
            "split": data.get("meta", {}).get("split"),
            "sources": {k: v["summary"] for k, v in data["sources"].items()},
        }
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserInputError(f"cannot read the eval report {report}: {err}") from err


# -- the shipped file -----------------------------------------------------------------------


def export_model(
    init: Path,
    output: Path,
    opts: ExportOptions,
    score: ScoreFn | None = None,
    stages_dir: Path | None = None,
    report: Path | None = None,
) -> dict[str, Any]:
    """Write the shipped checkpoint `output` from the final stage's file `init`.

    score: the lip-sync figure of a model (needed for dtype "auto"); stages_dir: folder of
    the stage exports whose metadata goes into the provenance; report: a `tmrender eval`
    report.json whose summaries go in as the test figures. Records the SHA-256 in
    output's folder's SHA256SUMS. Returns {"path", "sha256", "dtype", "half_check", "bytes"}.
    """
    # 1. The final stage's networks, in float32 on the CPU.
    model, meta = load_checkpoint(init)
    model.cfg = replace(model.cfg, sampler=shipped_sampler(model.cfg.sampler, opts))
    if opts.chunk_latent_frames is not None:
        model.set_chunk_latent_frames(opts.chunk_latent_frames)
    # 2. Precision, network by network.
    if opts.dtype == "auto":
        if score is None:
            raise UserInputError("--dtype auto needs held-out clips: give --data (or --dtype)")
        half, check = choose_half_networks(model, score, opts.tolerance)
        check = {"clips": opts.clips, "seconds": opts.seconds, "split": opts.split,
                 "tolerance": opts.tolerance, **check}  # fmt: skip
    else:
        half = NETWORKS if opts.dtype == "float16" else ()
        check = {"forced": opts.dtype}
    # 3. Provenance.
    extra = {
        "shipped": {
            "dtype": {n: "float16" if n in half else "float32" for n in NETWORKS},
            "half_check": check,
        },
        "init": {"file": Path(init).name, **meta["extra"]},
        "stages": stage_provenance(stages_dir, exclude=init),
    }
    if report is not None:
        extra["test_figures"] = report_summary(report)
    # 4. Write atomically, then the checksum line.
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output) as partial:
        write_checkpoint(with_half_networks(model, half), partial, trained=True, extra_meta=extra)
    digest = sha256_file(output)
    record_checksum(output.parent / SUMS_FILE, output, digest)
    return {"path": str(output), "sha256": digest, "dtype": extra["shipped"]["dtype"],
            "half_check": check, "bytes": output.stat().st_size}  # fmt: skip


def default_score(data: Path, opts: ExportOptions, reader_path: Path | None = None) -> ScoreFn:
    """`held_out_lipsync` on the last `opts.clips` clips of `opts.split` in `data`."""
    from tmrender.data.corpus import list_clips
    from tmrender.eval.mouth import load_mouth_reader

    clips = list_clips(data, opts.split)[-opts.clips :]
    if not clips:
        raise UserInputError(f"no clips in the {opts.split} split of {data}")
    return held_out_lipsync(clips, load_mouth_reader(reader_path), opts.seconds, opts.seed)


def export_from_corpus(
    init: Path,
    output: Path,
    opts: ExportOptions,
    data: Path | None = None,
    reader: Path | None = None,
    stages_dir: Path | None = None,
    report: Path | None = None,
) -> dict[str, Any]:
    """`export_model` as `tmrender train export` runs it: for dtype "auto" the score is
    `default_score` on `data` (with the mouth reader `reader`, default the shipped one),
    and the provenance reads the stage files beside `init` unless `stages_dir` is given."""
    score = None
    if opts.dtype == "auto" and data is not None:
        score = default_score(data, opts, reader)
    stages_dir = stages_dir or Path(init).parent
    return export_model(init, output, opts, score=score, stages_dir=stages_dir, report=report)
