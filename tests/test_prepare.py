"""`tmrender prepare`: real videos -> corpus clips (frame timing, audio length, boxes, voice
activity, read-back, bad files skipped with exit 3, nothing partial left behind)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tmrender.cli import main
from tmrender.data import prepare
from tmrender.data.corpus import list_clips, read_clip
from tmrender.media.ffmpeg import run_ffmpeg
from tmrender.media.image import CropBox

SIZE = 64
# 160x120 at 30 fps, 1.5 s, lossless: black outside the square x 40..119, y 20..99, which
# is grey level 60 + 3 k on source frame k; a 440 Hz tone from 0.61 s (silence before).
CODED_BOX = [40, 10, 120, 110]  # its sidecar face box: 80 x 100, centre square = the grey square


def make_video(path: Path, video: str, audio: str | None, *codec: str) -> Path:
    """Write `path` from lavfi sources (video filter graph, optional audio graph)."""
    inputs = ["-f", "lavfi", "-i", video]
    if audio is not None:
        inputs += ["-f", "lavfi", "-i", audio]
    run_ffmpeg([*inputs, *codec, "-y", str(path)], what=f"cannot make {path.name}")
    return path


H264_AAC = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """The good source videos, each made once (see the module constants)."""
    root = tmp_path_factory.mktemp("sources")
    inside = "gte(X,40)*lt(X,120)*gte(Y,20)*lt(Y,100)"
    grey = f"if({inside},60+3*N,0)"
    coded = make_video(
        root / "coded30.mkv",
        f"color=size=160x120:rate=30:duration=1.5,format=rgb24,geq=r='{grey}':g='{grey}':b='{grey}'",
        "sine=frequency=440:sample_rate=44100:duration=1.5,volume=enable='lt(t,0.61)':volume=0",
        "-c:v", "ffv1", "-pix_fmt", "bgr0", "-c:a", "pcm_s16le",
    )  # fmt: skip
    (root / "coded30.json").write_text(json.dumps({"face": CODED_BOX}))
    talk24 = make_video(
        root / "talk24.mp4",
        "testsrc=size=96x96:rate=24:duration=1",
        "sine=frequency=300:sample_rate=22050:duration=1",
        *H264_AAC,
    )
    short = make_video(  # the video stream ends at 0.6 s, the audio at 1.5 s
        root / "short.mkv",
        "testsrc=size=64x48:rate=25:duration=0.6",
        "sine=frequency=300:sample_rate=16000:duration=1.5",
        *H264_AAC,
    )
    silent = make_video(
        root / "silent.mp4", "testsrc=size=64x64:rate=25:duration=0.5", None, *H264_AAC[:6]
    )
    voice = make_video(
        root / "voice.wav", "sine=frequency=300:sample_rate=16000:duration=0.5", None
    )
    return {"coded": coded, "talk24": talk24, "short": short, "silent": silent, "voice": voice}


def folder_of(tmp_path: Path, *videos: Path) -> Path:
    """A videos folder holding copies of `videos` (and their sidecars)."""
    folder = tmp_path / "videos"
    folder.mkdir(exist_ok=True)
    for video in videos:
        for path in (video, *prepare.sidecar_paths(video)):
            if path.exists():
                shutil.copy(path, folder / path.name)
    return folder


def hidden_entries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*")]


def run(*args) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


# -- pure pieces -----------------------------------------------------------------------------


def test_output_frames_show_the_source_frame_at_their_centre():
    assert prepare.source_frame_indices(6, 30.0).tolist() == [0, 1, 3, 4, 5, 6]
    slow = prepare.source_frame_indices(25, 24.0)  # one second: one source frame shown twice
    assert sorted(set(slow.tolist())) == list(range(24)) and slow[12] == slow[13] == 12
    assert prepare.source_frame_indices(3, 25.0).tolist() == [0, 1, 2]


def test_boxes_map_through_the_centre_square_and_clip():
    face = prepare.box_from_corners(CODED_BOX, "face")
    mapping = prepare.FrameMapping.centre_square(face, SIZE)
    assert mapping.rect == (40.0, 20.0, 120.0, 100.0)
    boxes = prepare.clip_boxes(mapping, face, frames=3)
    assert boxes.shape == (3, 2, 4) and boxes.dtype == np.int32
    # face: (0, -8, 64, 72) clipped; mouth: x 62.4..97.6, y 72..100 source -> x0.8 output
    assert boxes[0, 1].tolist() == [0, 0, 64, 64]
    assert boxes[2, 0].tolist() == [17, 41, 47, 64]


def test_clip_ids_are_unique_and_safe(tmp_path):
    names = ["a b.mp4", "a b.mkv", "sub/x.mp4", ".y.mp4"]
    paths = [tmp_path / n for n in names]
    assert prepare.clip_ids(paths, tmp_path) == ["a_b", "a_b-mkv", "sub-x", "y"]


def test_silence_segments_use_the_renderers_threshold():
    tone = 0.1 * np.sin(np.arange(640 * 4) * 0.3).astype(np.float32)
    audio = np.concatenate([np.zeros(640 * 3, np.float32), tone, np.zeros(100, np.float32)])
    assert prepare.silence_segments(audio, frames=8) == [[0, 3], [7, 8]]


# -- whole clips -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(sources, tmp_path_factory) -> Path:
    """The coded, 24 fps and short videos prepared at 64 px with npy frames."""
    tmp = tmp_path_factory.mktemp("prepared")
    videos = folder_of(tmp, sources["coded"], sources["talk24"], sources["short"])
    opts = prepare.PrepareOptions(out=tmp / "corpus", size=SIZE, frame_format="npy", face="whole")
    results = prepare.prepare_corpus(videos, opts)
    assert [r.error for r in results] == [None] * 3
    return opts.out


def test_frames_are_resampled_to_25_fps_and_cropped_to_the_face(prepared):
    clip = read_clip(prepared / "train" / "coded30")
    # 1.5 s at 30 fps: output frame 37 would need source frame 45, past the end
    assert clip.frames.shape == (37, SIZE, SIZE, 3)
    expected = 60 + 3 * prepare.source_frame_indices(37, 30.0)
    centre = clip.frames[:, 8:-8, 8:-8].reshape(37, -1).astype(int)
    assert np.abs(centre - expected[:, None]).max() <= 1
    assert clip.meta["face_box"] == {"from": "sidecar", "source_pixels": CODED_BOX}
    assert clip.boxes[0].tolist() == [[17, 41, 47, 64], [0, 0, 64, 64]]


def test_audio_is_16k_mono_and_matches_the_frames(prepared):
    coded = read_clip(prepared / "train" / "coded30")
    assert coded.audio.size == 37 * 640  # cut with the video: T = ceil(N * 25 / 16000)
    talk = read_clip(prepared / "train" / "talk24")
    assert talk.frames.shape[0] == 25 and talk.audio.size == 16_000
    short = read_clip(prepared / "train" / "short")
    assert short.frames.shape[0] == 15 and short.audio.size == 15 * 640
    for clip in (coded, talk, short):
        assert clip.meta["frames"] == -(-clip.audio.size * 25 // 16_000) == len(clip.frames)


def test_silence_comes_from_voice_activity(prepared):
    meta = read_clip(prepared / "train" / "coded30").meta
    assert meta["silence"] == [[0, 15]]  # the tone starts at 0.61 s, in frame 15
    assert read_clip(prepared / "train" / "talk24").meta["silence"] == []


def test_clips_say_there_is_no_truth(prepared):
    clip = read_clip(prepared / "train" / "talk24")
    assert clip.mouth.shape == (25, 7) and np.isnan(clip.mouth).all()
    assert clip.pose.shape == (25, 7) and np.isnan(clip.pose).all()
    assert clip.meta["truth"] is False and clip.meta["mouth_box"]["estimated"] is True
    assert "phonemes" not in clip.meta
    assert clip.meta["face_box"]["from"] == "whole frame"
    assert clip.boxes[0].tolist() == [[17, 39, 47, 58], [0, 0, 64, 64]]
    assert [p.name for p in list_clips(prepared, "train")] == ["coded30", "short", "talk24"]
    assert hidden_entries(prepared) == []


def test_crop_applies_to_videos_without_a_sidecar(sources, tmp_path):
    videos = folder_of(tmp_path, sources["coded"], sources["talk24"])
    opts = prepare.PrepareOptions(out=tmp_path / "corpus", size=32, crop=CropBox.parse("8,8,80,80"))
    prepare.prepare_corpus(videos, opts)
    talk = read_clip(opts.out / "train" / "talk24")  # mp4 frames, decoded back
    assert talk.frames.shape == (25, 32, 32, 3)
    assert talk.meta["face_box"] == {"from": "--crop", "source_pixels": [8, 8, 88, 88]}
    assert read_clip(opts.out / "train" / "coded30").meta["face_box"]["from"] == "sidecar"


def test_the_training_readers_accept_a_prepared_clip(sources, tmp_path):
    import torch

    from tests.conftest import tiny_model_config
    from tmrender.models.talking import TalkingModel
    from tmrender.train import latents, vae

    videos = folder_of(tmp_path, sources["talk24"])
    opts = prepare.PrepareOptions(
        out=tmp_path / "corpus", size=32, frame_format="npy", face="whole"
    )
    prepare.prepare_corpus(videos, opts)
    clips = list_clips(opts.out, "train")
    cache = vae.load_frames(clips, workers=1)
    assert cache.frames.shape == (25, 3, 32, 32) and torch.isnan(cache.opening).all()
    torch.manual_seed(0)
    entry = latents.encode_clip(TalkingModel(tiny_model_config()).eval(), clips[0], 2)
    assert entry["latents"].shape[0] == 7 and torch.isfinite(entry["latents"]).all()
    assert entry["boxes"].shape == (7, 2, 4)


# -- bad files, exit codes, nothing partial --------------------------------------------------


def test_bad_files_are_skipped_with_exit_3(sources, tmp_path, capsys):
    videos = folder_of(tmp_path, sources["talk24"], sources["silent"], sources["voice"])
    (videos / "junk.mp4").write_text("not a video\n" * 10)
    (videos / "empty.mov").write_bytes(b"")
    shutil.copy(sources["talk24"], videos / "badjson.mp4")
    (videos / "badjson.json").write_text("{not json")
    shutil.copy(sources["talk24"], videos / "outside.mp4")
    (videos / "outside.mp4.json").write_text(json.dumps({"face": [0, 0, 97, 50]}))
    out = tmp_path / "corpus"
    assert (
        run(
            "prepare", "--videos", str(videos), "--out", str(out), "--size", "32", "--face", "whole"
        )
        == 3
    )
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if line.startswith("warning: skipped: ")]
    assert len(skipped) == 6, err
    assert "outside the 96x96 frame" in err and "badjson.json cannot be read" in err
    assert "has no audio stream" in err and "has no video stream" in err
    assert sorted(p.name for p in (out / "train").iterdir()) == ["index.json", "talk24"]
    assert [r["id"] for r in json.loads((out / "train" / "index.json").read_text())] == ["talk24"]
    assert hidden_entries(out) == []


def test_no_usable_file_or_bad_options_exit_2(sources, tmp_path, capsys):
    videos = folder_of(tmp_path, sources["voice"])
    out = tmp_path / "corpus"
    assert run("prepare", "--videos", str(videos), "--out", str(out)) == 2
    assert "none of the 1 files" in capsys.readouterr().err
    assert not (out / "train" / "index.json").exists()
    assert run("prepare", "--videos", str(tmp_path / "nope"), "--out", str(out)) == 2
    assert run("prepare", "--videos", str(videos), "--out", str(out), "--split", "dev") == 2
    assert run("prepare", "--videos", str(videos), "--out", str(out), "--crop", "1,2") == 2
    assert "error: --crop must be x,y,w,h" in capsys.readouterr().err
    assert run("prepare", "--videos", str(videos), "--out", str(out), "--face", "box") == 2
    assert "error: --face must be one of track, whole" in capsys.readouterr().err


def test_a_video_without_a_face_is_skipped_when_tracking(sources, tmp_path, capsys):
    videos = folder_of(tmp_path, sources["talk24"])
    out = tmp_path / "corpus"
    assert run("prepare", "--videos", str(videos), "--out", str(out)) == 2
    assert "no face found in the first frame" in capsys.readouterr().err


def test_an_interrupted_clip_leaves_nothing_and_keeps_the_old_one(sources, tmp_path, monkeypatch):
    videos = folder_of(tmp_path, sources["talk24"])
    opts = prepare.PrepareOptions(out=tmp_path / "corpus", size=32, face="whole")
    prepare.prepare_corpus(videos, opts)
    folder = opts.out / "train" / "talk24"
    before = (folder / "meta.json").read_bytes()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "clip_meta", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_corpus(videos, opts)
    assert (folder / "meta.json").read_bytes() == before
    assert hidden_entries(opts.out) == []
