"""Batch manifests: a CSV file with one video to render per row, read and checked row by row.

Columns: `image` and `audio` (required), `output`, `seed`, `mode`, `crop` and `face`
(optional; `face` as `tmrender generate --face`: blank or auto, or a face number);
any other column is an error that names it. The file is UTF-8 with or without a BOM;
quoted fields may hold commas; blank lines are ignored.

Relative input paths resolve against the manifest's folder; relative outputs against the
output folder (`--out-dir`, else the manifest's folder); an empty `output` means
`<audio stem>.mp4` in the output folder.

Two levels of error:
- the manifest itself is unusable (missing, not CSV, no header, missing or unknown columns,
  no rows): `ManifestError`, a UserInputError (exit code 2);
- a row is bad (a missing or undecodable file, a bad seed, an unwritable or duplicate
  output): `check_rows` records the reason on that row and the other rows go on.

This module imports no torch: checking a manifest stays light.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from tmrender.errors import UserInputError
from tmrender.files import make_folder
from tmrender.media.audio import AudioStream
from tmrender.media.image import CropBox, open_rgb
from tmrender.media.video import check_writable_output

REQUIRED_COLUMNS = ("image", "audio")
OPTIONAL_COLUMNS = ("output", "seed", "mode", "crop", "face")
MODES = ("auto", "speaking", "silence")
DEFAULT_SUFFIX = ".mp4"
PROBE_SAMPLES = 640  # one video frame of audio: enough to prove that samples decode
PROBE_THREADS = 4  # rows probed at once (each probe is an ffmpeg process, mostly waiting)


class ManifestError(UserInputError):
    """The manifest as a whole cannot be used (exit code 2)."""


@dataclass(frozen=True)
class ManifestRow:
    """One data row of a manifest, paths resolved, other fields as written."""

    index: int  # 0-based position among the data rows (blank lines not counted)
    line: int  # line of the file where the row ends (1-based), for messages
    image: Path
    audio: Path
    output: Path
    seed: str = ""
    mode: str = ""
    crop: str = ""
    face: str = ""
    fields: int = 0  # fields on the line, and columns in the header
    columns: int = 0


@dataclass(frozen=True)
class CheckedRow:
    """A row after validation: its parsed settings, or the reasons it cannot be rendered."""

    row: ManifestRow
    seed: int = 0
    mode: str = "auto"
    crop: CropBox | None = None
    face: str | int = "auto"  # as `tmrender generate --face`
    audio_seconds: float | None = None  # the container's duration; None when unknown
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error(self) -> str | None:
        """All reasons in one line, or None for a good row."""
        return "; ".join(self.errors) if self.errors else None


# --- Reading ------------------------------------------------------------------------------


def read_manifest(path: Path | str, out_dir: Path | str | None = None) -> list[ManifestRow]:
    """Parse a manifest into rows with resolved paths; ManifestError if it is unusable."""
    path = Path(path)
    text = _read_text(path)
    records = _csv_records(text, path)
    if not records:
        raise ManifestError(f"manifest {path} is empty: it needs a header line image,audio,...")
    (header_line, header), *data = records
    columns = _check_header(header, path)
    if not data:
        raise ManifestError(f"manifest {path} has a header but no rows")
    base = path.parent
    outputs = Path(out_dir) if out_dir is not None else base
    rows = []
    for index, (line, values) in enumerate(data):
        fields = dict(zip(columns, (v.strip() for v in values), strict=False))
        row = _make_row(index, line, fields, base, outputs)
        rows.append(replace(row, fields=len(values), columns=len(columns)))
    return rows


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ManifestError(f"manifest not found: {path}")
    if path.is_dir():
        raise ManifestError(f"manifest is a folder, not a CSV file: {path}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ManifestError(f"manifest cannot be read: {path} ({err.strerror})") from err
    if b"\0" in data:
        raise ManifestError(f"manifest {path} is not a CSV text file (it holds binary data)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(f"manifest {path} is not UTF-8 text ({err.reason})") from err


def _csv_records(text: str, path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank CSV record."""
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    records = []
    try:
        for values in reader:
            if any(v.strip() for v in values):
                records.append((reader.line_num, values))
    except csv.Error as err:
        raise ManifestError(f"{path}, line {reader.line_num}: not valid CSV ({err})") from err
    return records


def _check_header(header: list[str], path: Path) -> list[str]:
    columns = [name.strip().lower() for name in header]
    unknown = [name for name in columns if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        known = ", ".join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
        raise ManifestError(
            f"manifest {path} has unknown column(s) {', '.join(map(repr, unknown))} "
            f"(known: {known})"
        )
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise ManifestError(
            f"manifest {path} lacks required column(s) {', '.join(missing)}; "
            f"the first line must name the columns, e.g. image,audio,output"
        )
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise ManifestError(f"manifest {path} names column(s) twice: {', '.join(repeated)}")
    return columns


def _make_row(index: int, line: int, fields: dict[str, str], base: Path, outputs: Path):
    image = _resolve(fields.get("image", ""), base)
    audio = _resolve(fields.get("audio", ""), base)
    written = fields.get("output", "")
    output = _resolve(written, outputs) if written else outputs / f"{audio.stem}{DEFAULT_SUFFIX}"
    return ManifestRow(
        index=index,
        line=line,
        image=image,
        audio=audio,
        output=output,
        seed=fields.get("seed", ""),
        mode=fields.get("mode", ""),
        crop=fields.get("crop", ""),
        face=fields.get("face", ""),
    )


def _resolve(text: str, base: Path) -> Path:
    """An absolute path: `text` (with ~ expanded) taken relative to `base`."""
    if not text:
        return Path()  # blank: reported by check_row
    return Path(os.path.abspath(base / os.path.expanduser(text)))


# --- Checking -----------------------------------------------------------------------------


def check_rows(
    rows: Sequence[ManifestRow],
    probe: Sequence[ManifestRow] | None = None,
    create_folders: bool = False,
    threads: int = PROBE_THREADS,
) -> list[CheckedRow]:
    """Validate rows; returns one CheckedRow per row of `probe` (default: all rows).

    Output collisions (two rows writing one file, or a row writing over an input) are
    found over all `rows`, so that shards agree; the files (decode probes, writable
    output) are checked only for the rows in `probe`, in `threads` threads.
    `create_folders` makes missing output folders (otherwise they only must be creatable).
    """
    probe = list(rows if probe is None else probe)
    collisions = output_collisions(rows)

    def check(row: ManifestRow) -> CheckedRow:
        return check_row(row, collisions.get(row.index, ()), create_folders)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(check, probe))


def check_row(
    row: ManifestRow, known_errors: Sequence[str] = (), create_folders: bool = False
) -> CheckedRow:
    """Validate one row: settings, both inputs (decoded a little) and the output folder."""
    errors = list(known_errors)
    if row.fields > row.columns:
        errors.append(
            f"{row.fields} fields but the header names {row.columns} columns "
            '(put fields that hold commas in double quotes, e.g. "10,10,200,200")'
        )
    seed = _collect(errors, lambda: parse_seed(row.seed), 0)
    mode = _collect(errors, lambda: parse_mode(row.mode), "auto")
    crop = _collect(errors, lambda: parse_crop(row.crop), None)
    face = _collect(errors, lambda: parse_face(row.face), "auto")
    seconds = None
    for name in ("image", "audio"):
        if getattr(row, name) == Path():
            errors.append(f"the {name} field is empty")
    if row.image != Path():
        _collect(errors, lambda: check_image(row.image, crop), None)
    if row.audio != Path():
        seconds = _collect(errors, lambda: probe_audio(row.audio), None)
    _collect(errors, lambda: check_output(row.output, create_folders), None)
    return CheckedRow(row, seed, mode, crop, face, seconds, tuple(errors))


def _collect(errors: list[str], check: Callable, fallback):
    """Run one check; on UserInputError record its message and return `fallback`."""
    try:
        return check()
    except UserInputError as err:
        errors.append(str(err))
        return fallback


def parse_seed(text: str) -> int:
    """A seed: an integer >= 0; blank means 0."""
    if not text:
        return 0
    try:
        seed = int(text)
    except ValueError:
        raise UserInputError(f"seed must be an integer >= 0, got {text!r}") from None
    if seed < 0:
        raise UserInputError(f"seed must be an integer >= 0, got {text!r}")
    return seed


def parse_mode(text: str) -> str:
    """auto, speaking or silence; blank means auto."""
    mode = text.lower() or "auto"
    if mode not in MODES:
        raise UserInputError(f"mode must be one of {', '.join(MODES)}, got {text!r}")
    return mode


def parse_crop(text: str) -> CropBox | None:
    """A crop box x,y,w,h; blank means the centre crop (None)."""
    if not text:
        return None
    try:
        return CropBox.parse(text)
    except UserInputError as err:
        raise UserInputError(str(err).replace("--crop", "crop")) from None


def parse_face(text: str) -> str | int:
    """auto (or blank) or a face number 1, 2, ... (largest first)."""
    from tmrender.render.source import parse_face as parse

    try:
        return parse(text)
    except UserInputError as err:
        raise UserInputError(str(err).replace("--face", "face")) from None


def check_image(path: Path, crop: CropBox | None) -> None:
    """The image is not too large (`tmrender.faces.MAX_PIXELS`, from its header), decodes,
    and the crop box (if any) lies inside it."""
    from tmrender.faces.detect import check_file_size

    check_file_size(path)
    image = open_rgb(path)
    if crop is not None and (crop.x + crop.w > image.width or crop.y + crop.h > image.height):
        raise UserInputError(
            f"crop {crop.x},{crop.y},{crop.w},{crop.h} lies outside the "
            f"{image.width}x{image.height} image {path}"
        )


def probe_audio(path: Path) -> float | None:
    """The audio has a stream whose first samples decode; returns the container duration.

    Raises UserInputError for a missing or undecodable file and for zero-length audio."""
    with AudioStream(path, block_samples=PROBE_SAMPLES) as stream:
        next(iter(stream), None)  # an empty file raises here ("zero length")
        return stream.info.duration_hint


def check_output(path: Path, create_folders: bool = False) -> None:
    """A file can be created at `path`: its folder is writable, or can be made."""
    folder = path.parent
    if not folder.exists() and create_folders:
        make_folder(folder)
    if folder.exists():
        check_writable_output(path)
        return
    ancestor = next(p for p in folder.parents if p.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserInputError(f"output folder cannot be created under {ancestor}: {folder}")


def output_collisions(rows: Sequence[ManifestRow]) -> dict[int, list[str]]:
    """Reasons, by row index, for outputs shared by rows or landing on an input file."""
    reasons: dict[int, list[str]] = defaultdict(list)
    by_output: dict[Path, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        by_output[_real(row.output)].append(row)
    for output, group in by_output.items():
        if len(group) > 1:
            lines = ", ".join(str(r.line) for r in group)
            for row in group:
                reasons[row.index].append(f"output {output} is shared by the rows on lines {lines}")
    inputs = {_real(p): r for r in rows for p in (r.image, r.audio)}
    for row in rows:
        own = {_real(row.image), _real(row.audio)}
        owner = row if _real(row.output) in own else inputs.get(_real(row.output))
        if owner is not None:
            reasons[row.index].append(
                f"output {row.output} would overwrite an input of the row on line {owner.line}"
            )
    return dict(reasons)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))
