"""`tmrender batch`: bad rows, resume after SIGKILL, shards, worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tmrender.cli import main
from tmrender.media.audio import SAMPLE_RATE, write_wav
from tmrender.media.ffmpeg import count_video_frames
from tmrender.render.batch.execute import execute_batch
from tmrender.render.batch.plan import BatchSettings, Shard, prepare_batch
from tmrender.render.batch.report import rank_report_path
from tmrender.render.batch.sidecars import sidecar_path

from .conftest import drawn_avatar

REPO = Path(__file__).resolve().parents[1]


def make_inputs(folder: Path, clips: int, seconds: float = 0.6) -> None:
    """face.png and clips c0.wav, c1.wav, ... of `seconds` seconds."""
    Image.fromarray(drawn_avatar(96)).save(folder / "face.png")
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    for i in range(clips):
        write_wav(folder / f"c{i}.wav", 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t))


def write_manifest(folder: Path, lines: list[str]) -> Path:
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    _, err = capsys.readouterr()
    return exit_info.value.code, err


def statuses(report: Path) -> list[str]:
    return [row["status"] for row in json.loads(report.read_text())["rows"]]


def leftovers(folder: Path) -> list[str]:
    """Hidden files that are neither sidecars nor expected: partial work."""
    return [
        p.name for p in folder.rglob(".*") if p.is_file() and not p.name.endswith(".tmrender.json")
    ]


@pytest.mark.slow
def test_bad_rows_fail_alone_and_a_rerun_skips_finished_rows(capsys, tmp_path, checkpoint):
    make_inputs(tmp_path, 2)
    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(1).bytes(5000))
    with wave.open(str(tmp_path / "empty.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
    (tmp_path / "notes.txt").write_text("text, not pixels\n")
    (tmp_path / "blocker").write_text("a regular file\n")
    manifest = write_manifest(
        tmp_path,
        [
            "image,audio,output,seed",
            "face.png,c0.wav,,",
            "missing.png,c0.wav,m.mp4,",
            "face.png,noise.wav,,",
            "face.png,empty.wav,,",
            "notes.txt,c0.wav,t.mp4,",
            f"face.png,c0.wav,{tmp_path / 'blocker' / 'x.mp4'},",  # under a regular file
            "face.png,c1.wav,dup.mp4,",
            "face.png,c0.wav,dup.mp4,",
            "face.png,c1.wav,seeded.mp4,minus one",
            "face.png,c1.wav,,5",
        ],
    )
    out = tmp_path / "out"
    args = ("batch", str(manifest), "-m", str(checkpoint), "--out", str(out))
    code, err = run_cli(capsys, *args)
    assert code == 3, err
    report = out / "batch-report.json"
    assert statuses(report) == ["ok"] + ["failed"] * 8 + ["ok"]
    rows = json.loads(report.read_text())["rows"]
    assert "not found" in rows[1]["error"] and "zero length" in rows[3]["error"]
    assert "shared by" in rows[6]["error"] and "seed" in rows[8]["error"]
    assert sorted(p.name for p in out.iterdir()) == [
        ".c0.mp4.tmrender.json",
        ".c1.mp4.tmrender.json",
        "batch-report.json",
        "c0.mp4",
        "c1.mp4",
    ]
    assert count_video_frames(out / "c0.mp4") == 15  # 0.6 s at 25 fps
    assert json.loads(sidecar_path(out / "c1.mp4").read_text())["key"]["seed"] == 5
    assert leftovers(tmp_path) == []
    # A rerun (with --out's old name) renders nothing; a changed seed renders only that row.
    mtime = (out / "c0.mp4").stat().st_mtime_ns
    code, _ = run_cli(capsys, *args[:-2], "--out-dir", str(out))
    assert code == 3 and statuses(report)[0::9] == ["skipped", "skipped"]
    manifest.write_text(manifest.read_text().replace("c1.wav,,5", "c1.wav,,6"))
    code, _ = run_cli(capsys, *args)
    assert statuses(report)[0::9] == ["skipped", "ok"]
    assert (out / "c0.mp4").stat().st_mtime_ns == mtime


def test_out_dir_is_a_hidden_old_name_of_out(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    shown = capsys.readouterr().out
    assert "--out " in shown and "--out-dir" not in shown
    both = ("batch", "m.csv", "--out", str(tmp_path), "--out-dir", str(tmp_path))
    code, err = run_cli(capsys, *both)
    assert code == 2 and "old name of --out" in err


def test_dry_run_renders_nothing_and_a_bad_manifest_exits_2(capsys, tmp_path, checkpoint):
    make_inputs(tmp_path, 1)
    manifest = write_manifest(tmp_path, ["image,audio", "face.png,c0.wav"])
    code, err = run_cli(capsys, "batch", str(manifest), "-m", str(checkpoint), "--dry-run")
    assert code == 0 and "would render 1 rows" in err
    assert not (tmp_path / "c0.mp4").exists() and not (tmp_path / "batch-report.json").exists()
    bad = write_manifest(tmp_path, ["image,audio,voice", "face.png,c0.wav,x"])
    code, err = run_cli(capsys, "batch", str(bad), "-m", str(checkpoint))
    assert code == 2 and "unknown column(s) 'voice'" in err


@pytest.mark.slow
def test_sigkill_mid_batch_then_rerun_finishes_the_rest(capsys, tmp_path, checkpoint):
    clips = 5
    make_inputs(tmp_path, clips, seconds=1.5)
    manifest = write_manifest(
        tmp_path, ["image,audio"] + [f"face.png,c{i}.wav" for i in range(clips)]
    )
    args = ["batch", str(manifest), "-m", str(checkpoint)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tmrender", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = sidecar_path(tmp_path / "c0.mp4")
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the batch never finished its first row"
    finished = {p.name for p in tmp_path.glob("c*.mp4") if sidecar_path(p).exists()}
    assert len(finished) < clips, "the batch ended before it could be killed"
    mtimes = {name: (tmp_path / name).stat().st_mtime_ns for name in finished}
    code, err = run_cli(capsys, *args)
    assert code == 0, err
    report = json.loads((tmp_path / "batch-report.json").read_text())
    by_name = {Path(row["output"]).name: row["status"] for row in report["rows"]}
    assert {n for n, s in by_name.items() if s == "skipped"} == finished
    assert {n for n, s in by_name.items() if s == "ok"} == {
        f"c{i}.mp4" for i in range(clips)
    } - finished
    assert all((tmp_path / n).stat().st_mtime_ns == t for n, t in mtimes.items())
    assert all(sidecar_path(tmp_path / f"c{i}.mp4").exists() for i in range(clips))
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_shards_cover_every_row_once_and_rank_0_merges(tmp_path, checkpoint, monkeypatch):
    make_inputs(tmp_path, 5, seconds=0.4)
    manifest = write_manifest(tmp_path, ["image,audio"] + [f"face.png,c{i}.wav" for i in range(5)])
    settings = BatchSettings(model=str(checkpoint), device="cpu", merge_timeout=30)
    # Rank 1 by hand, rank 0 from torchrun's environment variables.
    rank1 = execute_batch(prepare_batch(manifest, replace(settings, shard=Shard(1, 2))))
    assert [row["index"] for row in rank1["rows"]] == [1, 3]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    merged = execute_batch(prepare_batch(manifest, settings))
    assert [row["index"] for row in merged["rows"]] == [0, 1, 2, 3, 4]
    assert merged["totals"]["ok"] == 5 and merged["missing_ranks"] == []
    report = tmp_path / "batch-report.json"
    assert json.loads(report.read_text())["totals"]["ok"] == 5
    assert rank_report_path(report, 0).exists() and rank_report_path(report, 1).exists()
    assert len(list(tmp_path.glob("c*.mp4"))) == 5


@pytest.mark.slow
def test_two_worker_processes(tmp_path, checkpoint):
    make_inputs(tmp_path, 3, seconds=0.4)
    lines = ["image,audio"] + [f"face.png,c{i}.wav" for i in range(3)] + ["face.png,gone.wav"]
    manifest = write_manifest(tmp_path, lines)
    settings = BatchSettings(model=str(checkpoint), device="cpu", workers=2)
    report = execute_batch(prepare_batch(manifest, settings))
    assert [row["status"] for row in report["rows"]] == ["ok", "ok", "ok", "failed"]
    assert all(count_video_frames(tmp_path / f"c{i}.mp4") == 10 for i in range(3))


@pytest.mark.slow
def test_the_face_column_means_what_generate_face_means(capsys, tmp_path, checkpoint):
    from matplotlib import cbook

    from tmrender.media.video import iter_video_frames

    make_inputs(tmp_path, 1, seconds=0.4)
    hopper = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)  # 512x600, one face
    lines = [
        "image,audio,output,face",
        f"{hopper},c0.wav,photo.mp4,",
        f"{hopper},c0.wav,first.mp4,1",
        f"{hopper},c0.wav,second.mp4,2",
        f"{hopper},c0.wav,bad.mp4,left",
        "face.png,c0.wav,avatar.mp4,auto",
    ]
    manifest = write_manifest(tmp_path, lines)
    settings = BatchSettings(model=str(checkpoint), device="cpu")
    report = execute_batch(prepare_batch(manifest, settings))
    rows = report["rows"]
    assert [row["status"] for row in rows] == ["ok", "ok", "failed", "failed", "ok"]
    assert "face 2 asked for, but only 1 face found" in rows[2]["error"]
    assert "face must be auto or a face number" in rows[3]["error"]
    sizes = [next(iter(iter_video_frames(tmp_path / f"{n}.mp4", 2))).shape[1:] for n in
             ("photo", "first", "avatar")]  # fmt: skip
    assert sizes == [(600, 512, 3), (600, 512, 3), (128, 128, 3)]
