"""Video output: RGB frames stream into an ffmpeg pipe (H.264, yuv420p); the audio is muxed as
AAC when the writer closes; the file appears at its final name only when complete.

Nothing here holds frames: each `write` goes straight down the pipe, so memory does not grow
with the length of the video.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np

from tmrender.errors import MediaError, UserInputError
from tmrender.media.ffmpeg import ffmpeg_command, last_error_line, run_ffmpeg

DEFAULT_CRF = 18
DEFAULT_PRESET = "veryfast"
MAX_CRF = 51  # x264's range is 0 (lossless) to 51
PIPE_BYTES = 1 << 20  # Linux's default /proc/sys/fs/pipe-max-size for unprivileged users


def check_crf(crf: int) -> int:
    """The H.264 quality setting, or UserInputError if it is outside 0..51."""
    if not 0 <= crf <= MAX_CRF:
        raise UserInputError(f"--crf must be between 0 and {MAX_CRF}, got {crf}")
    return crf


def check_writable_output(path: Path | str) -> Path:
    """Raise UserInputError unless a file can be created at `path` (its folder must exist)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserInputError(f"output is a folder, not a file: {path}")
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"output folder is a file, not a folder: {folder}")
    if not folder.is_dir():
        raise UserInputError(f"output folder does not exist: {folder}")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmrender-check-"):
            pass
    except OSError as err:
        raise UserInputError(f"output folder cannot be written: {folder} ({err.strerror})") from err
    return path


def temporary_sibling(path: Path, tag: str) -> Path:
    """A hidden name beside `path` for work in progress, e.g. `.out.ab12cd.partial.mp4`."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.{tag}{path.suffix}")


class VideoWriter:
    """Write RGB frames to an MP4 file (H.264, yuv420p, +faststart) with optional AAC audio.

    Frames are RGB, or with `planar=True` (even sizes) I420, which ffmpeg takes without
    a conversion of its own (`tmrender.render.paste.PasteBack.planar`).

    Usage::

        with VideoWriter("out.mp4", width=128, height=128, fps=25, audio="speech.wav") as w:
            w.write(frames)          # uint8, shape (H, W, 3) or (N, H, W, 3)

    On leaving the block normally the audio is muxed and the file renamed into place; on an
    exception (Ctrl-C included) every temporary file is removed and nothing is left at `path`.
    """

    def __init__(
        self,
        path: Path | str,
        width: int,
        height: int,
        fps: int = 25,
        audio: Path | str | None = None,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        audio_bitrate: str = "128k",
        planar: bool = False,
    ):
        check_crf(crf)
        if planar and (width % 2 or height % 2):
            raise ValueError(f"I420 frames need an even size, got {width}x{height}")
        self.planar = planar  # frames come as I420 (N, H * W * 3 // 2), not RGB
        self.path = check_writable_output(path)
        self.width, self.height, self.fps = width, height, fps
        self.audio = Path(audio) if audio is not None else None
        self.crf, self.preset, self.audio_bitrate = crf, preset, audio_bitrate
        self.frames_written = 0
        self._video_tmp = temporary_sibling(self.path, "video")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the writer
        self._proc = subprocess.Popen(
            self._encode_command(),
            stdin=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,  # Ctrl-C reaches Python, which cleans up; not ffmpeg
        )
        _widen_pipe(self._proc.stdin)

    def _encode_command(self) -> list[str]:
        # yuv420p needs even sizes: pad odd ones by one pixel rather than fail (only then:
        # the filter copies every frame)
        odd = self.width % 2 or self.height % 2
        pad = ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"] if odd else []
        # fmt: off
        return ffmpeg_command(
            "-f", "rawvideo", "-pix_fmt", "yuv420p" if self.planar else "rgb24",
            "-s", f"{self.width}x{self.height}",
            "-framerate", str(self.fps), "-i", "-", *pad,
            "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-y", str(self._video_tmp),
        )
        # fmt: on

    def write(self, frames: np.ndarray) -> None:
        """Append frames: uint8 RGB, shape (H, W, 3) or (N, H, W, 3); with `planar`, I420
        (N, H * W * 3 // 2): the Y plane, then U and V at half the size each way."""
        frames = np.asarray(frames)
        expected = (
            (self.height * self.width * 3 // 2,) if self.planar else (self.height, self.width, 3)
        )
        if frames.ndim == len(expected):
            frames = frames[None]
        if (
            frames.ndim != len(expected) + 1
            or frames.shape[1:] != expected
            or frames.dtype != np.uint8
        ):
            raise ValueError(
                f"frames must be uint8 of shape (N, {', '.join(map(str, expected))}), "
                f"got {frames.dtype} {frames.shape}"
            )
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).data)
        except (BrokenPipeError, OSError) as err:
            raise MediaError(f"video encoder stopped: {self._ffmpeg_reason()}") from err
        self.frames_written += frames.shape[0]

    def close(self) -> Path:
        """Finish encoding, mux the audio, move the file into place; returns the final path."""
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()
        partial = temporary_sibling(self.path, "partial")
        try:
            if self._proc.wait() != 0:
                raise MediaError(f"video encoding failed: {self._ffmpeg_reason()}")
            if self.frames_written == 0:
                raise MediaError("no frames were written")
            if self.audio is None:
                os.replace(self._video_tmp, partial)
            else:
                self._mux_audio(partial)
            os.replace(partial, self.path)
        finally:
            _remove(partial)
            _remove(self._video_tmp)
            self._stderr.close()
        return self.path

    def _mux_audio(self, partial: Path) -> None:
        # fmt: off
        run_ffmpeg(
            [
                "-i", str(self._video_tmp), "-i", str(self.audio),
                "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                "-c:a", "aac", "-b:a", self.audio_bitrate,
                "-movflags", "+faststart", "-y", str(partial),
            ],
            what=f"cannot add the audio of {self.audio}",
        )
        # fmt: on

    def abort(self) -> None:
        """Stop ffmpeg and delete every temporary file; nothing is left at the destination."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdin and not self._proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
        _remove(self._video_tmp)
        self._stderr.close()

    def _ffmpeg_reason(self) -> str:
        self._stderr.seek(0)
        return last_error_line(self._stderr.read().decode("utf-8", "replace"))

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _widen_pipe(pipe) -> None:
    """Ask Linux for a 1 MiB pipe buffer (64 KiB by default): a 1024 x 1024 frame then
    crosses in 3 writes instead of 48, with fewer wake-ups of ffmpeg (about 15% less of its
    CPU time measured at that size). Elsewhere (no F_SETPIPE_SZ), or if refused, the
    default stays."""
    with contextlib.suppress(ImportError, OSError, AttributeError):
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def iter_video_frames(path: Path | str, block_frames: int = 64):
    """Decode a video file to RGB uint8 blocks of shape (n, H, W, 3), n <= block_frames.

    Streams through a pipe, so a long video is never held whole.
    """
    from tmrender.media.ffmpeg import probe

    info = probe(Path(path))
    if not info.video:
        raise MediaError(f"{path} has no video stream")
    width, height = info.video[0].display_size  # ffmpeg turns rotated (phone) videos upright
    if not width or not height:
        raise MediaError(f"ffmpeg reported no frame size for {path}")
    frame_bytes = width * height * 3
    cmd = ffmpeg_command(
        "-i", str(path), "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"
    )  # fmt: skip
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr)
        try:
            while data := proc.stdout.read(frame_bytes * block_frames):
                count = len(data) // frame_bytes
                yield np.frombuffer(data[: count * frame_bytes], np.uint8).reshape(
                    count, height, width, 3
                )
            if proc.wait() != 0:
                stderr.seek(0)
                reason = last_error_line(stderr.read().decode("utf-8", "replace"))
                raise MediaError(f"cannot decode the video of {path}: {reason}")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()


def read_video_frames(path: Path | str) -> np.ndarray:
    """Decode a whole (short) video: RGB uint8 of shape (T, H, W, 3)."""
    return np.concatenate(list(iter_video_frames(path)))
