"""Shared file helpers: atomic writes and SHA-256."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from tmrender.files import (
    ChecksumError,
    atomic_write,
    listed_checksum,
    record_checksum,
    sha256_file,
    verify_checksum,
)


def test_atomic_write_renames_into_place_with_normal_permissions(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_write(target) as partial:
        assert partial.parent == tmp_path and partial.name.startswith(".out.bin.")
        partial.write_bytes(b"done")
        os.chmod(partial, 0o600)  # as safetensors does
        assert not target.exists()
    assert target.read_bytes() == b"done"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_leaves_nothing_on_error(tmp_path, error):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(error), atomic_write(target) as partial:
        partial.write_bytes(b"half")
        raise error
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "x"
    data = os.urandom(3 * (1 << 20) + 17)
    path.write_bytes(data)
    assert sha256_file(path, block=1 << 20) == hashlib.sha256(data).hexdigest()


def test_a_file_is_checked_against_its_sha256sums_line(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"weights")
    verify_checksum(path)  # no SHA256SUMS: not checked
    record_checksum(tmp_path / "SHA256SUMS", path, sha256_file(path))
    assert listed_checksum(path) == sha256_file(path)
    verify_checksum(path)
    path.write_bytes(b"other weights")
    with pytest.raises(ChecksumError, match="does not match its SHA-256"):
        verify_checksum(path)
