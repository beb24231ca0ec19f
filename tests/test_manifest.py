"""Batch manifests: CSV parsing edge cases and per-row validation (no model needed)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tmrender.media.audio import SAMPLE_RATE, write_wav
from tmrender.render.manifest import ManifestError, check_rows, read_manifest


@pytest.fixture
def folder(tmp_path) -> Path:
    """A portrait, two short clips, an empty WAV, random bytes named .wav, a text file."""
    Image.fromarray(np.full((64, 48, 3), 100, np.uint8)).save(tmp_path / "face.png")
    for name in ("a.wav", "b.wav"):
        write_wav(tmp_path / name, 0.2 * np.sin(np.arange(SAMPLE_RATE // 2) / 8.0))
    with wave.open(str(tmp_path / "empty.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "blocker").write_text("a regular file, not a folder\n")
    return tmp_path


def write(folder: Path, text: str, bom: bool = False) -> Path:
    path = folder / "m.csv"
    path.write_text(text, encoding="utf-8-sig" if bom else "utf-8")
    return path


def test_bom_blank_lines_and_quoted_commas(folder):
    text = (
        'image,audio,output,crop\n\nface.png,a.wav,"x, y.mp4","1,2,30,40"\n\n\nface.png,b.wav,,\n'
    )
    rows = read_manifest(write(folder, text, bom=True))
    assert [r.index for r in rows] == [0, 1]
    assert [r.line for r in rows] == [3, 6]
    assert rows[0].output == folder / "x, y.mp4" and rows[0].crop == "1,2,30,40"
    assert rows[0].image == folder / "face.png"  # relative to the manifest's folder
    assert rows[1].output == folder / "b.mp4"  # default: <audio stem>.mp4


def test_outputs_resolve_against_out_dir_and_inputs_against_the_manifest(folder, tmp_path):
    out = tmp_path / "renders"
    rows = read_manifest(write(folder, "audio,image,output\na.wav,face.png,sub/o.mp4\n"), out)
    assert rows[0].output == out / "sub" / "o.mp4" and rows[0].audio == folder / "a.wav"


@pytest.mark.parametrize(
    "text, message",
    [
        ("image,audio,speaker\nface.png,a.wav,x\n", "unknown column(s) 'speaker'"),
        ("image,output\nface.png,o.mp4\n", "lacks required column(s) audio"),
        ("image,audio\n\n\n", "no rows"),
        ("", "is empty"),
        ("image,audio,audio\nf,a,b\n", "twice"),
    ],
)
def test_unusable_manifests(folder, text, message):
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(write(folder, text))


def test_missing_and_binary_manifests(folder):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(folder / "nope.csv")
    binary = folder / "bin.csv"
    binary.write_bytes(b"\x00\x01\x02image,audio")
    with pytest.raises(ManifestError, match="not a CSV text file"):
        read_manifest(binary)


def test_every_bad_row_gets_its_reason(folder):
    text = "\n".join(
        [
            "image,audio,output,seed,mode,crop",
            "face.png,a.wav,good.mp4,7,speaking,",
            "missing.png,a.wav,m.mp4,,,",
            "face.png,noise.wav,n.mp4,,,",
            "face.png,empty.wav,e.mp4,,,",
            "notes.txt,a.wav,t.mp4,,,",
            "face.png,a.wav,blocker/x.mp4,,,",
            "face.png,a.wav,dup.mp4,,,",
            "face.png,b.wav,dup.mp4,,,",
            "face.png,a.wav,s.mp4,-3,,",
            "face.png,a.wav,s2.mp4,x,shouting,1,2",
            'face.png,a.wav,c.mp4,,,"0,0,100,100"',
            "face.png,a.wav,a.wav,,,",
        ]
    )
    checked = check_rows(read_manifest(write(folder, text)))
    reasons = [c.error for c in checked]
    assert checked[0].ok and (checked[0].seed, checked[0].mode) == (7, "speaking")
    assert checked[0].audio_seconds == pytest.approx(0.5, abs=0.05)
    expected = [
        None,
        "image file not found",
        "not a media file",
        "zero length",
        "not an image",
        "output folder is a file",
        "shared by the rows on lines 8, 9",
        "shared by the rows on lines 8, 9",
        "seed must be an integer >= 0",
        "fields but the header names 6 columns",
        "lies outside the 48x64 image",
        "would overwrite an input",
    ]
    for reason, part in zip(reasons, expected, strict=True):
        assert (reason is None) if part is None else (part in reason), (part, reason)
    assert "mode must be one of" in reasons[9]


def test_missing_output_folders_are_made_only_when_asked(folder):
    rows = read_manifest(write(folder, "image,audio,output\nface.png,a.wav,new/deep/o.mp4\n"))
    assert check_rows(rows)[0].ok and not (folder / "new").exists()
    assert check_rows(rows, create_folders=True)[0].ok and (folder / "new" / "deep").is_dir()
