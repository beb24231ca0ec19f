"""Sidecars: what marks an output as finished, so that a rerun renders only the rest.

A finished output carries a sidecar `.<name>.tmrender.json` beside it (hidden, so a folder
of videos stays a folder of videos), written atomically and only after the video has been
renamed into place. An output counts as finished when it exists, its sidecar parses, the
sidecar's `key` equals the row's key now (sha256 of the image bytes, the audio bytes and
the checkpoint; seed, mode, crop, crf, face) and the output's size equals the recorded size.
Rows that are finished are skipped unless `overwrite`; everything else is rendered.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import tmrender
from tmrender.files import atomic_write

SIDECAR_FORMAT = "tmrender-batch-sidecar/1"


def sidecar_path(output: Path) -> Path:
    """The sidecar of an output: `.<name>.tmrender.json` in the same folder."""
    return output.with_name(f".{output.name}.tmrender.json")


def render_key(
    image_sha: str, audio_sha: str, model_sha: str, options, face: str | int = "auto"
) -> dict:
    """What an output depends on: input and model hashes, the render options and the face."""
    crop = options.crop
    return {
        "image_sha256": image_sha,
        "audio_sha256": audio_sha,
        "model_sha256": model_sha,
        "seed": options.seed,
        "mode": options.mode,
        "crop": None if crop is None else [crop.x, crop.y, crop.w, crop.h],
        "crf": options.crf,
        "face": face,
    }


def read_sidecar(output: Path) -> dict | None:
    """The sidecar of `output`, or None when missing or unreadable."""
    try:
        record = json.loads(sidecar_path(output).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
        return None
    return record


def is_finished(output: Path, key: dict, record: dict | None) -> bool:
    """The output exists, and its sidecar has this key and the output's current size."""
    if record is None or record.get("key") != key:
        return False
    try:
        return output.stat().st_size == record.get("output_bytes")
    except OSError:
        return False


def write_sidecar(output: Path, key: dict, audio_seconds: float, frames: int) -> Path:
    """Record a finished output (call only once it is at its final name)."""
    record = {
        "format": SIDECAR_FORMAT,
        "output": output.name,
        "output_bytes": output.stat().st_size,
        "key": key,
        "audio_seconds": audio_seconds,
        "frames": frames,
        "written_at": _now_iso(),
        "tmrender_version": tmrender.__version__,
    }
    return write_json_atomic(sidecar_path(output), record)


def write_json_atomic(path: Path, data: dict) -> Path:
    """Write JSON under a temporary name in the same folder, then rename it into place."""
    with atomic_write(path) as partial, partial.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def remove_stale_temporaries(output: Path) -> list[Path]:
    """Delete the work-in-progress files an interrupted render of `output` left behind
    (VideoWriter's `.<stem>.<8 hex>.video|partial<suffix>`, sidecar `.partial`s)."""
    video = re.compile(
        rf"\.{re.escape(output.stem)}\.[0-9a-f]{{8}}\.(video|partial){re.escape(output.suffix)}"
    )
    sidecar = re.compile(rf"\.{re.escape(sidecar_path(output).name)}\.[0-9a-f]{{8}}\.partial")
    removed = []
    with contextlib.suppress(OSError):
        for path in output.parent.iterdir():
            if video.fullmatch(path.name) or sidecar.fullmatch(path.name):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
