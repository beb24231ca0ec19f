"""Real speaking videos -> the corpus layout of `tmrender.data.corpus` (what `synth` writes).

Every file under the videos folder (sub-folders included; hidden files and `.json`
sidecars left out) that ffmpeg reads with a video and an audio stream becomes one clip::

    OUT/<split>/<clip_id>/frames.mp4 | frames.npy, audio.wav, boxes.npy, mouth.npy,
                         pose.npy, meta.json        (and OUT/<split>/index.json)

- audio.wav: the first audio stream as 16 kHz mono (`tmrender.media.audio.AudioStream`),
  N samples; T = ceil(N * 25 / 16000) frames exactly. When the video stream ends first,
  the clip ends with it (the audio is cut to T * 640 samples).
- frames: output frame i shows the source frame on screen at (i + 0.5) / 25 s, assuming
  the source runs at the constant rate ffmpeg reports.

Tracked (the default for a video without a sidecar or `--crop`; `PrepareOptions.face ==
"track"`, `tmrender.data.face_track`): the face is detected in the first frame and tracked;
each frame is warped to the model's framing (`faces.CANONICAL`, a smoothed per-frame
alignment, as `generate --face auto` frames a photo), and the clip is cut where the face is
lost (meta "face_track": frames available, kept, dropped). Such a clip also has:

- mouth.npy (T, 7) float32: `open` and `width` from landmarks (`faces.measure.framed_mouth`
  on the frames as written, in eye distances), the other columns NaN; meta
  `"mouth_truth": "landmarks"`, which is what `tmrender eval` recognises;
- boxes.npy (T, 2, 4) int32: the outer lips' box and the tracked face box, per frame, in
  output pixels; align.npy (T, 2, 3) float32: each frame's map from source to output
  pixels; mouth_source.npy (T, 2): the mouth measures at the source's resolution.

With a fixed face box (a sidecar, `--crop`, or `face="whole"`):

- the face box is made square about its centre (the centre square of it, as the renderer's
  portrait crop does) and scaled to SIZE x SIZE with Lanczos filtering;
- face box, source pixels x0, y0, x1, y1 (x1, y1 exclusive): from the sidecar
  `<video stem>.json` or `<video name>.json` (`{"face": [x0, y0, x1, y1]}`), else from
  `--crop` (x, y, w, h like every command's `--crop`), else the whole frame (`--face
  whole`). It must lie inside the frame.
- boxes.npy (T, 2, 4) int32: [mouth box, face box] in output pixels (clipped to the frame),
  the same on every frame. The mouth box is an estimate: the lower-middle part of the face
  box (`MOUTH_IN_FACE`), said so in meta.json.
- mouth.npy and pose.npy (T, 7) float32 are all NaN: real videos carry no mouth or pose
  truth and `read_clip` loads both files; meta.json has `"truth": false` and no phoneme
  events.
- meta.json: source file and streams, durations, the frame-rate conversion, the face box
  and where it came from, silence segments from the renderer's voice activity
  (`tmrender.media.audio.frame_rms_db` > `VOICE_RMS_DB`), and what is unknown.

Bad files (unreadable, no audio or video, zero length, bad sidecar, box outside the frame,
no face in the first frame, fewer than `MIN_FRAMES` frames before the face is lost) come
back as `PrepareResult.error`; they never stop the others. A clip folder is written under
a hidden name and renamed when complete; index.json is replaced atomically.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tmrender.data.avatar import POSE
from tmrender.data.corpus import CRF, FPS, FRAME_FORMATS, SPLIT_TAG
from tmrender.data.face_track import (
    SMOOTH_RADIUS,
    FaceTrack,
    framed_boxes,
    framed_frames,
    smoothed_alignments,
    source_mouth,
    track_video_face,
)
from tmrender.data.visemes import PARAMS
from tmrender.errors import MediaError, UserInputError
from tmrender.faces.measure import framed_mouth
from tmrender.files import atomic_write, make_folder
from tmrender.media.audio import (
    SAMPLE_RATE,
    VOICE_RMS_DB,
    AudioInfo,
    AudioStream,
    frame_rms_db,
    write_wav,
)
from tmrender.media.ffmpeg import MediaInfo, probe
from tmrender.media.image import CropBox
from tmrender.media.video import VideoWriter, iter_video_frames

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MOUTH_IN_FACE = (0.28, 0.62, 0.72, 0.90)  # estimated mouth box: x0, y0, x1, y1 of the face box
SIZES = (32, 2048)
FACE_MODES = ("track", "whole")
MIN_FRAMES = 25  # a clip cut shorter than this (1 s) where its face is lost is skipped
UNKNOWN = (
    "phoneme events",
    "mouth parameters (mouth.npy is NaN)",
    "head pose (pose.npy is NaN)",
    "the exact mouth box (estimated from the face box)",
    "audio-video offset (taken as 0)",
    "language and text",
)


# -- options and boxes -----------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareOptions:
    """What every video of one run shares."""

    out: Path
    split: str = "train"
    size: int = 128
    crop: CropBox | None = None  # the face box of videos without a sidecar
    face: str = "track"  # without a sidecar or crop: "track" the face, or the "whole" frame
    frame_format: str = "mp4"
    workers: int = 1


def check_options(opts: PrepareOptions) -> None:
    """Raise UserInputError for any option a user could get wrong."""
    if opts.split not in SPLIT_TAG:
        raise UserInputError(f"--split must be train or test, got {opts.split!r}")
    if not SIZES[0] <= opts.size <= SIZES[1]:
        raise UserInputError(f"--size must be between {SIZES[0]} and {SIZES[1]}, got {opts.size}")
    if opts.face not in FACE_MODES:
        raise UserInputError(f"--face must be one of {', '.join(FACE_MODES)}, got {opts.face!r}")
    if opts.workers < 1:
        raise UserInputError(f"--workers must be at least 1, got {opts.workers}")
    if opts.frame_format not in FRAME_FORMATS:
        raise UserInputError(
            f"--frames must be one of {', '.join(FRAME_FORMATS)}, got {opts.frame_format!r}"
        )


def box_from_corners(values: Iterable, what: str) -> CropBox:
    """A CropBox from x0, y0, x1, y1 (whole numbers, x1 > x0 >= 0, y1 > y0 >= 0)."""
    values = list(values)
    if len(values) != 4 or not all(_is_whole(v) for v in values):
        raise UserInputError(f"{what} must be 4 whole numbers x0,y0,x1,y1; got {values}")
    x0, y0, x1, y1 = (int(v) for v in values)
    if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
        raise UserInputError(f"{what} needs 0 <= x0 < x1 and 0 <= y0 < y1; got {values}")
    return CropBox(x0, y0, x1 - x0, y1 - y0)


def _is_whole(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return bool(re.fullmatch(r"\s*\d+\s*", value))
    return isinstance(value, int | float) and float(value).is_integer()


def corners(box: CropBox) -> list[int]:
    """[x0, y0, x1, y1] of a CropBox."""
    return [box.x, box.y, box.x + box.w, box.y + box.h]


def sidecar_paths(video: Path) -> tuple[Path, Path]:
    """Where a video's face box may be: `<stem>.json`, then `<name>.json`."""
    return video.with_suffix(".json"), video.with_name(video.name + ".json")


def read_sidecar(video: Path) -> CropBox | None:
    """The face box of a video's JSON sidecar, None when it has none."""
    for path in sidecar_paths(video):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise UserInputError(f"sidecar {path.name} cannot be read: {err}") from err
            if not isinstance(data, dict) or "face" not in data:
                raise UserInputError(f'sidecar {path.name} has no "face": [x0, y0, x1, y1]')
            return box_from_corners(_as_list(data["face"]), f"sidecar {path.name} face")
    return None


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def check_inside(box: CropBox, width: int, height: int, what: str) -> CropBox:
    """`box` unchanged, or UserInputError if it reaches outside a width x height frame."""
    if box.x + box.w > width or box.y + box.h > height:
        raise UserInputError(
            f"{what} {','.join(map(str, corners(box)))} lies outside the {width}x{height} frame"
        )
    return box


@dataclass(frozen=True)
class FrameMapping:
    """Source frame -> output frame: the source rectangle `rect` (x0, y0, x1, y1, float
    pixels) scaled to `size` x `size`."""

    rect: tuple[float, float, float, float]
    size: int

    @classmethod
    def centre_square(cls, box: CropBox, size: int) -> FrameMapping:
        """The largest square centred in `box` (no distortion, as ImageOps.fit crops)."""
        side = min(box.w, box.h)
        x0 = box.x + (box.w - side) / 2
        y0 = box.y + (box.h - side) / 2
        return cls((x0, y0, x0 + side, y0 + side), size)

    @property
    def scale(self) -> float:
        return self.size / (self.rect[2] - self.rect[0])

    def frame(self, pixels: np.ndarray) -> np.ndarray:
        """One source frame uint8 (H, W, 3) -> (size, size, 3)."""
        image = Image.fromarray(pixels)
        out = image.resize((self.size, self.size), Image.Resampling.LANCZOS, box=self.rect)
        return np.asarray(out, dtype=np.uint8)

    def box(self, corners_px: Iterable[float]) -> np.ndarray:
        """Source-pixel x0, y0, x1, y1 -> output pixels int32 (4,), outward-rounded and
        clipped to the frame."""
        x0, y0, x1, y1 = corners_px
        ox, oy = self.rect[:2]
        out = np.array([x0 - ox, y0 - oy, x1 - ox, y1 - oy]) * self.scale
        out = np.concatenate([np.floor(out[:2] + 1e-6), np.ceil(out[2:] - 1e-6)])
        return np.clip(out, 0, self.size).astype(np.int32)


def mouth_corners(face: CropBox) -> list[float]:
    """The estimated mouth box in source pixels: the `MOUTH_IN_FACE` part of the face box."""
    fx0, fy0, fx1, fy1 = MOUTH_IN_FACE
    x0, y0, w, h = face.x, face.y, face.w, face.h
    return [x0 + fx0 * w, y0 + fy0 * h, x0 + fx1 * w, y0 + fy1 * h]


def clip_boxes(mapping: FrameMapping, face: CropBox, frames: int) -> np.ndarray:
    """boxes.npy: int32 (T, 2, 4) = [mouth box, face box] in output pixels, every frame."""
    pair = np.stack([mapping.box(mouth_corners(face)), mapping.box(corners(face))])
    return np.broadcast_to(pair, (frames, 2, 4)).astype(np.int32)


# -- time: frames and voice activity -----------------------------------------------------


def source_frame_indices(frames: int, source_fps: float) -> np.ndarray:
    """Index of the source frame on screen at the centre of each of `frames` 25 fps output
    frames, int64 (frames,), non-decreasing (a constant source rate assumed)."""
    centres = (np.arange(frames) + 0.5) / FPS
    return np.floor(centres * source_fps + 1e-9).astype(np.int64)


def source_frames(video: Path, source_fps: float, max_frames: int) -> Iterator[np.ndarray]:
    """Decode `video` and yield, for each 25 fps output frame, the source frame on screen
    at its centre: uint8 (H, W, 3), at most `max_frames` (fewer when the video ends first)."""
    wanted = source_frame_indices(max_frames, source_fps)
    done, seen = 0, 0  # output frames yielded, source frames decoded
    with contextlib.closing(iter_video_frames(video)) as blocks:
        for block in blocks:
            stop = int(np.searchsorted(wanted, seen + len(block)))
            for k in wanted[done:stop]:
                yield block[k - seen]
            done, seen = stop, seen + len(block)
            if done >= max_frames:
                return


def resampled_frames(
    video: Path, source_fps: float, mapping: FrameMapping, max_frames: int, block: int = 64
) -> Iterator[np.ndarray]:
    """Decode `video` and yield output frames at 25 fps in blocks uint8 (n, size, size, 3),
    at most `max_frames` in all (fewer when the video ends first)."""
    out = []
    for frame in source_frames(video, source_fps, max_frames):
        out.append(mapping.frame(frame))
        if len(out) == block:
            yield np.stack(out)
            out = []
    if out:
        yield np.stack(out)


def silence_segments(audio: np.ndarray, frames: int) -> list[list[int]]:
    """Runs of frames the renderer's voice activity calls silent, as [first, end) frame
    pairs; audio (N,) float32 with N <= frames * 640."""
    padded = np.zeros(frames * SAMPLES_PER_FRAME, np.float32)
    padded[: audio.size] = audio
    silent = frame_rms_db(padded, SAMPLES_PER_FRAME) <= VOICE_RMS_DB
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2], strict=True)]


# -- one video -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareResult:
    """What became of one video: its index row, or the one-line reason it was skipped
    (naming the file)."""

    video: Path
    clip_id: str
    row: dict | None = None
    error: str | None = None


@dataclass(frozen=True)
class Source:
    """A probed video: its streams, frame rate and face box (source pixels)."""

    path: Path
    info: MediaInfo
    fps: float
    face: CropBox | None  # None: tracked
    face_from: str  # "sidecar", "--crop", "whole frame" or "tracked"

    @property
    def width(self) -> int:
        """Of the frames as decoded (upright: ffmpeg applies the rotation)."""
        return self.info.video[0].display_size[0]

    @property
    def height(self) -> int:
        return self.info.video[0].display_size[1]


def open_source(video: Path, crop: CropBox | None, face_mode: str = "whole") -> Source:
    """Probe `video` and find its face box; UserInputError (one line) if unusable."""
    info = probe(video, what="video file")
    if not info.video:
        raise MediaError(f"{video} has no video stream")
    if not info.audio:
        raise MediaError(f"{video} has no audio stream")
    stream = info.video[0]
    if not stream.width or not stream.height:
        raise MediaError(f"ffmpeg reported no frame size for {video}")
    if not stream.fps or stream.fps <= 0:
        raise MediaError(f"ffmpeg reported no frame rate for {video}")
    face, face_from = read_sidecar(video), "sidecar"
    if face is None:
        face, face_from = crop, "--crop"
    width, height = stream.display_size
    if face is None and face_mode == "track":
        return Source(video, info, stream.fps, None, "tracked")
    if face is None:
        face, face_from = CropBox(0, 0, width, height), "whole frame"
    check_inside(face, width, height, f"face box ({face_from})")
    return Source(video, info, stream.fps, face, face_from)


def decode_audio(source: Source) -> np.ndarray:
    """The first audio stream as 16 kHz mono float32 (N,), N > 0."""
    stream = source.info.audio[0]
    info = AudioInfo(source.path, stream.codec, stream.sample_rate, source.info.duration)
    return np.concatenate(list(AudioStream(info)))


def prepare_video(video: Path, clip_id: str, opts: PrepareOptions) -> dict:
    """Write one clip folder OUT/split/clip_id from `video`; returns its index row.

    Raises UserInputError (MediaError included) with one line for a bad file."""
    # 1. streams, frame rate and face box; the audio decides the longest clip
    source = open_source(video, opts.crop, opts.face)
    decoded = decode_audio(source)
    max_frames = -(-decoded.size // SAMPLES_PER_FRAME)
    if source.face is None:
        return prepare_tracked(source, clip_id, opts, decoded, max_frames)
    mapping = FrameMapping.centre_square(source.face, opts.size)
    # 2. frames and audio, trimmed to the shorter stream, into a hidden folder
    folder = opts.out / opts.split / clip_id
    with clip_folder(folder) as partial:
        blocks = resampled_frames(video, source.fps, mapping, max_frames)
        frames = write_frames(blocks, partial, opts, decoded)
        audio = decoded[: frames * SAMPLES_PER_FRAME]
        # 3. boxes, the absent truth, metadata
        np.save(partial / "boxes.npy", clip_boxes(mapping, source.face, frames))
        np.save(partial / "mouth.npy", np.full((frames, len(PARAMS)), np.nan, np.float32))
        np.save(partial / "pose.npy", np.full((frames, len(POSE)), np.nan, np.float32))
        meta = clip_meta(clip_id, opts, source, audio, frames)
        meta.update(box_meta(source, mapping))
        meta["source"]["samples_decoded"] = int(decoded.size)  # before the cut
        (partial / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return index_row(meta)


def prepare_tracked(
    source: Source, clip_id: str, opts: PrepareOptions, decoded: np.ndarray, max_frames: int
) -> dict:
    """`prepare_video` for a video without a face box: track the face (pass 1), cut the clip
    where it is lost, write model-framed frames (pass 2) with landmark mouth labels."""
    # 1. track; too short a clip is skipped
    track = track_video_face(source_frames(source.path, source.fps, max_frames))
    if track.kept < MIN_FRAMES:
        raise MediaError(
            f"the face is lost at frame {track.lost_at} ({track.lost_at / FPS:.2f} s): "
            f"{track.kept} frames left, at least {MIN_FRAMES} are needed"
        )
    matrices = smoothed_alignments(track.points, opts.size)
    # 2. model-framed frames, measured as they are written
    measured: list[np.ndarray] = []

    def measuring(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            measured.append(framed_mouth(block))
            yield block

    folder = opts.out / opts.split / clip_id
    with clip_folder(folder) as partial:
        warped = framed_frames(
            source_frames(source.path, source.fps, max_frames), matrices, opts.size
        )
        frames = write_frames(measuring(warped), partial, opts, decoded)
        if frames != track.kept:  # the second decoding must see the frames the first did
            raise MediaError(f"the video decoded to {track.kept} frames, then to {frames}")
        audio = decoded[: frames * SAMPLES_PER_FRAME]
        labels = np.concatenate(measured)
        np.save(partial / "boxes.npy", framed_boxes(track, matrices, opts.size))
        np.save(partial / "mouth.npy", landmark_mouth(labels))
        np.save(partial / "pose.npy", np.full((frames, len(POSE)), np.nan, np.float32))
        np.save(partial / "align.npy", matrices.astype(np.float32))
        at_source = source_mouth(track.points)
        np.save(partial / "mouth_source.npy", at_source)
        meta = clip_meta(clip_id, opts, source, audio, frames)
        meta.update(track_meta(track, labels, at_source))
        meta["source"]["samples_decoded"] = int(decoded.size)
        (partial / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return {**index_row(meta), "dropped": track.dropped}


def landmark_mouth(labels: np.ndarray) -> np.ndarray:
    """mouth.npy of a tracked clip: float32 (T, 7) in the corpus's columns (`PARAMS`), `open`
    and `width` from landmarks (opening, width: (T, 2) in eye distances), the rest NaN."""
    mouth = np.full((len(labels), len(PARAMS)), np.nan, np.float32)
    mouth[:, PARAMS.index("open")] = labels[:, 0]
    mouth[:, PARAMS.index("width")] = labels[:, 1]
    return mouth


def _agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r of two curves (T,), None when either is flat or too short."""
    if len(a) < 2 or a.std() < 1e-9 or b.std() < 1e-9:
        return None
    return round(float(np.corrcoef(a, b)[0, 1]), 4)


def track_meta(track: FaceTrack, labels: np.ndarray, at_source: np.ndarray) -> dict:
    """meta.json entries of a tracked clip: the face track, the cut and the mouth truth."""
    return {
        "face_box": {"from": "tracked", "detections": track.detections},
        "face_track": {
            "frames_available": track.available,
            "frames_kept": track.kept,
            "frames_dropped": track.dropped,
            "lost_at_frame": track.lost_at,
            "framing": "per frame, the alignment to faces.CANONICAL of the anchors averaged "
            f"over frames i-r..i+r, r = min({SMOOTH_RADIUS}, i, T-1-i) (align.npy: source "
            "pixels -> output pixels, (T, 2, 3))",
        },
        "mouth_truth": "landmarks",
        "mouth_units": "eye distances (faces.mouth_opening, faces.mouth_width)",
        "mouth_rule": "open and width measured by faces.measure.framed_mouth on the "
        "model-framed frames before encoding (the measure eval applies to rendered frames); "
        "the other columns are NaN. mouth_source.npy (T, 2): the same measures from the "
        "tracked landmarks at the source's resolution",
        "mouth_vs_source_r": {
            "open": _agreement(labels[:, 0], at_source[:, 0]),
            "width": _agreement(labels[:, 1], at_source[:, 1]),
        },
        "mouth_box": {"estimated": False, "rule": "the outer lips' landmarks (48-59)"},
        "unknown": [u for u in UNKNOWN if "mouth" not in u],
    }


@contextlib.contextmanager
def clip_folder(folder: Path) -> Iterator[Path]:
    """Yield a hidden `.<name>.partial` folder beside `folder`; on success it replaces
    `folder` (as `corpus.write_clip` does), on any error it is removed."""
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def write_frames(
    blocks: Iterable[np.ndarray], partial: Path, opts: PrepareOptions, audio: np.ndarray
) -> int:
    """Write frames.<format> from `blocks` (n, S, S, 3) and audio.wav cut to the frames
    (at most frames * 640 samples); returns the number of frames T."""
    wav = partial / "audio.wav"
    if opts.frame_format == "npy":
        frames = list(blocks)
        count = _check_frames(sum(len(b) for b in frames))
        np.save(partial / "frames.npy", np.concatenate(frames))
        write_wav(wav, audio[: count * SAMPLES_PER_FRAME])
        return count
    size = opts.size
    with VideoWriter(partial / "frames.mp4", size, size, fps=FPS, audio=wav, crf=CRF) as writer:
        for block in blocks:
            writer.write(block)
        count = _check_frames(writer.frames_written)
        write_wav(wav, audio[: count * SAMPLES_PER_FRAME])  # muxed when the writer closes
    return count


def _check_frames(count: int) -> int:
    if count == 0:
        raise MediaError("the video stream holds no frames")
    return count


def clip_meta(
    clip_id: str, opts: PrepareOptions, source: Source, audio: np.ndarray, frames: int
) -> dict:
    """meta.json of a prepared clip (keys of the synthetic corpus where they apply), less
    the face box's entries (`box_meta`, `track_meta`)."""
    video, audio_stream = source.info.video[0], source.info.audio[0]
    return {
        "id": clip_id,
        "split": opts.split,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "frames": frames,
        "samples": int(audio.size),
        "seconds": audio.size / SAMPLE_RATE,
        "size": opts.size,
        "frames_file": f"frames.{opts.frame_format}",
        "source": {
            "path": str(source.path.resolve()),
            "bytes": source.path.stat().st_size,
            "duration": source.info.duration,
            "video": {"codec": video.codec, "width": video.width, "height": video.height},
            "audio": {"codec": audio_stream.codec, "sample_rate": audio_stream.sample_rate},
        },
        "fps_conversion": {
            "source_fps": source.fps,
            "fps": FPS,
            "rule": "frame i shows the source frame on screen at (i + 0.5) / 25 s, "
            "the source taken as constant-rate; the clip ends with the shorter stream",
        },
        "silence": silence_segments(audio, frames),
        "voice_threshold_db": VOICE_RMS_DB,
        "truth": False,
        "unknown": list(UNKNOWN),
        "mouth_columns": list(PARAMS),
        "pose_columns": list(POSE),
        "boxes": ["mouth", "face"],
    }


def box_meta(source: Source, mapping: FrameMapping) -> dict:
    """meta.json entries of a clip cropped with a fixed face box."""
    return {
        "face_box": {"from": source.face_from, "source_pixels": corners(source.face)},
        "crop_source_pixels": [round(v, 3) for v in mapping.rect],
        "mouth_box": {
            "estimated": True,
            "rule": "the lower-middle part of the face box: x0, y0, x1, y1 fractions",
            "fractions": list(MOUTH_IN_FACE),
        },
    }


def index_row(meta: dict) -> dict:
    """The row of a clip in its split's index.json."""
    keys = ("id", "frames", "seconds", "size")
    return {**{k: meta[k] for k in keys}, "source": meta["source"]["path"]}


# -- a folder of videos ----------------------------------------------------------------------


def find_videos(videos: Path, out: Path) -> list[Path]:
    """Candidate files under `videos` (sorted): not hidden, not `.json`, not inside `out`."""
    videos = Path(videos)
    if not videos.is_dir():
        raise UserInputError(f"--videos must be a folder: {videos}")
    out_resolved = Path(out).resolve()
    found = []
    for path in sorted(videos.rglob("*")):
        relative = path.relative_to(videos)
        if any(part.startswith(".") for part in relative.parts) or path.suffix == ".json":
            continue
        resolved = path.resolve()
        if path.is_file() and out_resolved not in resolved.parents:
            found.append(path)
    return found


def clip_ids(videos: list[Path], root: Path) -> list[str]:
    """A unique folder name per video: its path under `root` without the suffix, `/` as
    `-`, other odd characters as `_`; a clash gets the suffix appended (then a counter)."""
    ids, used = [], set()
    for video in videos:
        relative = video.relative_to(root)
        stem = "-".join(relative.with_suffix("").parts)
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).lstrip(".") or "clip"
        candidate = base
        if candidate in used:
            candidate = f"{base}-{video.suffix.lstrip('.') or 'noext'}"
        n = 2
        while candidate in used:
            candidate, n = f"{base}-{n}", n + 1
        used.add(candidate)
        ids.append(candidate)
    return ids


def _prepare_safely(job: tuple[Path, str, PrepareOptions]) -> PrepareResult:
    """Worker: one video; a bad file becomes a result with its reason, never an exception."""
    video, clip_id, opts = job
    try:
        return PrepareResult(video, clip_id, row=prepare_video(video, clip_id, opts))
    except UserInputError as err:
        reason = str(err)
    except OSError as err:
        reason = str(err.strerror or err)
    named = reason if str(video) in reason else f"{video}: {reason}"
    return PrepareResult(video, clip_id, error=named)


def _run_jobs(jobs: list, workers: int) -> Iterator[PrepareResult]:
    if workers == 1 or len(jobs) <= 1:
        yield from map(_prepare_safely, jobs)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(_prepare_safely, jobs)


def prepare_corpus(
    videos: Path | str,
    opts: PrepareOptions,
    on_result: Callable[[PrepareResult], None] | None = None,
    on_found: Callable[[int], None] | None = None,
) -> list[PrepareResult]:
    """Prepare every video under `videos` into opts.out/opts.split; returns a result per
    video (in completion order). index.json gets the clips written, even when interrupted.

    `on_found(count)` is called once the files are listed and `on_result(result)` after
    each one, in the parent (progress bars, skip lines)."""
    check_options(opts)
    found = find_videos(Path(videos), opts.out)
    if not found:
        raise UserInputError(f"no files in {videos}")
    if on_found is not None:
        on_found(len(found))
    split_dir = opts.out / opts.split
    make_folder(split_dir)
    jobs = [(v, i, opts) for v, i in zip(found, clip_ids(found, Path(videos)), strict=True)]
    results = []
    try:
        for result in _run_jobs(jobs, opts.workers):
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        rows = [r.row for r in results if r.row is not None]
        if rows:
            write_index(split_dir, rows)
    return results


def write_index(split_dir: Path, rows: list[dict]) -> Path:
    """Merge `rows` into split_dir/index.json (sorted by id; existing rows of clips that
    still exist kept), replacing the file atomically."""
    path = split_dir / "index.json"
    existing = {r["id"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    existing.update({r["id"]: r for r in rows})
    merged = [existing[k] for k in sorted(existing) if (split_dir / k / "meta.json").exists()]
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(merged, indent=1) + "\n")
    return path
