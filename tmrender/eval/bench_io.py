"""Media I/O benchmarks: streaming audio decode and the video writer.

Each case runs in its own process (see `peak.run_case`) and reports wall time and peak RSS.
Run one case directly with `python -m tmrender.eval.bench_io decode FILE` or
`python -m tmrender.eval.bench_io write SECONDS SIZE FOLDER`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tmrender.eval.peak import peak_rss_mb, run_case
from tmrender.media.audio import AudioStream, open_audio
from tmrender.media.ffmpeg import run_ffmpeg
from tmrender.media.video import VideoWriter

FPS = 25


def make_test_audio(path: Path, seconds: float) -> Path:
    """Write a speech-like test signal (a warbling tone with noise bursts) of `seconds` seconds."""
    # fmt: off
    run_ffmpeg(
        [
            "-f", "lavfi", "-i",
            f"sine=frequency=220:beep_factor=4:sample_rate=44100:duration={seconds}",
            "-f", "lavfi", "-i", f"anoisesrc=color=pink:amplitude=0.05:duration={seconds}",
            "-filter_complex", "amix=inputs=2:duration=shortest", "-ac", "1", "-y", str(path),
        ],
        what=f"cannot make test audio {path}",
    )
    # fmt: on
    return path


def decode_case(path: str) -> dict:
    """Stream-decode `path` completely; figures of this process."""
    start = time.perf_counter()
    stream = AudioStream(path)
    for _ in stream:
        pass
    wall = time.perf_counter() - start
    return {
        "case": "decode",
        "file": str(path),
        "audio_seconds": stream.seconds_read,
        "wall_seconds": round(wall, 3),
        "x_realtime": round(stream.seconds_read / wall, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "ffmpeg_peak_rss_mb": round(peak_rss_mb(children=True), 1),
    }


def write_case(seconds: float, size: int, folder: str) -> dict:
    """Write `seconds` of size x size frames at 25 fps with a muxed audio track."""
    folder = Path(folder)
    audio = make_test_audio(folder / f"bench-{seconds:g}s.m4a", seconds)
    num_frames = int(np.ceil(seconds * FPS))
    ring = _moving_frames(size, count=50)
    start = time.perf_counter()
    with VideoWriter(folder / f"bench-{seconds:g}s.mp4", size, size, FPS, audio=audio) as writer:
        for i in range(num_frames):
            writer.write(ring[i % len(ring)])
    wall = time.perf_counter() - start
    return {
        "case": "write",
        "seconds": seconds,
        "size": size,
        "frames": num_frames,
        "wall_seconds": round(wall, 3),
        "frames_per_second": round(num_frames / wall, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "ffmpeg_peak_rss_mb": round(peak_rss_mb(children=True), 1),
    }


def _moving_frames(size: int, count: int) -> np.ndarray:
    """A ring of frames with a moving gradient and disc, so the encoder has real work."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    frames = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        phase = 2 * np.pi * i / count
        disc = ((xx - 0.5 - 0.2 * np.cos(phase)) ** 2 + (yy - 0.5) ** 2) < 0.04
        frames[i, ..., 0] = (255 * xx).astype(np.uint8)
        frames[i, ..., 1] = (255 * (0.5 + 0.5 * np.sin(phase + 6 * yy))).astype(np.uint8)
        frames[i, ..., 2] = np.where(disc, 230, 40)
    return frames


def bench_decode(seconds_list: list[float], audio: Path | None) -> list[dict]:
    """Decode a given file, or generated MP3s of each length, each in a fresh process."""
    if audio is not None:
        open_audio(audio)  # a bad file is the user's error, reported before the child starts
        return [run_case(__name__, "decode", str(audio))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in seconds_list:
            path = make_test_audio(Path(tmp) / f"bench-{seconds:g}s.mp3", seconds)
            rows.append(run_case(__name__, "decode", str(path)))
    return rows


def bench_write(seconds_list: list[float], size: int) -> list[dict]:
    """Time the video writer for each length, each in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        return [run_case(__name__, "write", str(s), str(size), tmp) for s in seconds_list]


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    if kind == "decode":
        result = decode_case(rest[0])
    else:
        result = write_case(float(rest[0]), int(rest[1]), rest[2])
    print(json.dumps(result))
