"""The audio/video offset of what `tmrender live --mode say` plays, on loopback:

    python -m tmrender.serve.measure_say [--model M] [--image IMG] [--utterances N]

A Python WebRTC client (`client.LiveClient`, no microphone) sends texts; the server speaks
them (eSpeak NG) and sends the avatar's frames and voice; the client timestamps every
video frame and every 20 ms of voice it gets back. The server records what it rendered
(`--record`: the frames and the audio that drove them). Figures, printed as JSON:

- offset by correlation: the received mouth curve (the mouth reader's opening of each
  received frame, at its arrival time) against the rendered one placed at the arrival time
  of the audio that drove each frame (found by aligning the received voice with the
  recorded audio); the shift that aligns them best is how late the picture is played
  relative to its sound;
- offset at onsets: per utterance, (received mouth half-rise - received voice onset) minus
  the same in the recording, and minus the same in the file render of the recorded audio
  (`render_frames` with the file options: what `generate` would show);

Positive: the picture comes after its sound (sound leads); ITU-R BT.1359 finds +45 ms
(sound first) to -125 ms (sound late) undetectable. The client is aiortc: its audio jitter
buffer holds 4 Opus frames (80 ms) before the first is decoded and its video one frame
(40 ms), so a browser plays sound a little earlier relative to the picture than measured
here; `receiver_buffers_ms` says by how much this client's buffers differ.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from tmrender.data.speech import DEFAULT_VOICE
from tmrender.eval.mouth import load_mouth_reader, read_mouth
from tmrender.media.audio import SAMPLE_RATE, VOICE_RMS_DB, frame_rms_db, load_audio, write_wav
from tmrender.media.image import load_image
from tmrender.media.video import read_video_frames
from tmrender.models.registry import load_model
from tmrender.render.pipeline import RenderOptions, render_frames
from tmrender.serve.client import LiveClient
from tmrender.serve.measure import EXAMPLES, half_rise
from tmrender.serve.say import synthesize
from tmrender.serve.server import LiveServer
from tmrender.serve.session import LiveOptions

TEXTS = (
    "Hello, my name is Tim.",
    "Papa baked a big brown pie.",
    "Maybe we meet by the mill.",
    "Open the window, please.",
    "Bob made a map of the bay.",
    "What a lovely morning.",
)
LEAD_SECONDS = 1.5  # silence before the first text (the renderer's first chunks)
GAP_SECONDS = 1.2  # between utterances: the mouth closes, an onset follows
SETTLE_SECONDS = 2.5  # after the last, for its frames and voice to come back
ONSET_QUIET_SECONDS = 0.3  # silence before a sound that counts as an onset
RECEIVER_BUFFERS_MS = 80 - 40  # aiortc's audio jitter buffer (4 x 20 ms) minus video's (1 frame)


def onsets(samples: np.ndarray, rate: int, quiet: float = ONSET_QUIET_SECONDS) -> list[int]:
    """Onsets of sound in samples (N,) at `rate`: the first voiced 10 ms (RMS above
    VOICE_RMS_DB) after at least `quiet` seconds of unvoiced ones; sample indices."""
    step = rate // 100
    voiced = frame_rms_db(samples[: samples.size // step * step], step) > VOICE_RMS_DB
    need, run, found = round(quiet * 100), 0, []
    for i, is_voiced in enumerate(voiced):
        if is_voiced and run >= need:
            found.append(i * step)
        run = 0 if is_voiced else run + 1
    return found


def received_voice(client: LiveClient) -> tuple[np.ndarray, np.ndarray]:
    """The voice the client got: samples (N,) float32 at 16 kHz and the arrival time of
    each (N,) (its frame's arrival plus its place in the frame)."""
    parts, times = [], []
    for arrival, samples, rate in client.voice:
        step = rate // SAMPLE_RATE
        mono = samples[: samples.size // step * step].reshape(-1, step).mean(axis=1)
        parts.append(mono)
        times.append(arrival + np.arange(mono.size) / SAMPLE_RATE)
    if not parts:
        return np.zeros(0, np.float32), np.zeros(0)
    return np.concatenate(parts).astype(np.float32), np.concatenate(times)


def align(received: np.ndarray, driven: np.ndarray, max_shift: int) -> int:
    """The shift s (samples) with received[n] ~ driven[n - s], by the correlation of their
    10 ms envelopes (then refined on samples around it)."""
    step = SAMPLE_RATE // 100

    def envelope(x: np.ndarray) -> np.ndarray:
        x = x[: x.size // step * step].reshape(-1, step)
        return np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=1))

    r, d = envelope(received), envelope(driven)
    coarse = max(range(-max_shift // step, max_shift // step + 1), key=lambda s: _overlap(r, d, s))
    fine = range(coarse * step - step, coarse * step + step + 1)
    return max(fine, key=lambda s: _overlap(received, driven, s))


def _overlap(a: np.ndarray, b: np.ndarray, shift: int) -> float:
    """sum a[n] b[n - shift] over the overlap, normalized."""
    lo, hi = max(0, shift), min(a.size, b.size + shift)
    if hi - lo < 10:
        return -np.inf
    x, y = a[lo:hi], b[lo - shift : hi - shift]
    return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12))


async def say_run(model, reference, texts, seconds, options: LiveOptions) -> tuple:
    """Speak `texts` (each `seconds` long) through a loopback server in say mode (whatever
    `options.mode`); returns the client, the server's last figures and the recording's path
    (None without `options.record`)."""
    options = dataclasses.replace(options, mode="say")
    server = LiveServer(model, reference, options, on_event=lambda _: None)
    url = f"http://127.0.0.1:{await server.start('127.0.0.1', 0)}"
    try:
        client = await LiveClient.connect(url, None)
        await asyncio.sleep(LEAD_SECONDS)
        for text, length in zip(texts, seconds, strict=True):
            await client.say(text)
            await asyncio.sleep(length + GAP_SECONDS)
        await asyncio.sleep(SETTLE_SECONDS)
        figures = client.figures[-1] if client.figures else {}
        await client.close()
        start = time.monotonic()
        while server.busy and time.monotonic() - start < 20:
            await asyncio.sleep(0.1)
    finally:
        await server.stop()
    return client, figures, server.recorded[0] if server.recorded else None


def measure_say(
    model: str | None = None,
    image: Path | str = EXAMPLES / "face.png",
    utterances: int = len(TEXTS),
    voice: str = DEFAULT_VOICE,
    options: LiveOptions | None = None,
) -> dict:
    """Run say mode on loopback and measure the audio/video offset of what the client
    receives (see the module docstring). Returns the figures (ms) as a dict."""
    loaded, _ = load_model(model, "cpu")
    cfg = loaded.cfg
    reference = load_image(image, (cfg.height, cfg.width))
    texts = [TEXTS[i % len(TEXTS)] for i in range(utterances)]
    seconds = [synthesize(text, voice).size / SAMPLE_RATE for text in texts]
    reader = load_mouth_reader()
    with tempfile.TemporaryDirectory() as folder:
        record = Path(folder) / "say.mp4"
        base = options or LiveOptions()
        live = dataclasses.replace(base, voice=voice, record=record)
        # 1. The live run: what the client got, and what the server rendered from what.
        client, figures, written = asyncio.run(say_run(loaded, reference, texts, seconds, live))
        if written is None:
            raise RuntimeError(f"the session wrote no recording: {figures.get('error')}")
        driven = load_audio(written)
        rendered = read_video_frames(written)
        # 2. The file render of the same audio.
        wav = Path(folder) / "driven.wav"
        write_wav(wav, driven)
        offline = np.concatenate(list(render_frames(loaded, reference, wav, RenderOptions())))
    voice_rx, voice_times = received_voice(client)
    frame_times = np.array([t for t, _ in client.frames])
    rx_open = read_mouth(reader, np.stack([f for _, f in client.frames]))[:, 0]
    rec_open = read_mouth(reader, rendered)[:, 0]
    file_open = read_mouth(reader, offline)[:, 0]
    # 3. When the audio of each rendered frame arrived: align the received voice with it.
    shift = align(voice_rx, driven, max_shift=voice_rx.size)

    def arrival(sample: np.ndarray) -> np.ndarray:
        return np.interp(sample + shift, np.arange(voice_times.size), voice_times)

    spf = cfg.samples_per_frame
    start_of = np.arange(len(rec_open)) * spf  # frame i shows audio from sample i * spf
    lag, corr = _best_lag(frame_times, rx_open, arrival(start_of), rec_open)
    # 4. Onsets: received voice and mouth, against the recording and the file render.
    per_onset = []
    for onset in onsets(driven, SAMPLE_RATE):
        heard = float(arrival(np.array([onset]))[0])
        seen = half_rise(frame_times, rx_open, heard)
        t = onset / SAMPLE_RATE
        own = half_rise(start_of / SAMPLE_RATE, rec_open, t)
        filed = half_rise(np.arange(len(file_open)) / cfg.fps, file_open, t)
        if seen is not None and own is not None:
            per_onset.append(
                (seen - heard - (own - t), None if filed is None else seen - heard - (filed - t))
            )
    vs_rec = [a for a, _ in per_onset]
    vs_file = [b for _, b in per_onset if b is not None]
    gaps = np.diff(frame_times)
    return {
        "utterances": len(texts),
        "offset_by_correlation_ms": _ms(lag),
        "mouth_correlation": round(corr, 3),
        "offset_at_onsets_vs_recording_ms": _spread(vs_rec),
        "offset_at_onsets_vs_file_render_ms": _spread(vs_file),
        "onsets_read": f"{len(per_onset)}/{len(onsets(driven, SAMPLE_RATE))}",
        "receiver_buffers_ms": RECEIVER_BUFFERS_MS,
        "voice_received_s": round(voice_rx.size / SAMPLE_RATE, 2),
        "fps_received": round((len(frame_times) - 1) / (frame_times[-1] - frame_times[0]), 2),
        "longest_gap_ms": _ms(gaps.max()),
        "server": figures,
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
    }


def _best_lag(
    times: np.ndarray, opening: np.ndarray, when: np.ndarray, reference: np.ndarray
) -> tuple[float, float]:
    """The shift L (s, 5 ms steps within +-0.4 s) that best correlates opening(when + L)
    (received, at `times`) with `reference` (rendered), and that correlation."""
    inside = (when > times[0] + 0.5) & (when < times[-1] - 0.5)
    scores = [
        (
            float(
                np.corrcoef(reference[inside], np.interp(when[inside] + lag, times, opening))[0, 1]
            ),
            lag,
        )
        for lag in np.arange(-0.4, 0.4001, 0.005)
    ]
    corr, lag = max(scores)
    return float(lag), corr


def _spread(values: list[float]) -> dict:
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": _ms(np.median(values)),
        "min": _ms(min(values)),
        "max": _ms(max(values)),
        "n": len(values),
    }


def _ms(seconds: float) -> int:
    return round(1000 * float(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--image", default=str(EXAMPLES / "face.png"))
    parser.add_argument("--utterances", type=int, default=len(TEXTS))
    parser.add_argument("--voice", default=DEFAULT_VOICE)
    parser.add_argument("--lookahead", type=int, default=LiveOptions.lookahead_frames)
    parser.add_argument("--no-deflicker", action="store_true")
    args = parser.parse_args()
    options = LiveOptions(lookahead_frames=args.lookahead, deflicker=not args.no_deflicker)
    start = time.perf_counter()
    result = measure_say(args.model, args.image, args.utterances, args.voice, options)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
