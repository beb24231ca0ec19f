"""Small file helpers shared by every part that writes or fingerprints files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


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
