"""The audio/video offset of what `tmrender live --mode say` plays, on loopback:

    python -m tmrender.serve.measure_say [--model M] [--image IMG] [--utterances N]

A Python WebRTC client (`client.LiveClient`, no microphone) sends texts; the server speaks
them (eSpeak NG) and sends the avatar's frames and voice; the client timestamps every
video frame and every 20 ms of voice it gets back. The server records what it rendered
(`--record`: the frames and the audio that drove them). Figures, printed as JSON:

- offset per frame: each received frame is matched to the rendered frame it shows (nearest
  picture); the server sends each frame with the audio that drove it (silence for a frame
  shown again), so the received voice is aligned with the voice those frames imply, and
  the arrival of each new frame with sound is compared with the arrival of its sound;
- offset by correlation, per utterance: the received mouth curve (the mouth reader's
  opening of each received frame, at its arrival time) against the rendered one placed at
  the arrival time of the audio that drove each frame (found by aligning the utterance's
  sound in the received voice with the recorded audio); the shift that aligns them best is
  how late the picture is played relative to its sound;
- offset at onsets, per utterance: (received mouth half-rise - received voice onset) minus
  the same in the recording, and minus the same in the file render of the recorded audio
  (`render_frames` with the file options: what `generate` would show);

Positive: the picture comes after its sound (sound leads); ITU-R BT.1359 finds +45 ms
(sound first) to -125 ms (sound late) undetectable. The client is aiortc: its audio jitter
buffer holds 4 Opus frames (80 ms) and its video one frame (40 ms), and it does no lip
sync, so its sound comes about `receiver_buffers_ms` later relative to the picture than a
receiver that buffers both alike (a browser aligns the two by their RTCP sender reports).
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

from tmrender.config import TEMPORAL_FILTERS
from tmrender.data.speech import DEFAULT_VOICE
from tmrender.eval.mouth import load_mouth_reader, read_mouth
from tmrender.media.audio import SAMPLE_RATE, VOICE_RMS_DB, frame_rms_db, load_audio, write_wav
from tmrender.media.image import load_image
from tmrender.media.video import read_video_frames
from tmrender.models.registry import load_model
from tmrender.render.pipeline import RenderOptions, render_frames
from tmrender.serve.client import LiveClient
from tmrender.serve.measure import EXAMPLES, ServerProcess, half_rise
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


def local_shift(
    received: np.ndarray, driven: np.ndarray, onset: int, guess: int, span: int = SAMPLE_RATE
) -> int | None:
    """The shift s with received[onset + s] ~ driven[onset], from the 0.5 s of sound after
    `onset` searched within `guess` +- `span` samples (None where that is out of reach)."""
    snippet = driven[onset : onset + SAMPLE_RATE // 2]
    lo = max(0, onset + guess - span)
    hi = min(received.size, onset + guess + span + snippet.size)
    if hi - lo < snippet.size:
        return None
    return lo + align(received[lo:hi], snippet, max_shift=hi - lo) - onset


def _overlap(a: np.ndarray, b: np.ndarray, shift: int) -> float:
    """sum a[n] b[n - shift] over the overlap, normalized."""
    lo, hi = max(0, shift), min(a.size, b.size + shift)
    if hi - lo < 10:
        return -np.inf
    x, y = a[lo:hi], b[lo - shift : hi - shift]
    return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12))


def match_frames(
    received: np.ndarray, rendered: np.ndarray, portrait: np.ndarray, reach: int = 16
) -> np.ndarray:
    """Which rendered frame each received one shows: received (M, H, W, 3) and rendered
    (N, H, W, 3) uint8 -> (M,) int, -1 for the portrait shown before the first. Frames go
    forward (a frame shown again keeps its index; dropped ones are skipped, at most `reach`
    at a time), each to the nearest by mean squared difference of 2x-reduced grey images."""

    def small(frames: np.ndarray) -> np.ndarray:
        grey = frames.astype(np.float32).mean(axis=-1)
        h, w = grey.shape[-2] // 2 * 2, grey.shape[-1] // 2 * 2
        return grey[..., :h, :w].reshape(*grey.shape[:-2], h // 2, 2, w // 2, 2).mean((-3, -1))

    rx, rendered_small, still = small(received), small(rendered), small(portrait[None])[0]
    shown, last = np.full(len(rx), -1), -1
    for k, frame in enumerate(rx):
        first = max(0, last)
        candidates = rendered_small[first : first + reach]
        errors = ((candidates - frame) ** 2).mean(axis=(1, 2))
        if last < 0 and ((still - frame) ** 2).mean() < errors.min():
            continue
        last = shown[k] = first + int(np.argmin(errors))
    return shown


def frame_offsets(
    shown: np.ndarray,
    frame_times: np.ndarray,
    voice: np.ndarray,
    voice_times: np.ndarray,
    driven: np.ndarray,
    spf: int,
) -> tuple[np.ndarray, float]:
    """Per received frame that brings a new rendered frame with sound: its arrival minus the
    arrival of the sound that drove it (s), and how well the received voice matches the
    voice expected from the frames shown (normalized correlation).

    The server sends, per frame, the audio that drove it (silence for a frame shown again),
    so the received voice should be that sequence; aligning the two gives where each
    frame's audio is in the received voice."""
    new = np.flatnonzero((shown >= 0) & (shown != np.concatenate([[-1], shown[:-1]])))
    expected = np.zeros(len(shown) * spf, np.float32)
    for k in new:
        block = driven[shown[k] * spf : (shown[k] + 1) * spf]
        expected[k * spf : k * spf + block.size] = block
    shift = align(voice, expected, max_shift=voice.size)
    quality = _overlap(voice, expected, shift)
    level = frame_rms_db(expected, spf)
    voiced = [k for k in new if level[k] > VOICE_RMS_DB and 0 <= k * spf + shift < voice.size]
    heard = voice_times[np.array([k * spf + shift for k in voiced], dtype=int)]
    return frame_times[voiced] - heard, quality


async def say_client(url: str, texts, seconds) -> tuple:
    """Connect to the say-mode server at `url`, speak `texts` (each `seconds` long) with
    gaps, then hang up; the client and the server's last figures."""
    client = await LiveClient.connect(url, None)
    await asyncio.sleep(LEAD_SECONDS)
    for text, length in zip(texts, seconds, strict=True):
        await client.say(text)
        await asyncio.sleep(length + GAP_SECONDS)
    await asyncio.sleep(SETTLE_SECONDS)
    figures = client.figures[-1] if client.figures else {}
    await client.close()
    return client, figures


async def say_run(model, reference, texts, seconds, options: LiveOptions) -> tuple:
    """Speak `texts` (each `seconds` long) through a loopback server in this process, in
    say mode (whatever `options.mode`); returns the client, the server's last figures and
    the recording's path (None without `options.record`)."""
    options = dataclasses.replace(options, mode="say")
    server = LiveServer(model, reference, options, on_event=lambda _: None)
    url = f"http://127.0.0.1:{await server.start('127.0.0.1', 0)}"
    try:
        client, figures = await say_client(url, texts, seconds)
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
    """Run say mode on loopback, the server in a process of its own, and measure the
    audio/video offset of what the client receives (see the module docstring). Returns the
    figures (ms) as a dict."""
    loaded, _ = load_model(model, "cpu")
    cfg = loaded.cfg
    reference = load_image(image, (cfg.height, cfg.width))
    texts = [TEXTS[i % len(TEXTS)] for i in range(utterances)]
    seconds = [synthesize(text, voice).size / SAMPLE_RATE for text in texts]
    reader = load_mouth_reader()
    with tempfile.TemporaryDirectory() as folder:
        record = Path(folder) / "say.mp4"
        base = options or LiveOptions()
        live = dataclasses.replace(base, mode="say", voice=voice, record=record)
        # 1. The live run: what the client got, and what the server rendered from what.
        server = ServerProcess(model, image, live)
        try:
            client, figures = asyncio.run(say_client(server.start(), texts, seconds))
        finally:
            written = server.stop()
        if not written:
            raise RuntimeError(f"the session wrote no recording: {figures.get('error')}")
        driven = load_audio(written[0])
        rendered = read_video_frames(written[0])
        # 2. The file render of the same audio.
        wav = Path(folder) / "driven.wav"
        write_wav(wav, driven)
        offline = np.concatenate(list(render_frames(loaded, reference, wav, RenderOptions())))
    voice_rx, voice_times = received_voice(client)
    frame_times = np.array([t for t, _ in client.frames])
    rx_open = read_mouth(reader, np.stack([f for _, f in client.frames]))[:, 0]
    rec_open = read_mouth(reader, rendered)[:, 0]
    file_open = read_mouth(reader, offline)[:, 0]
    # 3. Frame by frame: each received frame's rendered index, and its sound's arrival.
    spf = cfg.samples_per_frame
    shown = match_frames(np.stack([f for _, f in client.frames]), rendered, reference)
    per_frame, quality = frame_offsets(shown, frame_times, voice_rx, voice_times, driven, spf)
    # 4. Per utterance: where its sound landed in the received voice (a local alignment:
    # frames shown again or dropped add or remove 40 ms of voice, so no one shift holds for
    # the whole session), then the shift of the received mouth against the rendered one.
    start_of = np.arange(len(rec_open)) * spf  # frame i shows audio from sample i * spf
    guess = align(voice_rx, driven, max_shift=voice_rx.size)
    lags, corrs, vs_rec, vs_file = [], [], [], []
    found = onsets(driven, SAMPLE_RATE)
    for onset in found:
        shift = local_shift(voice_rx, driven, onset, guess)
        if shift is None:
            continue
        guess = shift

        def arrival(sample, shift=shift):
            return np.interp(sample + shift, np.arange(voice_times.size), voice_times)

        near = (start_of >= onset - 0.3 * SAMPLE_RATE) & (start_of < onset + 1.5 * SAMPLE_RATE)
        lag, corr = _best_lag(frame_times, rx_open, arrival(start_of[near]), rec_open[near])
        lags.append(lag)
        corrs.append(corr)
        heard, t = float(arrival(onset)), onset / SAMPLE_RATE
        seen = half_rise(frame_times, rx_open, heard)
        own = half_rise(start_of / SAMPLE_RATE, rec_open, t)
        filed = half_rise(np.arange(len(file_open)) / cfg.fps, file_open, t)
        if seen is not None and own is not None:
            vs_rec.append(seen - heard - (own - t))
        if seen is not None and filed is not None:
            vs_file.append(seen - heard - (filed - t))
    gaps = np.diff(frame_times)
    return {
        "utterances": len(texts),
        "offset_per_frame_ms": _spread(per_frame, percentiles=True),
        "offset_per_frame_equal_buffers_ms": _ms(np.median(per_frame)) + RECEIVER_BUFFERS_MS
        if len(per_frame)
        else None,
        "voice_match": round(quality, 3),
        "offset_by_correlation_ms": _spread(lags),
        "mouth_correlation_median": round(float(np.median(corrs)), 3) if corrs else None,
        "offset_at_onsets_vs_recording_ms": _spread(vs_rec),
        "offset_at_onsets_vs_file_render_ms": _spread(vs_file),
        "onsets_aligned": f"{len(lags)}/{len(found)}",
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
    (received, at `times`) with `reference` (rendered frames whose sound arrived at `when`),
    and that correlation."""
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


def _spread(values, percentiles: bool = False) -> dict:
    """Median and range (or 5th / 95th percentiles) of seconds, in ms."""
    if not len(values):
        return {"median": None, "n": 0}
    low, high = np.percentile(values, [5, 95]) if percentiles else (min(values), max(values))
    names = ("p5", "p95") if percentiles else ("min", "max")
    return {
        "median": _ms(np.median(values)),
        names[0]: _ms(low),
        names[1]: _ms(high),
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
    parser.add_argument("--temporal", default=LiveOptions.temporal, choices=TEMPORAL_FILTERS)
    parser.add_argument("--no-deflicker", action="store_true")
    args = parser.parse_args()
    options = LiveOptions(
        lookahead_frames=args.lookahead, deflicker=not args.no_deflicker, temporal=args.temporal
    )
    start = time.perf_counter()
    result = measure_say(args.model, args.image, args.utterances, args.voice, options)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
