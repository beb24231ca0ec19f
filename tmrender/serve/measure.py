"""Latency and frame rate of `tmrender live`, measured on loopback:

    python -m tmrender.serve.measure [--model M] [--image IMG] [--audio SPEECH] [--onsets N]

A Python WebRTC client (`client.LiveClient`) plays speech pieces after silences as its
microphone and timestamps every frame it gets back; the mouth reader reads the mouth
opening of each. Figures, printed as JSON:

- glass to glass: per onset, the time from the onset leaving the client to the first
  received frame whose mouth opening is halfway from its closed level to the piece's peak;
- the model's own part of it: the same half-rise read off the file render of the same
  audio (`render_frames`), in audio time;
- pipeline lag: the shift that best aligns the received mouth curve with the file render's
  (and their correlation: how much the live cut of the audio changes the lips);
- frame rate received, the longest gap between frames, the server's counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from tmrender.eval.mouth import load_mouth_reader, read_mouth
from tmrender.media.audio import SAMPLE_RATE, VOICE_RMS_DB, frame_rms_db, load_audio, write_wav
from tmrender.media.image import load_image
from tmrender.models.registry import load_model
from tmrender.render.pipeline import RenderOptions, render_frames
from tmrender.serve.client import LiveClient
from tmrender.serve.server import LiveServer
from tmrender.serve.session import LiveOptions

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CLIENT_RATE = 48_000
GAP_SECONDS, PIECE_SECONDS = 1.0, 0.8
SETTLE_SECONDS = 2.0  # after the last piece, so its frames come back


def onset_signal(speech: np.ndarray, onsets: int) -> tuple[np.ndarray, list[int]]:
    """Pieces of `speech` (16 kHz) after silences -> (signal (N,), onset samples): each
    onset is the first voiced 10 ms of its piece."""
    gap, piece = int(GAP_SECONDS * SAMPLE_RATE), int(PIECE_SECONDS * SAMPLE_RATE)
    step = SAMPLE_RATE // 100
    parts, marks, at, offset = [], [], 0, 0
    while len(marks) < onsets:
        chunk = np.resize(speech, offset + piece)[offset : offset + piece]
        offset = (offset + piece) % max(1, speech.size - piece)
        voiced = np.flatnonzero(
            frame_rms_db(chunk[: chunk.size // step * step], step) > VOICE_RMS_DB
        )
        if not voiced.size:
            continue
        chunk = chunk[voiced[0] * step :]
        parts += [np.zeros(gap, np.float32), chunk]
        marks.append(at + gap)
        at += gap + chunk.size
    parts.append(np.zeros(int(SETTLE_SECONDS * SAMPLE_RATE), np.float32))
    return np.concatenate(parts).astype(np.float32), marks


def upsample(x: np.ndarray, factor: int) -> np.ndarray:
    """16 kHz -> 48 kHz by linear interpolation (the server's low-pass takes the rest)."""
    t = np.arange(x.size * factor) / factor
    return np.interp(t, np.arange(x.size), x).astype(np.float32)


def half_rise(times: np.ndarray, opening: np.ndarray, onset: float) -> float | None:
    """First time after `onset` at which `opening` is halfway from its level in the 0.3 s
    before the onset to its peak in the 1.5 s after it (None without a clear rise)."""
    before = opening[(times >= onset - 0.3) & (times < onset)]
    after = (times >= onset) & (times < onset + 1.5)
    if not before.size or not after.any():
        return None
    low, peak = float(np.median(before)), float(opening[after].max())
    if peak - low < 0.05:
        return None
    rising = np.flatnonzero(after & (opening >= low + 0.5 * (peak - low)))
    return float(times[rising[0]]) if rising.size else None


async def live_run(model, reference, signal, options: LiveOptions) -> tuple[LiveClient, dict]:
    """Play `signal` (16 kHz) into a loopback server; the client and the last figures."""
    server = LiveServer(model, reference, options, on_event=lambda _: None)
    url = f"http://127.0.0.1:{await server.start('127.0.0.1', 0)}"
    try:
        client = await LiveClient.connect(url, upsample(signal, CLIENT_RATE // SAMPLE_RATE))
        await asyncio.sleep(signal.size / SAMPLE_RATE + 1.0)
        figures = client.figures[-1] if client.figures else {}
        await client.close()
    finally:
        await server.stop()
    return client, figures


def measure(args: argparse.Namespace) -> dict:
    model, _ = load_model(args.model, "cpu")
    cfg = model.cfg
    reference = load_image(args.image, (cfg.height, cfg.width))
    signal, onsets = onset_signal(load_audio(args.audio), args.onsets)
    reader = load_mouth_reader()
    # 1. The file render of the same audio: the model's own response to each onset.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "onsets.wav"
        write_wav(path, signal)
        offline = np.concatenate(list(render_frames(model, reference, path, RenderOptions())))
    off_open = read_mouth(reader, offline)[:, 0]
    off_times = (np.arange(len(off_open)) + 1) / cfg.fps  # a frame ends at (i + 1) / fps
    model_lag = [half_rise(off_times, off_open, s / SAMPLE_RATE) for s in onsets]
    # 2. The live run.
    options = LiveOptions(lookahead_frames=args.lookahead, deflicker=not args.no_deflicker)
    client, figures = asyncio.run(live_run(model, reference, signal, options))
    times = np.array([t for t, _ in client.frames])
    rx_open = read_mouth(reader, np.stack([f for _, f in client.frames]))[:, 0]
    glass = []
    for s in onsets:
        sent = client.sent_at(s * CLIENT_RATE // SAMPLE_RATE)
        rise = half_rise(times, rx_open, sent)
        glass.append(None if rise is None else rise - sent)
    # 3. The lag that best aligns the two mouth curves (frame i's audio ends at off_times).
    sent_times = np.array([client.sent_at(int(t * CLIENT_RATE)) for t in off_times])
    best = max(
        (np.corrcoef(off_open, np.interp(sent_times + lag, times, rx_open))[0, 1], lag)
        for lag in np.arange(0.0, 1.5, 0.01)
    )
    valid = [g for g in glass if g is not None]
    own = [m - s / SAMPLE_RATE for m, s in zip(model_lag, onsets, strict=True) if m is not None]
    gaps = np.diff(times)
    return {
        "options": {"lookahead_frames": args.lookahead, "deflicker": not args.no_deflicker},
        "onsets": len(onsets),
        "glass_to_glass_ms": {
            "median": _ms(np.median(valid)) if valid else None,
            "p95": _ms(np.percentile(valid, 95)) if valid else None,
            "read": len(valid),
        },
        "model_half_rise_ms": _ms(np.median(own)) if own else None,
        "pipeline_lag_ms": _ms(best[1]),
        "mouth_correlation_live_vs_file": round(float(best[0]), 3),
        "fps_received": round((len(times) - 1) / (times[-1] - times[0]), 2),
        "longest_gap_ms": _ms(gaps.max()),
        "server": figures,
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
    }


def _ms(seconds: float) -> int:
    return round(1000 * float(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--image", default=str(EXAMPLES / "face.png"))
    parser.add_argument("--audio", default=str(EXAMPLES / "speech.wav"))
    parser.add_argument("--onsets", type=int, default=12)
    parser.add_argument("--lookahead", type=int, default=LiveOptions.lookahead_frames)
    parser.add_argument("--no-deflicker", action="store_true")
    start = time.perf_counter()
    result = measure(parser.parse_args())
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
