"""The evaluation suite: render test clips with frame sources and measure them.

Per clip and source (`clip_metrics`), over a frame window:

- `sync_r`        Pearson r of the mouth reader's opening on the generated frames with the
                  ground-truth `open` column (lip sync; 1 = perfect, ~0 = unrelated);
- `width_r`, `round_r`  the same for lip width and rounding;
- `offset`        the lag in frames (-max_lag..max_lag) of best cross-correlation of the
                  two opening curves (positive: video late; None for a mouth that never
                  moves, which counts as not in sync);
- `silence_open`  mean read opening on pause frames (truth: lips closed, ~0);
- `psnr`, `ssim`  against the true frames, the mouth region (mouth box grown by
                  `mask_dilate` px and extended down over the chin) masked out; PSNR of
                  the window's mean squared error, SSIM the mean of its frames';
- `motion_ratio`  mean frame-to-frame change relative to the truth's;
- `sharpness`     Laplacian energy (high-frequency detail) of the generated frames over the
                  true frames' (1 keeps all the detail; blur is below 1);
- `first_psnr`    whole clip only: PSNR of the first generated frame against the clip's
                  first frame, the reference the render starts from;
- with a SyncNet (`tmrender eval --syncnet FILE`, whole clip only, `tmrender.eval.syncnet`):
  `sync_c` LSE-C (SyncNet's confidence, higher is better), `sync_d` LSE-D (its distance,
  lower is better) and `sync_offset` (its A/V offset in frames), the figures papers report.

Long clips (`window_seconds` or more, `tmrender eval --long`) are also measured over their
first and last `window_seconds`; `drift` is (last - first) / |first| per metric
(last - first for the opening in pauses, a level near 0). They are measured window by
window too (`windows`, minute by minute by default), and `trend` is the change that a
least-squares line through all windows makes from the first to the last: two single
minutes differ by what is said and how the head happens to move in them, a line through
all ten tells a model that drifts from one whose content varies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tmrender.data.corpus import FPS, Clip, read_clip
from tmrender.data.visemes import PARAMS, SAMPLES_PER_FRAME
from tmrender.errors import UserInputError
from tmrender.eval import metrics
from tmrender.eval.mouth import read_mouth
from tmrender.eval.options import EvalOptions
from tmrender.eval.sources import FrameSource
from tmrender.eval.syncnet import SyncNetScorer
from tmrender.models.mouth_reader import MouthReader

SCHEMA = "tmrender-eval/1"
METRICS = (
    "sync_r", "width_r", "round_r", "offset", "silence_open", "psnr", "ssim", "motion_ratio",
    "sharpness", "first_psnr",
)  # fmt: skip
READER_OUTPUTS = ("open", "width", "round")  # the reader's first columns, in this order
# with --syncnet, over the whole clip (tmrender.eval.syncnet): LSE-C, LSE-D, offset
SYNCNET_METRICS = ("sync_c", "sync_d", "sync_offset")
DRIFT_METRICS = ("sync_r", "silence_open", "psnr", "ssim", "motion_ratio", "sharpness")
ABSOLUTE_DRIFT = ("silence_open",)  # drift of these is last - first, not relative
# DESIGN.md section 6 (the instrument figures the product must reach)
TARGETS = {"sync_r": 0.9, "offset": 0, "psnr": 30.0, "drift": 0.02}


@dataclass
class ClipTrace:
    """What the report draws for one clip and source: opening curves and sample frames."""

    clip_id: str
    truth_open: np.ndarray  # (T,) ground truth
    read_open: np.ndarray  # (T,) reader on the source's frames
    audio: np.ndarray  # (N,)
    pauses: np.ndarray  # (T,) bool
    strip_index: np.ndarray  # (S,) frame numbers
    strip_generated: np.ndarray  # (S, H, W, 3)
    strip_truth: np.ndarray  # (S, H, W, 3)
    metrics: dict = field(default_factory=dict)


def appearance_mask(clip: Clip, start: int, stop: int, dilate: int) -> np.ndarray:
    """Bool (stop - start, H, W): True where appearance is compared (outside the mouth box
    grown by `dilate` px at 128 px scale, extended down to the chin)."""
    height, width = clip.frames.shape[1:3]
    grow = max(1, round(dilate * height / 128))
    boxes = clip.boxes[start:stop]
    chin = boxes[:, 1, 3]  # bottom of the face box: the jaw moves with the mouth
    return metrics.box_mask(boxes[:, 0], height, width, grow, down_to=chin)


def window_metrics(
    generated: np.ndarray,
    clip: Clip,
    read: np.ndarray,
    pauses: np.ndarray,
    start: int,
    stop: int,
    opts: EvalOptions,
    batch: int = 128,  # frames per step: big arrays churn the allocator (system time)
) -> dict:
    """All `METRICS` of generated[start:stop] against the clip (read: (T, k) reader outputs
    on generated, columns as the reader's `outputs`)."""
    truth = clip.mouth[start:stop]
    names = list(PARAMS)
    out = {}
    for column, key in (("open", "sync_r"), ("width", "width_r"), ("round", "round_r")):
        j = READER_OUTPUTS.index(column)
        out[key] = metrics.pearson(read[start:stop, j], truth[:, names.index(column)])
    j_open = READER_OUTPUTS.index("open")
    out["offset"] = metrics.av_offset(
        read[start:stop, j_open], truth[:, names.index("open")], opts.max_lag
    )
    quiet = pauses[start:stop]
    out["silence_open"] = float(read[start:stop, j_open][quiet].mean()) if quiet.any() else None
    out.update(appearance_metrics(generated, clip, start, stop, opts, batch))
    return {k: _round(v) for k, v in out.items()}


def appearance_metrics(
    generated: np.ndarray, clip: Clip, start: int, stop: int, opts: EvalOptions, batch: int = 128
) -> dict:
    """psnr, ssim (mouth region masked out), motion_ratio and sharpness (Laplacian energy
    of the generated frames over the true frames', pooled) of generated[start:stop]
    (T, H, W, 3) against the clip's frames, unrounded."""
    mse, ssim, energy, true_energy = [], [], 0.0, 0.0
    for lo in range(start, stop, batch):
        hi = min(stop, lo + batch)
        mask = appearance_mask(clip, lo, hi, opts.mask_dilate)
        mse.append(metrics.masked_mse(generated[lo:hi], clip.frames[lo:hi], mask))
        ssim.append(metrics.ssim(generated[lo:hi], clip.frames[lo:hi], mask))
        energy += metrics.laplacian_energy(generated[lo:hi]) * (hi - lo)
        true_energy += metrics.laplacian_energy(clip.frames[lo:hi]) * (hi - lo)
    return {
        "psnr": float(metrics.psnr_from_mse(np.concatenate(mse).mean())),  # of the pooled MSE
        "ssim": float(np.concatenate(ssim).mean()),
        "motion_ratio": metrics.motion_ratio(generated[start:stop], clip.frames[start:stop]),
        "sharpness": energy / true_energy if true_energy > 0 else None,
    }


def _round(value):
    if value is None or isinstance(value, int):
        return value
    return None if not np.isfinite(value) else round(float(value), 5)


def drift(first: dict, last: dict) -> dict:
    """Change from the first to the last window of each `DRIFT_METRICS` entry: relative,
    (last - first) / |first|, except for levels that should be ~0 (`ABSOLUTE_DRIFT`),
    where a relative change of tiny numbers means nothing: last - first."""
    out = {}
    for key in DRIFT_METRICS:
        a, b = first.get(key), last.get(key)
        if a is None or b is None:
            out[key] = None
        elif key in ABSOLUTE_DRIFT:
            out[key] = _round(b - a)
        else:
            out[key] = None if abs(a) < 1e-9 else _round((b - a) / abs(a))
    return out


def trend(windows: list[dict]) -> dict:
    """Per `DRIFT_METRICS` entry, the change from the first to the last of consecutive
    windows along a least-squares line through all of them: relative to the line's first
    value, or absolute for `ABSOLUTE_DRIFT` (as `drift`); None with fewer than 3 values."""
    out = {}
    for key in DRIFT_METRICS:
        points = [(i, w[key]) for i, w in enumerate(windows) if w.get(key) is not None]
        if len(points) < 3:
            out[key] = None
            continue
        x, y = np.array(points, dtype=np.float64).T
        slope, start = np.polyfit(x, y, 1)
        end = start + slope * (len(windows) - 1)
        if key in ABSOLUTE_DRIFT:
            out[key] = _round(end - start)
        else:
            out[key] = None if abs(start) < 1e-9 else _round((end - start) / abs(start))
    return out


def clip_metrics(
    generated: np.ndarray,
    clip: Clip,
    reader: MouthReader,
    opts: EvalOptions,
    long: bool = False,
) -> tuple[dict, np.ndarray]:
    """Metrics of one generated clip: {"all": ..., and when `long` "first", "last",
    "drift", "windows" (one per whole window, in order)}; also returns the reader's (T, k)
    outputs on the generated frames."""
    assert generated.shape == clip.frames.shape, (
        f"generated {generated.shape} vs true {clip.frames.shape}"
    )
    if tuple(reader.cfg.outputs[:3]) != READER_OUTPUTS:
        raise UserInputError(
            f"the mouth reader reads {', '.join(reader.cfg.outputs)}; the evaluation needs a "
            f"reader of {', '.join(READER_OUTPUTS)} first (--reader)"
        )
    n = len(clip.frames)
    read = read_mouth(reader, generated)
    pauses = metrics.pause_frames(clip.meta["phonemes"], n, SAMPLES_PER_FRAME, opts.pause_trim)
    result = {"all": window_metrics(generated, clip, read, pauses, 0, n, opts)}
    # the render starts from the clip's first frame: how close its own first frame stays
    result["all"]["first_psnr"] = _round(float(metrics.psnr(generated[:1], clip.frames[:1])[0]))
    if long:
        w = int(round(opts.window_seconds * FPS))
        spans = [(lo, lo + w) for lo in range(0, n - w + 1, w)]
        first, last = (0, min(w, n)), (max(0, n - w), n)
        measured = {  # the first and last windows are usually among the consecutive ones
            span: window_metrics(generated, clip, read, pauses, *span, opts)
            for span in dict.fromkeys([*spans, first, last])
        }
        result["first"], result["last"] = measured[first], measured[last]
        result["drift"] = drift(result["first"], result["last"])
        result["windows"] = [measured[span] for span in spans]
    return result, read


def strip_index(clip: Clip, count: int) -> np.ndarray:
    """`count` frame numbers for a strip: evenly spread over the first speech-rich stretch
    (the 4 s around the frame of widest true opening in the first 20 s)."""
    n = len(clip.frames)
    head = clip.mouth[: min(n, 20 * FPS), PARAMS.index("open")]
    centre = int(np.argmax(head)) if head.size else 0
    lo = max(0, min(centre - 2 * FPS, n - 4 * FPS))
    hi = min(n, lo + 4 * FPS)
    return np.unique(np.linspace(lo, hi - 1, count).round().astype(int))


def evaluate(
    clips: list[Path],
    sources: dict[str, FrameSource],
    reader: MouthReader,
    opts: EvalOptions,
    long: bool = False,
    trace_clips: int = 3,
    on_step: Callable[[str, str, float], None] | None = None,
    syncnet: SyncNetScorer | None = None,
) -> tuple[dict, list[dict[str, ClipTrace]]]:
    """Measure every source on every clip. Returns (per-source results
    {name: {"summary": ..., "clips": [...]}}, traces of the first `trace_clips` clips).

    `on_step(source, clip_id, seconds)` is called after each render (progress). With a
    `syncnet`, each clip's "all" also has `SYNCNET_METRICS` (on the clip's face boxes)."""
    results = {name: {"clips": []} for name in sources}
    traces: list[dict[str, ClipTrace]] = []
    for k, path in enumerate(clips):
        clip = read_clip(path)
        clip_id = clip.meta["id"]
        traced: dict[str, ClipTrace] = {}
        for name, source in sources.items():
            tick = time.perf_counter()
            generated = source(clip)
            seconds = time.perf_counter() - tick
            measured, read = clip_metrics(generated, clip, reader, opts, long)
            if syncnet is not None:
                measured["all"].update(syncnet.score(generated, clip.boxes[:, 1], clip.audio))
            row = {"id": clip_id, "frames": len(clip.frames), "render_seconds": round(seconds, 3)}
            results[name]["clips"].append({**row, **measured})
            if k < trace_clips:
                traced[name] = _trace(clip, generated, read, measured["all"], opts)
            if on_step:
                on_step(name, clip_id, seconds)
            del generated
        if traced:
            traces.append(traced)
    for result in results.values():
        result["summary"] = summarise(result["clips"], long)
    return results, traces


def _trace(clip: Clip, generated: np.ndarray, read: np.ndarray, measured: dict, opts) -> ClipTrace:
    idx = strip_index(clip, opts.strip_frames)
    n = len(clip.frames)
    return ClipTrace(
        clip_id=clip.meta["id"],
        truth_open=clip.mouth[:, PARAMS.index("open")].copy(),
        read_open=read[:, 0].copy(),
        audio=clip.audio,
        pauses=metrics.pause_frames(clip.meta["phonemes"], n, SAMPLES_PER_FRAME, opts.pause_trim),
        strip_index=idx,
        strip_generated=np.array(generated[idx]),
        strip_truth=clip.frames[idx].copy(),
        metrics=measured,
    )


def summarise(rows: list[dict], long: bool) -> dict:
    """Means over clips of each metric, the worst clip's sync_r, the share of clips with
    offset 0 (and at SyncNet offset 0, when measured) and the render's real-time factor
    (render seconds / audio seconds); with `long`, the means for the first/last windows and
    the drift too, the means window by window over the windows every clip has, and their
    `trend`."""
    out = {"clips": len(rows)}
    out.update(_mean_metrics([r["all"] for r in rows]))
    sync = [r["all"]["sync_r"] for r in rows if r["all"]["sync_r"] is not None]
    out["sync_r_min"] = _round(min(sync)) if sync else None
    out["offset_zero_share"] = _round(np.mean([r["all"]["offset"] == 0 for r in rows]))
    if any("sync_offset" in r["all"] for r in rows):
        zero = [r["all"].get("sync_offset") == 0 for r in rows]
        out["sync_offset_zero_share"] = _round(np.mean(zero))
    seconds = sum(r["frames"] for r in rows) / FPS
    out["realtime_factor"] = _round(sum(r["render_seconds"] for r in rows) / max(seconds, 1e-9))
    if long:
        for part in ("first", "last", "drift"):
            out[part] = _mean_metrics([r[part] for r in rows])
        count = min(len(r["windows"]) for r in rows) if rows else 0
        out["windows"] = [_mean_metrics([r["windows"][i] for r in rows]) for i in range(count)]
        out["trend"] = trend(out["windows"])
    return out


def _mean_metrics(rows: list[dict]) -> dict:
    keys = [k for k in (*METRICS, *SYNCNET_METRICS) if any(k in r for r in rows)]
    out = {}
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = _round(float(np.mean(values))) if values else None
    return out
