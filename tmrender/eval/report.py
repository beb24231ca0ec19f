"""The written report of `tmrender eval`: report.json, PNG figures and index.html.

OUT/report.json                 schema SCHEMA: options, reader (and syncnet), per-source
                                summary and clips
OUT/opening-<clip>.png          audio waveform, then per source the read opening vs truth
OUT/strip-<source>-<clip>.png   sample frames, generated (top) above true (bottom)
OUT/index.html                  the metrics table beside the targets, and the figures
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np

from tmrender.data.corpus import FPS
from tmrender.eval.suite import DRIFT_METRICS, METRICS, SCHEMA, SYNCNET_METRICS, TARGETS, ClipTrace

COLOURS = {"gt": "tab:green", "still": "tab:grey", "loudness": "tab:orange"}
MODEL_COLOUR = "tab:blue"
PLOT_SECONDS = 30  # clips up to this long are drawn whole
LONG_PLOT_SECONDS = 20  # longer ones: their first and last this many seconds
DRIFT_PNG = "drift.png"  # long runs: the drift metrics window by window
TARGET_CELLS = {  # the figures of DESIGN.md section 6, as table cells
    "sync_r": f">= {TARGETS['sync_r']}",
    "offset": str(TARGETS["offset"]),
    "offset_zero_share": "1.0",
    "psnr": f">= {TARGETS['psnr']:g}",
    "motion_ratio": "~1",
    "silence_open": "~0",
    "offset_ms": "-125..+45",
}
METRIC_LABELS = {
    "sync_r": "lip sync r (open)",
    "sync_r_min": "worst clip r",
    "width_r": "width r",
    "round_r": "round r",
    "offset": "A/V offset (frames)",
    "offset_zero_share": "clips at offset 0",
    "silence_open": "opening in pauses",
    "psnr": "PSNR dB (mouth masked)",
    "ssim": "SSIM (mouth masked)",
    "motion_ratio": "motion / truth's",
    "sharpness": "sharpness / truth's",
    "first_psnr": "frame 0 PSNR dB vs reference",
    "realtime_factor": "render time / audio time",
    "sync_c": "Sync-C (LSE-C)",
    "sync_d": "Sync-D (LSE-D)",
    "sync_offset": "SyncNet offset (frames)",
    "sync_offset_zero_share": "clips at SyncNet offset 0",
    "sync_r_pooled": "lip sync r, pooled",
    "width_r_pooled": "width r, pooled",
    "offset_ms": "A/V offset (ms, + = sound leads)",
    "offset_pooled_ms": "pooled A/V offset (ms)",
}
REAL_KEYS = ("sync_r_pooled", "width_r_pooled", "offset_ms", "offset_pooled_ms")
OFFSET_PNG = "offsets.png"  # real corpora: r at each A/V offset (tmrender.eval.real)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_json(path: Path, report: dict) -> None:
    """Write `report` atomically."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    os.replace(partial, path)


def build_report(results: dict, meta: dict) -> dict:
    """The report.json document: {"schema", **meta, "targets", "sources": results}."""
    return {"schema": SCHEMA, **meta, "targets": TARGETS, "sources": results}


def plot_segments(n_frames: int) -> list[tuple[int, int]]:
    """Frame ranges drawn in an opening figure: the whole clip up to 30 s, else its first
    and last 20 s (long clips, to show drift)."""
    if n_frames <= PLOT_SECONDS * FPS:
        return [(0, n_frames)]
    part = LONG_PLOT_SECONDS * FPS
    return [(0, part), (n_frames - part, n_frames)]


def plot_opening(path: Path, traces: dict[str, ClipTrace]) -> None:
    """Waveform on top, then one panel per source: read opening vs true opening over time,
    pause frames shaded; long clips get a column for their start and one for their end."""
    plt = _pyplot()
    names = list(traces)
    first = traces[names[0]]
    segments = plot_segments(len(first.truth_open))
    spf = len(first.audio) / max(len(first.truth_open), 1)
    fig, axes = plt.subplots(
        len(names) + 1, len(segments), figsize=(12, 1.6 + 1.7 * len(names)),
        sharex="col", squeeze=False,
    )  # fmt: skip
    for col, (lo, hi) in enumerate(segments):
        t = np.arange(lo, hi) / FPS
        a_lo, a_hi = int(lo * spf), int(hi * spf)
        wave = axes[0, col]
        wave.plot(np.arange(a_lo, a_hi) / (spf * FPS), first.audio[a_lo:a_hi], linewidth=0.3,
                  color="black")  # fmt: skip
        wave.set(ylabel="audio" if col == 0 else None)
        for ax, name in zip(axes[1:, col], names, strict=True):
            trace = traces[name]
            _shade(ax, t, trace.pauses[lo:hi])
            ax.plot(t, trace.truth_open[lo:hi], color="black", linewidth=1.0, label="true")
            ax.plot(t, trace.read_open[lo:hi], color=COLOURS.get(name, MODEL_COLOUR),
                    linewidth=1.0, label=f"{name} (read)")  # fmt: skip
            ax.set(ylabel="open" if col == 0 else None, ylim=(-0.05, 1.05))
            r = trace.metrics.get("sync_r")
            ax.legend(loc="upper right", fontsize=8, title_fontsize=8,
                      title=f"r = {r:.3f}" if r is not None else None)  # fmt: skip
        axes[-1, col].set_xlabel("seconds (grey: pauses)")
    fig.suptitle(f"{first.clip_id}: mouth opening, read off the frames vs true")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _shade(ax, t: np.ndarray, mask: np.ndarray) -> None:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        ax.axvspan(t[a], t[min(b, len(t) - 1)], color="0.9", linewidth=0)


def plot_strip(path: Path, name: str, trace: ClipTrace) -> None:
    """Sample frames: generated (top row) above the true ones (bottom row)."""
    plt = _pyplot()
    count = len(trace.strip_index)
    fig, axes = plt.subplots(2, count, figsize=(2.0 * count, 4.4), squeeze=False)
    for j, frame in enumerate(trace.strip_index):
        for i, (image, label) in enumerate(
            ((trace.strip_generated[j], name), (trace.strip_truth[j], "true"))
        ):
            ax = axes[i, j]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label)
            if i == 0:
                ax.set_title(f"{frame / FPS:.2f} s", fontsize=8)
    fig.suptitle(f"{trace.clip_id}: {name} (top) vs true (bottom)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_figures(out: Path, traces: list[dict[str, ClipTrace]]) -> list[dict]:
    """All PNGs; returns [{"clip", "opening", "strips": {source: file}}] for the HTML."""
    listed = []
    for traced in traces:
        clip_id = next(iter(traced.values())).clip_id
        opening = f"opening-{clip_id}.png"
        plot_opening(out / opening, traced)
        strips = {}
        for name, trace in traced.items():
            strips[name] = f"strip-{_slug(name)}-{clip_id}.png"
            plot_strip(out / strips[name], name, trace)
        listed.append({"clip": clip_id, "opening": opening, "strips": strips})
    return listed


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]


def summary_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the per-source summary, metrics as columns (SyncNet's when measured)."""
    keys = ["sync_r", "sync_r_min", *[k for k in METRICS if k != "sync_r"]]
    keys += ["offset_zero_share", "realtime_factor"]
    if any("sync_r_pooled" in r["summary"] for r in results.values()):
        keys = [keys[0], *REAL_KEYS[:1], *keys[1:3], *REAL_KEYS[1:], *keys[3:]]
    if any("sync_c" in r["summary"] for r in results.values()):
        keys += [*SYNCNET_METRICS, "sync_offset_zero_share"]
    header = ["source", *[METRIC_LABELS.get(k, k) for k in keys]]
    rows = [["target (DESIGN.md)", *[TARGET_CELLS.get(k, "") for k in keys]]]
    for name, result in results.items():
        summary = result["summary"]
        rows.append([name, *[_fmt(summary.get(k)) for k in keys]])
    return header, rows


def drift_table(results: dict) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of first-window, last-window, drift and fitted-trend figures, or None
    (not long)."""
    if not any("drift" in r["summary"] for r in results.values()):
        return None
    keys = [k for k in METRICS if k in next(iter(results.values()))["summary"]["drift"]]
    header = ["source", *[f"{k} first / last / drift / trend" for k in keys]]
    rows = []
    for name, result in results.items():
        s = result["summary"]
        trend = s.get("trend", {})
        cells = [
            " / ".join(
                _fmt(v)
                for v in (s["first"].get(k), s["last"].get(k), s["drift"].get(k), trend.get(k))
            )  # fmt: skip
            for k in keys
        ]
        rows.append([name, *cells])
    return header, rows


def syncnet_clip_table(results: dict) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows): SyncNet's Sync-C / Sync-D / offset of each clip, a column per source,
    or None (measured without --syncnet)."""
    if not any("sync_c" in r["summary"] for r in results.values()):
        return None
    header = ["clip", *[f"{name} Sync-C / Sync-D / offset" for name in results]]
    columns = [r["clips"] for r in results.values()]
    rows = []
    for i, row in enumerate(columns[0]):
        cells = [
            " / ".join(_fmt(clips[i]["all"].get(k)) for k in SYNCNET_METRICS) for clips in columns
        ]
        rows.append([row["id"], *cells])
    return header, rows


def window_table(results: dict) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows): each drift metric of each source window by window (minute by minute
    by default), or None (not long)."""
    if not any(r["summary"].get("windows") for r in results.values()):
        return None
    count = max(len(r["summary"].get("windows", [])) for r in results.values())
    header = ["source / metric", *[str(i + 1) for i in range(count)]]
    rows = []
    for name, result in results.items():
        windows = result["summary"].get("windows", [])
        for key in DRIFT_METRICS:
            rows.append([f"{name} {key}", *[_fmt(w.get(key)) for w in windows]])
    return header, rows


def plot_windows(path: Path, results: dict, window_seconds: float) -> bool:
    """drift PNG: each drift metric window by window, a line per source; False (nothing
    written) when no source has windows."""
    sources = {
        n: r["summary"]["windows"] for n, r in results.items() if r["summary"].get("windows")
    }
    if not sources:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(DRIFT_METRICS), figsize=(3.2 * len(DRIFT_METRICS), 2.8))
    for ax, key in zip(axes, DRIFT_METRICS, strict=True):
        for name, windows in sources.items():
            x = [
                (i + 1) * window_seconds / 60
                for i, w in enumerate(windows)
                if w.get(key) is not None
            ]
            y = [w[key] for w in windows if w.get(key) is not None]
            ax.plot(x, y, marker="o", markersize=3, label=name)
        ax.set(title=METRIC_LABELS.get(key, key), xlabel="minute")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(path: Path, report: dict, figures: list[dict]) -> None:
    """index.html: the summary table, the targets, drift (long runs) and the figures."""
    header, rows = summary_table(report["sources"])
    parts = [
        "<!doctype html><meta charset='utf-8'><title>tmrender eval</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
        "th{background:#eee}img{max-width:100%}</style>",
        "<h1>tmrender eval</h1>",
        f"<p>{html.escape(str(report['clips']))} clips from {html.escape(report['data'])} "
        f"({html.escape(report['split'])} split); mouth reader "
        f"{html.escape(report['reader']['path'])}. gt = the true frames (ceiling), still = "
        "the first frame held, loudness = mouth driven by audio loudness only (floors).</p>",
        _html_table(header, rows),
        f"<p>Drift target: each metric of the last minute within "
        f"{report['targets']['drift']:.0%} of the first (long runs).</p>",
    ]
    per_clip = syncnet_clip_table(report["sources"])
    if "syncnet" in report and per_clip:
        parts.append(
            f"<p>Sync-C / Sync-D: SyncNet ({html.escape(report['syncnet']['path'])}) confidence "
            "(higher is better) and distance (lower is better) at its best A/V offset within "
            "+-15 frames, as syncnet_python measures them (LSE-C / LSE-D).</p>",
        )
        parts += ["<h2>SyncNet, clip by clip</h2>", _html_table(*per_clip)]
    drift = drift_table(report["sources"])
    if drift:
        parts += [
            "<h2>Drift: first vs last minute</h2>",
            "<p>trend: the change from the first window to the last along a least-squares "
            "line through all windows (content varies from minute to minute; a drifting "
            "model moves the line).</p>",
            _html_table(*drift),
        ]
    windows = window_table(report["sources"])
    if windows:
        parts += ["<h2>Window by window</h2>", _html_table(*windows)]
        if (path.parent / DRIFT_PNG).exists():
            parts.append(f"<img src='{DRIFT_PNG}'>")
    if (path.parent / OFFSET_PNG).exists():
        parts += [
            "<h2>A/V offset</h2><p>Lip-sync r at each offset (+ = the picture is late, the "
            "sound leads), pooled over clips; grey: offsets ITU-R BT.1359 calls detectable "
            "(beyond +45 ms sound leading or -125 ms sound lagging).</p>",
            f"<img src='{OFFSET_PNG}'>",
        ]
    for fig in figures:
        parts.append(f"<h2>{html.escape(fig['clip'])}</h2><img src='{fig['opening']}'>")
        parts += [f"<img src='{src}'>" for src in fig["strips"].values()]
    path.write_text("\n".join(parts) + "\n")


def write_report(out: Path, results: dict, traces: list[dict[str, ClipTrace]], meta: dict) -> dict:
    """Write report.json, the figures and index.html under `out`; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(results, meta)
    write_json(out / "report.json", report)
    figures = write_figures(out, traces)
    (out / DRIFT_PNG).unlink(missing_ok=True)
    plot_windows(out / DRIFT_PNG, results, meta.get("options", {}).get("window_seconds", 60.0))
    write_html(out / "index.html", report, figures)
    return report
