"""The ffmpeg binary that imageio-ffmpeg ships: locating it, running it, reading what it says.

No system ffmpeg and no ffprobe are needed. Probing parses the stream table that
`ffmpeg -i FILE` prints; errors carry ffmpeg's own last line so the user sees the cause.
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tmrender.errors import MediaError, UserInputError


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the bundled ffmpeg binary (IMAGEIO_FFMPEG_EXE overrides it)."""
    try:
        import imageio_ffmpeg
    except ImportError as err:  # pragma: no cover - it is a hard dependency
        raise UserInputError("imageio-ffmpeg is not installed: pip install imageio-ffmpeg") from err
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as err:
        raise UserInputError(f"the bundled ffmpeg binary cannot be found: {err}") from err


def ffmpeg_command(*args: str) -> list[str]:
    """The full argument list of one quiet, non-interactive ffmpeg call."""
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args]


def last_error_line(stderr: str) -> str:
    """The most useful line of ffmpeg's stderr: its last non-empty one, shortened."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "ffmpeg gave no reason"
    line = lines[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def run_ffmpeg(args: list[str], what: str) -> None:
    """Run ffmpeg to completion; on failure raise MediaError("<what>: <ffmpeg's reason>")."""
    proc = subprocess.run(ffmpeg_command(*args), capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        raise MediaError(f"{what}: {last_error_line(proc.stderr)}")


@dataclass(frozen=True)
class StreamInfo:
    """One stream of a media file as ffmpeg describes it."""

    index: int
    kind: str  # "audio" or "video" (subtitles and data streams are not listed)
    codec: str
    sample_rate: int | None = None
    channels: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    attached_picture: bool = False
    rotation: float = 0.0  # degrees of the display matrix (phone videos); ffmpeg applies it

    @property
    def display_size(self) -> tuple[int | None, int | None]:
        """(width, height) of the frames ffmpeg decodes: coded size, swapped for a quarter
        turn (ffmpeg rotates by the display matrix when it decodes)."""
        if round(self.rotation / 90) % 2:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class MediaInfo:
    """What `ffmpeg -i` reports of a file: container duration (None when unknown) and streams."""

    path: Path
    duration: float | None
    streams: tuple[StreamInfo, ...]

    @property
    def audio(self) -> list[StreamInfo]:
        return [s for s in self.streams if s.kind == "audio"]

    @property
    def video(self) -> list[StreamInfo]:
        return [s for s in self.streams if s.kind == "video" and not s.attached_picture]


TEXT_FORMATS = frozenset({"tty"})  # demuxers that read plain text, never real media

_INPUT_FORMAT = re.compile(r"Input #0, ([\w,]+), from")
_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"Stream #\d+:(\d+)[^:]*: (Audio|Video): (\w+)(.*)")
# side data "Display Matrix: rotation of -90.00 degrees" (older: "displaymatrix: ..."), or
# the old "rotate : 90" metadata tag
_ROTATION = re.compile(r"(?i)display ?matrix: rotation of (-?[\d.]+) degrees|rotate\s*: (-?\d+)")


def check_readable_file(path: Path, what: str) -> Path:
    """Raise UserInputError unless `path` is an existing, readable regular file."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{what} not found: {path}")
    if path.is_dir():
        raise UserInputError(f"{what} is a folder, not a file: {path}")
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise UserInputError(f"{what} cannot be read: {path} ({err.strerror})") from err
    return path


def probe(path: Path, what: str = "media file") -> MediaInfo:
    """Describe a media file with `ffmpeg -i`; MediaError if ffmpeg cannot read it.

    `what` names the file in the not-found / unreadable messages (e.g. "audio file").
    """
    path = check_readable_file(path, what)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    stderr = subprocess.run(cmd, capture_output=True, text=True, errors="replace").stderr
    if "Input #0" not in stderr:
        raise MediaError(f"{path} is not a media file ffmpeg can read: {last_error_line(stderr)}")
    if (match := _INPUT_FORMAT.search(stderr)) and match.group(1) in TEXT_FORMATS:
        # ffmpeg's `tty` demuxer renders any .txt/.nfo/.asc file as ANSI-art video.
        raise MediaError(f"{path} is not a media file ffmpeg can read: it is a text file")
    duration = None
    if match := _DURATION.search(stderr):
        hours, minutes, seconds = match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    matches = list(_STREAM.finditer(stderr))
    ends = [m.start() for m in matches[1:]] + [len(stderr)]
    streams = tuple(
        _parse_stream(m, stderr[m.end() : end]) for m, end in zip(matches, ends, strict=True)
    )
    return MediaInfo(path=path, duration=duration, streams=streams)


def _parse_stream(match: re.Match, details: str) -> StreamInfo:
    """A `_STREAM` line; `details`: the lines below it (metadata, side data)."""
    index, kind, codec, rest = match.groups()
    turn = _ROTATION.search(details)
    rate = re.search(r"(\d+) Hz", rest)
    size = re.search(r"\b([1-9]\d{0,4})x([1-9]\d{0,4})\b", rest)
    fps = re.search(r"([\d.]+) fps", rest)
    channels = re.search(r"Hz, ([\w.()]+)", rest)
    return StreamInfo(
        index=int(index),
        kind=kind.lower(),
        codec=codec,
        sample_rate=int(rate.group(1)) if rate else None,
        channels=channels.group(1) if channels else None,
        width=int(size.group(1)) if size and kind == "Video" else None,
        height=int(size.group(2)) if size and kind == "Video" else None,
        fps=float(fps.group(1)) if fps else None,
        attached_picture="attached pic" in rest,
        rotation=float(turn.group(1) or turn.group(2)) if turn and kind == "Video" else 0.0,
    )


def count_video_frames(path: Path) -> int:
    """Decode the first video stream of `path` and count its frames (exact, not the header's)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0"]
    cmd += ["-f", "null", "-"]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        raise MediaError(f"cannot decode the video of {path}: {last_error_line(proc.stderr)}")
    counts = re.findall(r"frame=\s*(\d+)", proc.stderr)
    if not counts:
        raise MediaError(f"ffmpeg reported no video frames in {path}")
    return int(counts[-1])
