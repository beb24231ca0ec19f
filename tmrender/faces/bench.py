"""The face tracker's rate on one core, and its mouth measure against the audio's loudness.

    python -m tmrender.faces.bench [VIDEO ...]

Frames are scaled to 512 x 512. The process is pinned to one CPU (dlib runs one thread);
for each video it prints frames per second when tracking (detect once, then follow) and when
detecting in every frame, how often the tracker fell back to detection, the mouth opening's
range, and the correlation of the opening with the audio's per-frame loudness (dB): only a
rough sign, since loudness is a poor per-frame proxy for the lip opening. Without videos it
tracks a real photo (matplotlib's grace_hopper.jpg) gliding across the frame. Figures:
docs/FACES.md.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tmrender.faces.detect import detect_faces, read_image
from tmrender.faces.landmarks import landmarks, mouth_opening
from tmrender.faces.track import FaceTracker

SIDE = 512


def pin_to_one_core() -> None:
    """Run this process on a single CPU."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def square(frames: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 resized to (T, side, side, 3)."""
    size = (side, side)
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames])


def gliding_photo(n_frames: int = 150) -> np.ndarray:
    """A real photo moving across a grey 512 x 512 frame: (T, 512, 512, 3) uint8."""
    from matplotlib import cbook

    photo = read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    photo = np.asarray(Image.fromarray(photo).resize((384, 450)))
    frames = np.full((n_frames, SIDE, SIDE, 3), 96, np.uint8)
    for t in range(n_frames):
        dx, dy = int(64 + 60 * np.sin(t / 15)), int(30 + 25 * np.cos(t / 20))
        frames[t, dy : dy + 450, dx : dx + 384] = photo[: SIDE - dy, : SIDE - dx]
    return frames


def track_rate(frames: np.ndarray) -> tuple[float, int, np.ndarray]:
    """Tracking frames/s, detections run, and the mouth opening per frame (T,), NaN if lost."""
    tracker, detections, opening = FaceTracker(), 0, np.full(len(frames), np.nan)
    start = time.perf_counter()
    for t, frame in enumerate(frames):
        tracked = tracker.update(frame)
        if tracked is not None:
            detections += tracked.detected
            opening[t] = mouth_opening(tracked.points)
    return len(frames) / (time.perf_counter() - start), detections, opening


def detect_rate(frames: np.ndarray) -> float:
    """Frames/s when detecting and fitting landmarks in every frame."""
    start = time.perf_counter()
    for frame in frames:
        faces = detect_faces(frame)
        if faces:
            landmarks(frame, faces[0])
    return len(frames) / (time.perf_counter() - start)


def loudness_correlation(path: Path, opening: np.ndarray) -> float:
    """Pearson correlation of the mouth opening (T,) with the audio's per-frame level (dB)."""
    from tmrender.media.audio import SAMPLE_RATE, frame_rms_db, load_audio
    from tmrender.media.ffmpeg import probe

    fps = probe(path).video[0].fps
    samples = load_audio(path)
    per_frame = round(SAMPLE_RATE / fps)
    n = min(len(opening), len(samples) // per_frame)
    level = frame_rms_db(samples[: n * per_frame], per_frame)
    ok = ~np.isnan(opening[:n])
    return float(np.corrcoef(opening[:n][ok], level[ok])[0, 1])


def main(paths: list[str]) -> None:
    pin_to_one_core()
    from tmrender.faces.models import detector, shape_predictor

    detector(), shape_predictor()  # load the weights before timing
    sources = [(Path(p).name, Path(p)) for p in paths] or [("grace_hopper glide", None)]
    for name, path in sources:
        if path is None:
            frames = gliding_photo()
        else:
            from tmrender.media.video import read_video_frames

            frames = square(read_video_frames(path))
        fps, detections, opening = track_rate(frames)
        line = (
            f"{name}: {len(frames)} frames at {SIDE}x{SIDE}, tracking {fps:.0f} frames/s "
            f"({detections} detection(s)), detecting every frame {detect_rate(frames):.0f} "
            f"frames/s, mouth opening {np.nanmin(opening):.2f}-{np.nanmax(opening):.2f}"
        )
        if path is not None:
            line += f", correlation with loudness {loudness_correlation(path, opening):+.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
