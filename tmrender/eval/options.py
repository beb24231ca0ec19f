"""Options of an evaluation: how clips are measured (`EvalOptions`) and what one run
measures and where its report goes (`RunOptions`, the defaults of `tmrender eval`).

Light on imports (no torch): the command reads its defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tmrender.models.registry import DEFAULT_MODEL

LONG_SECONDS = 600.0  # `long` runs measure clips at least this long (first vs last minute)


@dataclass(frozen=True)
class EvalOptions:
    """How clips are measured."""

    # lip sync
    max_lag: int = 5  # frames searched either side for the A/V offset
    pause_trim: int = 3  # frames ignored at each end of a pause (coarticulation)
    # appearance
    mask_dilate: int = 4  # pixels (at 128 x 128) around the mouth box left out
    # drift
    window_seconds: float = 60.0  # first / last window of long clips
    # report
    strip_frames: int = 8  # frames per strip image


@dataclass(frozen=True)
class RunOptions:
    """What one evaluation run (`tmrender.eval.run.run_eval`) measures and where its report
    goes; the defaults are `tmrender eval`'s."""

    # inputs
    data: Path  # corpus folder written by `tmrender synth` or `tmrender prepare`
    out: Path  # report folder: report.json, PNGs, index.html
    models: tuple[str, ...] = (DEFAULT_MODEL,)  # names, .safetensors paths or baselines
    baselines: bool = False  # also measure every baseline (gt, still, loudness)
    clips: int = 10  # the first N clips of the split
    split: str = "test"
    long: bool = False  # only clips of LONG_SECONDS or more, with first/last-minute drift
    # measuring
    reader: Path | None = None  # mouth reader weights; None: the shipped ones
    syncnet: Path | None = None  # syncnet_v2.model: also LSE-C / LSE-D (tmrender.eval.syncnet)
    device: str = "cpu"  # where models render
    seed: int = 0  # of every model's render
    measure: EvalOptions = EvalOptions()
    # report
    plots: int = 3  # clips drawn in the report's figures
