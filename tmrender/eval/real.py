"""Lip sync on real video: `tmrender eval` on a corpus `tmrender prepare` tracked (its
clips' meta say `"mouth_truth": "landmarks"`).

The mouth truth of such a clip is the landmark mouth opening and width of its real frames
(`faces.measure.framed_mouth` on the model-framed frames, mouth.npy's `open` and `width`
columns, in eye distances). Each source's frames are measured the same way, so:

- `sync_r`     Pearson r of the rendered frames' landmark opening with the real frames';
- `width_r`    the same for the mouth width (`round_r` is None: landmarks give no rounding);
- `offset`     the lag in frames (-max_lag..max_lag) of best cross-correlation of the two
               openings, and `offset_ms` = 40 ms * offset. Sign as ITU-R BT.1359: positive =
               the picture is late, i.e. the sound leads; negative = the sound lags. The
               Recommendation's detectability thresholds are +45 ms (sound leading) and
               -125 ms (sound lagging) (`DETECTABLE_MS`), drawn on the offset figure;
- `silence_open` the mean opening (eye distances) on the clip's silent frames (meta
               "silence", `pause_trim` frames in from each end), psnr / ssim / motion_ratio
               as on the synthetic corpus (the lips' box from the landmarks masked out).

The `loudness` baseline has no frames to draw a real face with: its opening is the audio's
loudness envelope (`sources.loudness_mouth`'s `open` column), its frames the still image
(for the appearance figures). The pooled figures (`*_pooled`) are the correlations over all
clips' frames together, beside the means over clips.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tmrender.data.corpus import FPS, Clip, read_clip
from tmrender.data.visemes import PARAMS
from tmrender.errors import UserInputError
from tmrender.eval import metrics, suite
from tmrender.eval.options import EvalOptions
from tmrender.eval.report import COLOURS, MODEL_COLOUR, _pyplot
from tmrender.eval.sources import FrameSource, loudness_mouth, still_source
from tmrender.eval.suite import ClipTrace, summarise
from tmrender.eval.syncnet import SyncNetScorer
from tmrender.faces.measure import framed_mouth

LANDMARK_TRUTH = "landmarks"
MS_PER_FRAME = 1000 // FPS  # 40
DETECTABLE_MS = (-125, 45)  # ITU-R BT.1359: sound lagging / sound leading, detectability
OPEN, WIDTH = PARAMS.index("open"), PARAMS.index("width")
CURVE_SOURCES = ("loudness",)  # measured from the audio, not from frames


def is_real_corpus(paths: list[Path]) -> bool:
    """True when the clips' mouth truth comes from landmarks (a tracked `prepare` corpus);
    UserInputError when the split mixes both kinds."""
    kinds = {
        json.loads((p / "meta.json").read_text()).get("mouth_truth") == LANDMARK_TRUTH
        for p in paths
    }
    if len(kinds) > 1:
        raise UserInputError(
            "the split mixes tracked real clips (landmark mouth truth) with other clips; "
            "evaluate them from separate corpus folders"
        )
    return kinds == {True}


def silence_mask(meta: dict, frames: int, trim: int) -> np.ndarray:
    """Bool (T,): frames inside the clip's silent runs (meta "silence", [first, end) frame
    pairs), at least `trim` frames from each end."""
    out = np.zeros(frames, bool)
    for first, end in meta.get("silence", []):
        if end - first > 2 * trim:
            out[first + trim : min(end - trim, frames)] = True
    return out


def measured_mouth(name: str, clip: Clip, generated: np.ndarray) -> np.ndarray:
    """Opening and width (T, 2) of a source's frames: landmarks, or the loudness envelope
    (width NaN) for a curve source."""
    if name in CURVE_SOURCES:
        opening = loudness_mouth(clip.audio, len(clip.frames))[:, OPEN]
        return np.stack([opening, np.full_like(opening, np.nan)], axis=1).astype(np.float32)
    return framed_mouth(generated)


def real_clip_metrics(
    read: np.ndarray, clip: Clip, generated: np.ndarray, opts: EvalOptions
) -> dict:
    """Metrics of one source on one real clip (read: (T, 2) opening, width)."""
    truth = clip.mouth
    width_known = bool(np.isfinite(read[:, 1]).all())
    offset = metrics.av_offset(read[:, 0], truth[:, OPEN], opts.max_lag)
    quiet = silence_mask(clip.meta, len(truth), opts.pause_trim)
    out = {
        "sync_r": metrics.pearson(read[:, 0], truth[:, OPEN]),
        "width_r": metrics.pearson(read[:, 1], truth[:, WIDTH]) if width_known else None,
        "round_r": None,
        "offset": offset,
        "offset_ms": None if offset is None else offset * MS_PER_FRAME,
        "silence_open": float(read[quiet, 0].mean()) if quiet.any() else None,
        "truth_silence_open": float(truth[quiet, OPEN].mean()) if quiet.any() else None,
        "flat": bool(np.ptp(read[:, 0]) < 1e-9),
        **suite.appearance_metrics(generated, clip, 0, len(truth), opts),
    }
    rounded = {k: v if isinstance(v, bool) else suite._round(v) for k, v in out.items()}
    lags = metrics.lagged_pearson(read[:, 0], truth[:, OPEN], opts.max_lag)
    return {**rounded, "lag_r": [round(float(v), 5) for v in lags]}


def pooled_lagged(pairs: list[tuple[np.ndarray, np.ndarray]], max_lag: int) -> np.ndarray:
    """r between generated[t + lag] and truth[t] over every clip's overlap together
    (pairs of (T_i,) curves), for lag in -max_lag..max_lag: (2 max_lag + 1,)."""
    out = np.zeros(2 * max_lag + 1)
    for i, lag in enumerate(range(-max_lag, max_lag + 1)):
        gen, tru = [], []
        for generated, truth in pairs:
            n = len(truth)
            lo, hi = max(0, -lag), min(n, n - lag)
            if hi > lo:
                gen.append(generated[lo + lag : hi + lag])
                tru.append(truth[lo:hi])
        if gen:
            out[i] = metrics.pearson(np.concatenate(gen), np.concatenate(tru))
    return out


def _centred(curves: np.ndarray) -> np.ndarray:
    """Columns of (T, k) minus their means, float64; a flat column is exactly 0 (not the
    rounding noise of its mean, which would correlate with anything)."""
    out = curves.astype(np.float64) - curves.astype(np.float64).mean(axis=0)
    out[:, np.ptp(curves, axis=0) < 1e-9] = 0.0
    return out


def pooled_summary(curves: list[tuple[np.ndarray, np.ndarray]], opts: EvalOptions) -> dict:
    """The pooled figures of one source: curves per clip ((T, 2) read, (T, 7) truth), each
    clip's centred on its own mean first, so that the pooled r measures how the mouth moves
    within clips, not how one face's level differs from another's."""
    curves = [(_centred(r), _centred(t)) for r, t in curves]
    read = np.concatenate([r for r, _ in curves])
    truth = np.concatenate([t for _, t in curves])
    widths = np.isfinite(read[:, 1]).all()
    pairs = [(r[:, 0], t[:, OPEN]) for r, t in curves]
    lags = pooled_lagged(pairs, opts.max_lag)
    best = None
    if np.any(lags != 0.0):
        best = int(np.arange(-opts.max_lag, opts.max_lag + 1)[int(np.argmax(lags))])
    return {
        "sync_r_pooled": suite._round(metrics.pearson(read[:, 0], truth[:, OPEN])),
        "width_r_pooled": suite._round(metrics.pearson(read[:, 1], truth[:, WIDTH]))
        if widths
        else None,
        "offset_pooled_ms": None if best is None else best * MS_PER_FRAME,
        "lag_r_pooled": [round(float(v), 5) for v in lags],
    }


def evaluate(
    clips: list[Path],
    sources: dict[str, FrameSource],
    opts: EvalOptions,
    trace_clips: int = 3,
    on_step: Callable[[str, str, float], None] | None = None,
    syncnet: SyncNetScorer | None = None,
) -> tuple[dict, list[dict[str, ClipTrace]]]:
    """`suite.evaluate` for real clips: every source on every clip, measured with
    landmarks. Returns ({name: {"summary", "clips"}}, traces of the first `trace_clips`)."""
    results = {name: {"clips": []} for name in sources}
    curves: dict[str, list] = {name: [] for name in sources}
    traces: list[dict[str, ClipTrace]] = []
    for k, path in enumerate(clips):
        clip = read_clip(path)
        clip_id = clip.meta["id"]
        traced: dict[str, ClipTrace] = {}
        for name, source in sources.items():
            tick = time.perf_counter()
            generated = still_source(clip) if name in CURVE_SOURCES else source(clip)
            seconds = time.perf_counter() - tick
            read = measured_mouth(name, clip, generated)
            measured = real_clip_metrics(read, clip, generated, opts)
            if syncnet is not None:
                measured.update(syncnet.score(generated, clip.boxes[:, 1], clip.audio))
            row = {"id": clip_id, "frames": len(clip.frames), "render_seconds": round(seconds, 3)}
            results[name]["clips"].append({**row, "all": measured})
            curves[name].append((read, clip.mouth))
            if k < trace_clips:
                traced[name] = _trace(clip, generated, read, measured, opts)
            if on_step:
                on_step(name, clip_id, seconds)
        if traced:
            traces.append(traced)
    for name, result in results.items():
        rows = result["clips"]
        summary = summarise(rows, long=False)
        ms = [r["all"]["offset_ms"] for r in rows if r["all"]["offset_ms"] is not None]
        summary["offset_ms"] = suite._round(float(np.mean(ms))) if ms else None
        summary.update(pooled_summary(curves[name], opts))
        result["summary"] = summary
    return results, traces


def _trace(
    clip: Clip, generated: np.ndarray, read: np.ndarray, measured: dict, opts: EvalOptions
) -> ClipTrace:
    n = len(clip.frames)
    centre = int(np.argmax(clip.mouth[: min(n, 20 * FPS), OPEN]))
    lo = max(0, min(centre - 2 * FPS, n - 4 * FPS))
    idx = np.unique(np.linspace(lo, min(n, lo + 4 * FPS) - 1, opts.strip_frames).round())
    idx = idx.astype(np.int64)
    return ClipTrace(
        clip_id=clip.meta["id"],
        truth_open=clip.mouth[:, OPEN].copy(),
        read_open=read[:, 0].copy(),
        audio=clip.audio,
        pauses=silence_mask(clip.meta, n, opts.pause_trim),
        strip_index=idx,
        strip_generated=np.array(generated[idx]),
        strip_truth=clip.frames[idx].copy(),
        metrics=measured,
    )


def plot_offsets(path: Path, results: dict, max_lag: int) -> None:
    """OFFSET_PNG: per source, the pooled r at each A/V lag (ms) and each clip's best lag,
    with BT.1359's detectability limits (outside -125 .. +45 ms: detectable, shaded)."""
    plt = _pyplot()
    lags_ms = np.arange(-max_lag, max_lag + 1) * MS_PER_FRAME
    fig, ax = plt.subplots(figsize=(8, 4.2))
    lo, hi = DETECTABLE_MS
    edge = (max_lag + 0.5) * MS_PER_FRAME
    ax.axvspan(-edge, lo, color="0.92", linewidth=0)
    ax.axvspan(hi, edge, color="0.92", linewidth=0)
    ax.axvline(lo, color="tab:red", linestyle="--", linewidth=1)
    ax.axvline(hi, color="tab:red", linestyle="--", linewidth=1)
    ax.text(hi, 1.0, " +45 ms: sound leads", color="tab:red", fontsize=8, va="top")
    ax.text(lo, 1.0, "-125 ms: sound lags ", color="tab:red", fontsize=8, va="top", ha="right")
    for k, (name, result) in enumerate(results.items()):
        colour = COLOURS.get(name, MODEL_COLOUR)
        pooled = result["summary"]["lag_r_pooled"]
        ax.plot(lags_ms, pooled, color=colour, marker="o", markersize=3, label=name)
        for row in result["clips"]:
            offset, curve = row["all"]["offset"], row["all"]["lag_r"]
            if offset is not None:
                jitter = (k - len(results) / 2) * 2.0  # keep equal offsets of sources apart
                ax.plot(offset * MS_PER_FRAME + jitter, curve[offset + max_lag], "x",
                        color=colour, markersize=6)  # fmt: skip
    ax.set(
        xlim=(-edge, edge), ylim=(-1.05, 1.05), xlabel="A/V offset (ms; + = picture late, "
        "sound leads)", ylabel="lip-sync r (landmark opening)",
        title="r at each offset, pooled over clips (x: each clip's best); grey: detectable "
        "(ITU-R BT.1359)",
    )  # fmt: skip
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
