"""The synthetic talking-avatar corpus: generating, writing and reading clips.

A clip is eSpeak NG speech (`tmrender.data.speech`) whose phonemes drive the mouth
(`tmrender.data.visemes`) of a procedurally drawn avatar (`tmrender.data.avatar`).

On disk, one folder per clip (written under a hidden name, renamed when complete)::

    DIR/<split>/index.json           clips of the split: [{"id", "frames", "seconds", ...}]
    DIR/<split>/<clip_id>/
        frames.mp4     H.264 yuv420p, crf 10, 25 fps, with the AAC audio (a playable preview)
          or frames.npy  uint8 (T, H, W, 3), exact pixels (`--frames npy`)
        audio.wav      16 kHz mono 16-bit PCM; N samples
        mouth.npy      float32 (T, 7): jaw, width, round, close, teeth, tongue, open (in [0, 1])
        pose.npy       float32 (T, 7): dx, dy, roll, yaw, pitch, blink, brow
        boxes.npy      int32 (T, 2, 4): [mouth box, face box] as x0, y0, x1, y1 output pixels
                       (x1, y1 exclusive), the mouth box covering the outer lips
        meta.json      voice, language, text, phrases, phoneme events, appearance, columns

T = ceil(N * 25 / 16000): frame i shows samples [640 i, 640 (i + 1)). Phoneme events are
[name, start sample, end sample, stress] at 16 kHz, covering the clip without overlap.

Splits: clip k of `--seed S` in split X draws everything from the random stream
SeedSequence([SPLIT_TAG[X], S, k]); the test split speaks only `speech.TEST_LANGUAGES` with
`speech.TEST_VARIANTS`, which the train split never uses, so the splits are disjoint by
construction. The same (split, seed, k, seconds, size) gives byte-identical files.

Kinds (`ClipSpec.kind`): "avatar" (the default corpus), "textured" (the same clip, speech,
mouth, pose and face, drawn with `avatar.AvatarTexture`s whose randomness comes from a
stream of its own: meta "texture"), and "textures" (no face, no speech: a procedural
picture or a package photo under a moving camera, `textures.texture_frames`; silent
audio, zero mouth and pose, empty boxes; meta "texture"), for VAE training.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import wave
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tmrender.data import avatar, speech, textures, visemes
from tmrender.errors import UserInputError
from tmrender.files import make_folder
from tmrender.media.audio import SAMPLE_RATE, frames_for_samples, write_wav

FPS = visemes.FPS
SPLIT_TAG = {"train": 0x7_2A1, "test": 0x7_E57}
FRAME_FORMATS = ("mp4", "npy")
CRF = 10
STRESS_ENERGY = 0.25  # a stressed vowel quieter than this (relative) brings no nod
KINDS = ("avatar", "textured", "textures")


@dataclass(frozen=True)
class ClipSpec:
    """What identifies one clip: split, corpus seed, index in the split, length and size."""

    split: str
    seed: int
    index: int
    seconds: float
    size: int = 128
    kind: str = "avatar"  # one of KINDS

    @property
    def clip_id(self) -> str:
        return f"{self.split}-{self.seed}-{self.index:05d}"

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(
            np.random.SeedSequence([SPLIT_TAG[self.split], self.seed, self.index])
        )

    def texture(self) -> avatar.AvatarTexture | None:
        """The avatar texture of a "textured" clip (its own random stream), else None."""
        if self.kind != "textured":
            return None
        return avatar.texture_for_seed(SPLIT_TAG[self.split], self.seed, self.index)


@dataclass
class Clip:
    """One clip in memory. Shapes: frames (T, H, W, 3) uint8, audio (N,) float32 at 16 kHz,
    mouth (T, 7) and pose (T, 7) float32, boxes (T, 2, 4) int32, meta a JSON-able dict."""

    frames: np.ndarray
    audio: np.ndarray
    mouth: np.ndarray
    pose: np.ndarray
    boxes: np.ndarray
    meta: dict

    @property
    def mouth_boxes(self) -> np.ndarray:
        """Per-frame mouth box (T, 4): x0, y0, x1, y1 in pixels."""
        return self.boxes[:, 0]


# -- generation ----------------------------------------------------------------------------


def stressed_syllables(
    phonemes: list[speech.Phoneme], audio: np.ndarray
) -> list[tuple[float, float]]:
    """(time s, strength 0..1) of each primary-stressed vowel loud enough to carry a nod."""
    peak = max(float(np.abs(audio).max()), 1e-6)
    out = []
    for p in phonemes:
        if p.stress == 2 and visemes.is_vowel(p.name) and p.end > p.start:
            level = float(np.sqrt(np.mean(audio[p.start : p.end] ** 2))) / peak * 3.0
            if level > STRESS_ENERGY:
                out.append((p.start / SAMPLE_RATE, min(level, 1.0)))
    return out


def make_clip(spec: ClipSpec) -> Clip:
    """Generate one clip from its spec (deterministic)."""
    if spec.split not in SPLIT_TAG:
        raise UserInputError(f"unknown split {spec.split!r}; choose train or test")
    if spec.kind not in KINDS:
        raise UserInputError(f"unknown clip kind {spec.kind!r}; choose from {', '.join(KINDS)}")
    if spec.kind == "textures":
        return make_texture_clip(spec)
    rng = spec.rng()
    # 1. speech: voice, text, audio and phoneme timing
    voice = speech.sample_voice(rng, spec.split)
    spoken = speech.make_speech(rng, voice, spec.seconds)
    n_frames = frames_for_samples(spoken.samples.size, FPS)
    # 2. ground truth: mouth from the phonemes, head motion from stress and energy
    mouth = visemes.mouth_track(spoken.phonemes, n_frames)
    pose = avatar.motion_track(
        rng, spoken.samples, stressed_syllables(spoken.phonemes, spoken.samples), n_frames
    )
    # 3. drawing
    look = avatar.sample_appearance(rng)
    texture = spec.texture()
    renderer = avatar.AvatarRenderer(look, spec.size, texture=texture)
    frames = np.empty((n_frames, spec.size, spec.size, 3), np.uint8)
    boxes = np.empty((n_frames, 2, 4), np.int32)
    for i in range(n_frames):
        frame = renderer.draw(mouth[i], pose[i])
        frames[i], boxes[i, 0], boxes[i, 1] = frame.pixels, frame.mouth_box, frame.face_box
    meta = _meta(spec, spoken, look, n_frames)
    if texture is not None:  # plain clips keep their meta exactly
        meta["texture"] = asdict(texture)
    return Clip(frames=frames, audio=spoken.samples, mouth=mouth, pose=pose, boxes=boxes, meta=meta)


def make_texture_clip(spec: ClipSpec) -> Clip:
    """A "textures" clip: `textures.texture_frames` under silence, with zero mouth and
    pose and empty boxes (x1 = x0: no mouth to weigh), deterministic in `spec`."""
    samples = int(round(spec.seconds * SAMPLE_RATE))
    n_frames = frames_for_samples(samples, FPS)
    frames, what = textures.texture_frames(spec.rng(), n_frames, spec.size)
    meta = {
        "id": spec.clip_id, "split": spec.split, "seed": spec.seed, "index": spec.index,
        "kind": spec.kind, "fps": FPS, "sample_rate": SAMPLE_RATE, "frames": n_frames,
        "samples": samples, "seconds": samples / SAMPLE_RATE, "size": spec.size,
        "voice": {"espeak_name": ""}, "language": "", "text": "", "phrases": [],
        "phonemes": [], "mouth_columns": list(visemes.PARAMS),
        "pose_columns": list(avatar.POSE), "boxes": ["mouth", "face"], "texture": what,
    }  # fmt: skip
    return Clip(
        frames=frames,
        audio=np.zeros(samples, np.float32),
        mouth=np.zeros((n_frames, len(visemes.PARAMS)), np.float32),
        pose=np.zeros((n_frames, len(avatar.POSE)), np.float32),
        boxes=np.zeros((n_frames, 2, 4), np.int32),
        meta=meta,
    )


def _meta(spec: ClipSpec, spoken: speech.Speech, look: avatar.Appearance, n_frames: int) -> dict:
    return {
        "id": spec.clip_id,
        "split": spec.split,
        "seed": spec.seed,
        "index": spec.index,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "frames": n_frames,
        "samples": int(spoken.samples.size),
        "seconds": spoken.samples.size / SAMPLE_RATE,
        "size": spec.size,
        "voice": {**asdict(spoken.voice), "espeak_name": spoken.voice.espeak_name},
        "language": spoken.voice.language,
        "text": spoken.text,
        "phrases": [{"start": s, "end": e, "text": t} for s, e, t in spoken.phrases],
        "phonemes": [[p.name, p.start, p.end, p.stress] for p in spoken.phonemes],
        "mouth_columns": list(visemes.PARAMS),
        "pose_columns": list(avatar.POSE),
        "boxes": ["mouth", "face"],
        "appearance": asdict(look),
    }


# -- writing -------------------------------------------------------------------------------


def write_clip(clip: Clip, folder: Path, frame_format: str = "mp4") -> Path:
    """Write `clip` as `folder` (replacing it); files appear only when all are written."""
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        write_wav(partial / "audio.wav", clip.audio)
        np.save(partial / "mouth.npy", clip.mouth.astype(np.float32))
        np.save(partial / "pose.npy", clip.pose.astype(np.float32))
        np.save(partial / "boxes.npy", clip.boxes.astype(np.int32))
        if frame_format == "npy":
            np.save(partial / "frames.npy", clip.frames)
        else:
            _write_mp4(partial / "frames.mp4", clip.frames, partial / "audio.wav")
        meta = {**clip.meta, "frames_file": f"frames.{frame_format}"}
        (partial / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _write_mp4(path: Path, frames: np.ndarray, audio: Path) -> None:
    from tmrender.media.video import VideoWriter

    height, width = frames.shape[1:3]
    with VideoWriter(path, width=width, height=height, fps=FPS, audio=audio, crf=CRF) as writer:
        writer.write(frames)


def _generate_one(job: tuple[ClipSpec, str, str]) -> dict:
    """Worker: generate and write one clip; returns its index row."""
    spec, out_dir, frame_format = job
    clip = make_clip(spec)
    write_clip(clip, Path(out_dir) / spec.split / spec.clip_id, frame_format)
    return _index_row(clip.meta)


def _index_row(meta: dict) -> dict:
    return {
        "id": meta["id"],
        "frames": meta["frames"],
        "seconds": meta["seconds"],
        "language": meta["language"],
        "voice": meta["voice"]["espeak_name"],
        "size": meta["size"],
    }


def check_options(
    clips: int,
    seconds: float,
    size: int,
    workers: int,
    split: str,
    frame_format: str,
    kind: str = "avatar",
) -> None:
    """Raise UserInputError for any option a user could get wrong."""
    if kind not in KINDS:
        raise UserInputError(f"clip kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if split not in SPLIT_TAG:
        raise UserInputError(f"--split must be train or test, got {split!r}")
    if clips < 1:
        raise UserInputError(f"--clips must be at least 1, got {clips}")
    if not 0.2 <= seconds <= 3600:
        raise UserInputError(f"--seconds must be between 0.2 and 3600, got {seconds}")
    if not 32 <= size <= 2048:
        raise UserInputError(f"--size must be between 32 and 2048 pixels, got {size}")
    if workers < 1:
        raise UserInputError(f"--workers must be at least 1, got {workers}")
    if frame_format not in FRAME_FORMATS:
        raise UserInputError(
            f"--frames must be one of {', '.join(FRAME_FORMATS)}, got {frame_format!r}"
        )


def generate_corpus(
    out_dir: Path | str,
    split: str,
    clips: int,
    seconds: float,
    seed: int = 0,
    size: int = 128,
    workers: int = 1,
    frame_format: str = "mp4",
    on_clip: Callable[[dict], None] | None = None,
    kind: str = "avatar",
) -> Path:
    """Write `clips` clips of `split` under out_dir/split/ in parallel; returns the index path.

    `on_clip(row)` is called in the parent after each clip is written (for progress bars);
    `kind`: one of `KINDS` (see the module docstring).
    """
    check_options(clips, seconds, size, workers, split, frame_format, kind)
    split_dir = Path(out_dir) / split
    make_folder(split_dir)
    jobs = [
        (ClipSpec(split, seed, i, seconds, size, kind), str(out_dir), frame_format)
        for i in range(clips)
    ]
    rows = []
    for row in _run_jobs(jobs, workers):
        rows.append(row)
        if on_clip:
            on_clip(row)
    return write_index(split_dir, rows)


def _run_jobs(jobs: list, workers: int) -> Iterator[dict]:
    if workers == 1 or len(jobs) == 1:
        yield from map(_generate_one, jobs)
        return
    # fork: workers inherit imported modules; each creates its own eSpeak engine on first use
    context = multiprocessing.get_context("fork")
    with context.Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(_generate_one, jobs)


def write_index(split_dir: Path, rows: list[dict]) -> Path:
    """Merge `rows` into split_dir/index.json (sorted by id, existing rows kept)."""
    path = split_dir / "index.json"
    existing = {r["id"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    existing.update({r["id"]: r for r in rows})
    merged = [existing[k] for k in sorted(existing) if (split_dir / k / "meta.json").exists()]
    path.write_text(json.dumps(merged, indent=1) + "\n")
    return path


# -- reading -------------------------------------------------------------------------------


def list_clips(root: Path | str, split: str) -> list[Path]:
    """Folders of the clips of `split` under `root`, sorted by clip id."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise UserInputError(f"no {split} split in {root} (expected the folder {split_dir})")
    index = split_dir / "index.json"
    if index.exists():
        ids = [row["id"] for row in json.loads(index.read_text())]
    else:
        ids = sorted(
            p.parent.name
            for p in split_dir.glob("*/meta.json")
            if not p.parent.name.startswith(".")
        )
    return [split_dir / i for i in ids]


def read_clip(path: Path | str) -> Clip:
    """Load a clip folder written by `write_clip` (frames decoded from MP4 if needed)."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise UserInputError(f"not a clip folder (no meta.json): {path}")
    meta = json.loads(meta_path.read_text())
    frames_file = path / meta.get("frames_file", "frames.mp4")
    if frames_file.suffix == ".npy":
        frames = np.load(frames_file)
    else:
        from tmrender.media.video import read_video_frames

        frames = read_video_frames(frames_file)
    return Clip(
        frames=frames,
        audio=read_wav(path / "audio.wav"),
        mouth=np.load(path / "mouth.npy"),
        pose=np.load(path / "pose.npy"),
        boxes=np.load(path / "boxes.npy"),
        meta=meta,
    )


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit mono WAV as float32 samples in [-1, 1), shape (N,)."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2 or f.getnchannels() != 1:
            raise UserInputError(f"expected 16-bit mono WAV: {path}")
        data = f.readframes(f.getnframes())
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
