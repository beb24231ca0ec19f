"""The face of a real video, tracked and framed as the model's portraits: what `prepare` does
with a video that has no face box of its own (`PrepareOptions.face == "track"`).

Pass 1 (`track_video_face`): `faces.FaceTracker` on every 25 fps output frame's source
frame (detect once, then follow); the clip is cut at the first frame where the face is lost.
The tracker fits landmarks wherever its box is, face or not, so each frame is also checked
(`face_present`): the detector, run on the region around the tracked box scaled so that the
face is `VERIFY_FACE_PX` wide, must find a face there. The face counts as lost at the first
of `MISSES_TO_LOSE` checks in a row that fail (single misses, a hand or a blur, are let
through), or where the tracker itself loses it.
Pass 2 (`framed_frames`): each kept frame is warped to the model's framing
(`faces.CANONICAL`) with a smoothed alignment: the three alignment anchors (eye centres,
mouth-corner midpoint) averaged over a centred window of `SMOOTH_RADIUS` frames either side,
then the least-squares similarity as `faces.align` fits it. Per-frame alignment keeps the face
where the model expects it on every frame (the measure of `faces.measure` fits its landmarks
from the canonical box, and the first frame, aligned on its own landmarks alone, is exactly
what `generate --face auto` would feed the model); the smoothing removes the landmarks'
frame-to-frame jitter (2-4 px on a 216 px face, docs/FACES.md) without lagging behind real
head motion, since the window is centred.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tmrender.errors import MediaError
from tmrender.faces import MIN_FACE_PX, Alignment, FaceTracker, warp_to_crop
from tmrender.faces.align import anchor_points, canonical_points, fit_similarity
from tmrender.faces.detect import THRESHOLD
from tmrender.faces.landmarks import mouth_opening, mouth_width
from tmrender.faces.models import detector

SMOOTH_RADIUS = 2  # frames either side: a centred 5-frame (200 ms) mean of the anchors
VERIFY_FACE_PX = 100  # the checked region is scaled so that the tracked box is this wide
VERIFY_MARGIN = 0.5  # the region: the box grown by this fraction of its side on every side
MISSES_TO_LOSE = 3  # consecutive frames without a face there: lost from the first of them
OUTER_LIPS = slice(48, 60)


@dataclass(frozen=True)
class FaceTrack:
    """Pass 1's result: the landmarks of the kept frames and how many frames were seen.

    points (K, 68, 2) float32 in source pixels, boxes (K, 4) float64 the tracker's boxes
    x0, y0, x1, y1 in source pixels, K kept frames out of `available` output frames the
    streams hold; `lost_at` is K when the face was lost (None when kept to the end)."""

    points: np.ndarray
    boxes: np.ndarray
    available: int
    lost_at: int | None
    detections: int

    @property
    def kept(self) -> int:
        return len(self.points)

    @property
    def dropped(self) -> int:
        return self.available - self.kept


def track_video_face(frames: Iterable[np.ndarray]) -> FaceTrack:
    """Track the face through source frames (one RGB uint8 (H, W, 3) per output frame),
    stopping at the first frame where it is lost; the rest are only counted.

    MediaError when the first frame shows no face or one under `MIN_FACE_PX`."""
    tracker = FaceTracker()
    points, boxes, available, lost_at, detections = [], [], 0, None, 0
    first_miss = None  # the first frame of the current run of failed checks
    for frame in frames:
        available += 1
        if lost_at is not None:
            continue
        tracked = tracker.update(frame)
        if tracked is None:
            lost_at = first_miss if first_miss is not None else available - 1
            continue
        box = tracked.box
        corners = (box.x, box.y, box.x + box.w, box.y + box.h)
        if tracked.detected or face_present(frame, corners):
            first_miss = None
        elif first_miss is None:
            first_miss = available - 1
        if first_miss is not None and available - first_miss >= MISSES_TO_LOSE:
            lost_at = first_miss
            continue
        if available == 1 and tracked.box.w < MIN_FACE_PX:
            raise MediaError(
                f"the face in the first frame is too small: {tracked.box.w} pixels wide, at "
                f"least {MIN_FACE_PX} are needed"
            )
        detections += tracked.detected
        points.append(tracked.points)
        boxes.append(list(corners))
    if lost_at is None and first_miss is not None:  # the video ends without the face
        lost_at = first_miss
    if lost_at is not None:
        points, boxes = points[:lost_at], boxes[:lost_at]
    if available and lost_at == 0:
        raise MediaError("no face found in the first frame (pass --crop x,y,w,h or a sidecar)")
    return FaceTrack(
        points=np.array(points, np.float32).reshape(-1, 68, 2),
        boxes=np.array(boxes, np.float64).reshape(-1, 4),
        available=available,
        lost_at=lost_at,
        detections=detections,
    )


def face_present(frame: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Whether the detector finds a face of about the size of `box` (x0, y0, x1, y1, source
    pixels) centred within half its side of the box's centre, in RGB uint8 frame (H, W, 3)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, 1)
    height, width = frame.shape[:2]
    grow = VERIFY_MARGIN * side
    rx0, ry0 = max(0, int(x0 - grow)), max(0, int(y0 - grow))
    rx1, ry1 = min(width, int(x1 + grow)), min(height, int(y1 + grow))
    if rx1 - rx0 < 2 or ry1 - ry0 < 2:
        return False
    scale = VERIFY_FACE_PX / side
    size = (max(1, round((rx1 - rx0) * scale)), max(1, round((ry1 - ry0) * scale)))
    region = Image.fromarray(frame[ry0:ry1, rx0:rx1]).resize(size, Image.Resampling.BILINEAR)
    rects, _, _ = detector().run(np.asarray(region), 0, THRESHOLD)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    for rect in rects:
        dx = (rect.left() + rect.right() + 1) / 2 / scale + rx0
        dy = (rect.top() + rect.bottom() + 1) / 2 / scale + ry0
        ratio = (rect.right() + 1 - rect.left()) / scale / side
        if abs(dx - cx) < side / 2 and abs(dy - cy) < side / 2 and 0.5 < ratio < 2:
            return True
    return False


def smoothed_alignments(points: np.ndarray, size: int, radius: int = SMOOTH_RADIUS) -> np.ndarray:
    """Source pixels -> output pixels similarity per frame, float64 (K, 2, 3), from landmarks
    (K, 68, 2): the anchors averaged over frames i - r .. i + r, r = min(radius, i, K - 1 - i)
    (a window kept symmetric, so the ends are not pulled inwards; frame 0 gets its own
    alignment, the very crop `generate --face auto` makes of that frame)."""
    anchors = np.array([anchor_points(p) for p in points])  # (K, 3, 2)
    target = canonical_points(size)
    out = np.empty((len(points), 2, 3))
    for i in range(len(points)):
        r = min(radius, i, len(points) - 1 - i)
        window = anchors[i - r : i + r + 1]
        out[i] = fit_similarity(window.mean(axis=0), target)
    return out


def framed_frames(
    frames: Iterable[np.ndarray], matrices: np.ndarray, size: int, block: int = 32
) -> Iterator[np.ndarray]:
    """Warp the first len(matrices) source frames (H, W, 3) to the model's framing; yields
    blocks uint8 (n, size, size, 3)."""
    out = []
    for i, frame in enumerate(frames):
        if i >= len(matrices):
            break
        out.append(warp_to_crop(frame, Alignment(matrices[i], size)))
        if len(out) == block:
            yield np.stack(out)
            out = []
    if out:
        yield np.stack(out)


def _to_output(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ matrix[:, :2].T + matrix[:, 2]


def outward_box(points: np.ndarray, size: int) -> np.ndarray:
    """The pixels x0, y0, x1, y1 (x1, y1 exclusive) int32 (4,) that hold points (N, 2) given
    with pixel centres at integers (pixel i spans i - 0.5 .. i + 0.5), clipped to a `size`
    frame."""
    lo = np.floor(points.min(axis=0) + 0.5 + 1e-6)
    hi = np.ceil(points.max(axis=0) + 0.5 - 1e-6)
    return np.clip(np.concatenate([lo, hi]), 0, size).astype(np.int32)


def framed_boxes(track: FaceTrack, matrices: np.ndarray, size: int) -> np.ndarray:
    """boxes.npy of a tracked clip: int32 (K, 2, 4) [mouth box, face box] in output pixels;
    the mouth box bounds the outer lips (landmarks 48-59), the face box bounds the tracker's
    box carried by the frame's alignment."""
    out = np.empty((track.kept, 2, 4), np.int32)
    rows = zip(track.points, track.boxes, matrices, strict=True)
    for i, (points, box, matrix) in enumerate(rows):
        x0, y0, x1, y1 = box
        corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - 0.5  # pixel edges
        out[i, 0] = outward_box(_to_output(matrix, points[OUTER_LIPS].astype(np.float64)), size)
        out[i, 1] = outward_box(_to_output(matrix, corners), size)
    return out


def source_mouth(points: np.ndarray) -> np.ndarray:
    """Opening and width (eye distances) of the source-resolution landmarks (K, 68, 2):
    float32 (K, 2)."""
    return np.array([[mouth_opening(p), mouth_width(p)] for p in points], np.float32).reshape(-1, 2)
