"""Small file helpers shared by every part that writes or fingerprints files: SHA-256
digests, the SHA256SUMS lists beside shipped weights, and atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from tmrender.errors import UserInputError

SUMS_FILE = "SHA256SUMS"


class ChecksumError(UserInputError):
    """A file whose SHA-256 differs from the line its folder's SHA256SUMS lists for it."""


def sha256_file(path: Path | str, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while data := f.read(block):
            digest.update(data)
    return digest.hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_cached(path: Path | str) -> str:
    """`sha256_file`, read once per process for a file whose path, size and modification
    time have not changed (a batch asks for the model's hash again and again)."""
    path = Path(path).resolve()
    info = path.stat()
    key = (str(path), info.st_size, info.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def make_folder(folder: Path | str, what: str = "output folder") -> Path:
    """Create `folder` and its parents if missing; a one-line UserInputError if it cannot be
    (`what` names it in the message)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"cannot create the {what} {folder}: {err.strerror or err}") from err
    return folder


def listed_checksum(path: Path) -> str | None:
    """The SHA-256 that the SHA256SUMS beside `path` lists for it (sha256sum format), or
    None when there is no such file or line."""
    sums = path.parent / SUMS_FILE
    if not sums.is_file():
        return None
    for line in sums.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if name.lstrip("*") == path.name:
            return digest.lower()
    return None


def verify_checksum(path: Path) -> None:
    """Refuse (ChecksumError, one line) a file whose SHA-256 differs from its SHA256SUMS
    line; files without a line are not checked."""
    expected = listed_checksum(path)
    if expected is not None and sha256_cached(path) != expected:
        raise ChecksumError(
            f"{path} does not match its SHA-256 in {path.parent / SUMS_FILE}: the file is "
            "damaged or was replaced; restore it (git checkout weights/) or, if you replaced "
            "it on purpose, update its line"
        )


def record_checksum(sums_file: Path | str, path: Path | str, digest: str) -> None:
    """Set the `<sha256>  <filename>` line of `path` in `sums_file` (sha256sum format)."""
    sums_file, name = Path(sums_file), Path(path).name
    lines = sums_file.read_text().splitlines() if sums_file.exists() else []
    kept = [ln for ln in lines if ln.split("  ", 1)[-1] != name]
    sums_file.write_text("\n".join([*kept, f"{digest}  {name}"]) + "\n")


@contextlib.contextmanager
def atomic_write(path: Path | str) -> Iterator[Path]:
    """Yield a hidden sibling `.<name>.<8 hex>.partial` to write; on success it is given the
    usual permissions of a new file and renamed to `path`, so a reader never sees a partial
    file there. On any error (Ctrl-C included) it is removed and `path` is left untouched."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        yield partial
        os.chmod(partial, 0o666 & ~_umask())  # some writers (safetensors) create 0600 files
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
