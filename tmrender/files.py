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
