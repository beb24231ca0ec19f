"""One evaluation run, as `tmrender eval` does it: pick the split's clips, build the frame
sources, render and measure every clip with every source, and write the report.

`run_eval(RunOptions(data=..., out=...))` from Python is the same run as `tmrender eval
--data ... --out ...`: the command's defaults are `RunOptions`'s (`tmrender.eval.options`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tmrender.data.corpus import list_clips
from tmrender.errors import UserInputError
from tmrender.eval import real as real_eval
from tmrender.eval import report as report_mod
from tmrender.eval import suite
from tmrender.eval.mouth import DEFAULT_WEIGHTS, load_mouth_reader
from tmrender.eval.options import LONG_SECONDS, RunOptions
from tmrender.eval.real import is_real_corpus, plot_offsets
from tmrender.eval.report import OFFSET_PNG
from tmrender.eval.sources import BASELINES, FrameSource, baseline_source, model_source
from tmrender.eval.syncnet import SyncNetScorer, load_syncnet
from tmrender.files import make_folder, sha256_file
from tmrender.models.mouth_reader import MouthReader
from tmrender.models.registry import load_model
from tmrender.render.pipeline import RenderOptions

LANDMARK_READER = {  # what reads the mouth on a real corpus, in the reader's place
    "path": "68-point landmarks (tmrender.faces.measure.framed_mouth)",
    "sha256": None,
}


def source_names(opts: RunOptions) -> list[str]:
    """Every source to measure, once each: the models, then the baselines if asked."""
    return list(dict.fromkeys([*opts.models, *(BASELINES if opts.baselines else ())]))


def run_eval(
    opts: RunOptions,
    on_step: Callable[[int, int, str, str, float], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    teacher_gap: Callable[[MouthReader], dict] | None = None,
) -> dict:
    """Evaluate, write the report under `opts.out` and return it (report.json's document).

    on_step(done, total, source, clip_id, seconds): after each render (progress).
    on_warning(line): a model that is untrained. teacher_gap(reader): figures stored as the
    report's "teacher_gap" (the CLI's `--teacher`, measured by the training stages' code)."""
    # 1. Check the inputs: clips, output folder, reader (landmarks on a real corpus).
    paths = check_inputs(opts)
    real = is_real_corpus(paths)
    if real and opts.long:
        raise UserInputError("--long measures drift on synthetic clips; this corpus is real video")
    reader_path = opts.reader or DEFAULT_WEIGHTS
    reader = None if real else load_mouth_reader(reader_path)
    syncnet = None
    if opts.syncnet is not None:  # before any render: a wrong file stops the run at once
        syncnet = SyncNetScorer(load_syncnet(opts.syncnet, opts.device))
    # 2. Sources: baselines by name, anything else is a model to load.
    names = source_names(opts)
    labels = source_labels(names)
    sources = {labels[name]: make_source(name, opts, on_warning) for name in names}
    # 3. Render and measure.
    total, done = len(paths) * len(sources), [0]

    def step(name: str, clip_id: str, seconds: float) -> None:
        done[0] += 1
        if on_step is not None:
            on_step(done[0], total, name, clip_id, seconds)

    (opts.out / OFFSET_PNG).unlink(missing_ok=True)
    if real:
        results, traces = real_eval.evaluate(
            paths, sources, opts.measure, trace_clips=opts.plots, on_step=step, syncnet=syncnet
        )
        plot_offsets(opts.out / OFFSET_PNG, results, opts.measure.max_lag)
    else:
        results, traces = suite.evaluate(
            paths, sources, reader, opts.measure, long=opts.long, trace_clips=opts.plots,
            on_step=step, syncnet=syncnet,
        )  # fmt: skip
    # 4. Write the report.
    meta = {
        "data": str(opts.data), "split": opts.split, "clips": len(paths), "long": opts.long,
        "truth": "landmarks" if real else "synthetic",
        "reader": LANDMARK_READER if real else {
            "path": str(reader_path), "sha256": sha256_file(reader_path)
        },
        "options": {**asdict(opts.measure), "device": opts.device, "seed": opts.seed},
    }  # fmt: skip
    if opts.syncnet is not None:
        meta["syncnet"] = {"path": str(opts.syncnet), "sha256": sha256_file(opts.syncnet)}
    if teacher_gap is not None and reader is not None:
        meta["teacher_gap"] = teacher_gap(reader)
    return report_mod.write_report(opts.out, results, traces, meta)


def check_inputs(opts: RunOptions) -> list[Path]:
    """The clips to evaluate; makes the report folder. One-line errors for what is unusable."""
    if opts.clips < 1:
        raise UserInputError(f"--clips must be at least 1, got {opts.clips}")
    if not opts.models and not opts.baselines:
        raise UserInputError("nothing to evaluate: give a model or baselines")
    paths = select_clips(list_clips(opts.data, opts.split), opts.clips, opts.long)
    if not paths:
        hint = f"; make some with `tmrender synth --seconds {LONG_SECONDS:g}`" if opts.long else ""
        raise UserInputError(f"no suitable clips in the {opts.split} split of {opts.data}{hint}")
    make_folder(opts.out, "report folder")
    return paths


def select_clips(paths: list[Path], limit: int, long: bool) -> list[Path]:
    """The first `limit` clips; with `long`, only those of at least LONG_SECONDS."""
    if long:
        paths = [
            p
            for p in paths
            if json.loads((p / "meta.json").read_text())["seconds"] >= LONG_SECONDS - 1e-6
        ]
    return paths[:limit]


def source_labels(names: list[str]) -> dict[str, str]:
    """Short report labels: a model file's stem instead of its path, unless two collide."""
    short = {name: Path(name).stem if name.endswith(".safetensors") else name for name in names}
    if len(set(short.values())) < len(short):
        return {name: name for name in names}
    return short


def make_source(
    name: str, opts: RunOptions, on_warning: Callable[[str], None] | None = None
) -> FrameSource:
    """A frame source: a baseline by name, else a model (name or path) rendered on
    `opts.device` with `opts.seed`."""
    if name in BASELINES:
        return baseline_source(name)
    net, meta = load_model(name, opts.device)
    if not meta.get("trained", True) and on_warning is not None:
        on_warning(f"{meta['path']} is an untrained model: expect its figures at the floor")
    return model_source(net, RenderOptions(seed=opts.seed))
