"""Corpus: byte-identical clips per seed, on-disk format, reader, disjoint splits, parallel."""

import json

import numpy as np
import pytest

from tmrender.data import corpus, speech, visemes
from tmrender.errors import UserInputError
from tmrender.media.audio import frames_for_samples


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    corpus.generate_corpus(
        root, "train", clips=2, seconds=2.0, seed=11, size=48, frame_format="npy"
    )
    return root


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_clips_with_any_worker_count(small_corpus, tmp_path):
    corpus.generate_corpus(
        tmp_path, "train", clips=2, seconds=2.0, seed=11, size=48, workers=2, frame_format="npy"
    )
    assert files_of(small_corpus / "train") == files_of(tmp_path / "train")


def test_other_seed_gives_other_clips(small_corpus, tmp_path):
    corpus.generate_corpus(
        tmp_path, "train", clips=1, seconds=2.0, seed=12, size=48, frame_format="npy"
    )
    a = (small_corpus / "train" / "train-11-00000" / "audio.wav").read_bytes()
    b = (tmp_path / "train" / "train-12-00000" / "audio.wav").read_bytes()
    assert a != b


def test_clip_format_and_reader(small_corpus):
    paths = corpus.list_clips(small_corpus, "train")
    assert [p.name for p in paths] == ["train-11-00000", "train-11-00001"]
    clip = corpus.read_clip(paths[0])
    n = clip.audio.size
    t = frames_for_samples(n, 25)
    assert n == 32000 and clip.audio.dtype == np.float32
    assert clip.frames.shape == (t, 48, 48, 3) and clip.frames.dtype == np.uint8
    assert clip.mouth.shape == (t, len(visemes.PARAMS)) and clip.pose.shape == (t, 7)
    assert clip.boxes.shape == (t, 2, 4) and clip.mouth_boxes.shape == (t, 4)
    assert clip.mouth.min() >= 0 and clip.mouth.max() <= 1
    meta = clip.meta
    assert meta["frames"] == t and meta["mouth_columns"] == list(visemes.PARAMS)
    assert (
        meta["language"] in speech.TRAIN_LANGUAGES
        and meta["voice"]["variant"] in speech.TRAIN_VARIANTS
    )
    phonemes = meta["phonemes"]
    assert phonemes[0][1] == 0 and phonemes[-1][2] == n
    assert all(a[2] <= b[1] for a, b in zip(phonemes, phonemes[1:], strict=False))
    index = json.loads((small_corpus / "train" / "index.json").read_text())
    assert [row["id"] for row in index] == [p.name for p in paths]


def test_ground_truth_matches_the_audio(small_corpus):
    for path in corpus.list_clips(small_corpus, "train"):
        clip = corpus.read_clip(path)
        t = len(clip.mouth)
        centres = (np.arange(t) + 0.5) * 640
        for name, start, end, _ in clip.meta["phonemes"]:
            inside = (centres >= start) & (centres < end)
            if visemes.is_bilabial(name):
                assert np.all(clip.mouth[inside, visemes.OPEN] == 0)
            if name == "_" and end - start > 0.6 * 16000:
                deep = (centres >= start + 4000) & (centres < end - 4000)
                assert clip.mouth[deep, visemes.OPEN].max(initial=0) < 0.05
                assert np.abs(clip.audio[start + 4000 : end - 4000]).max(initial=0) < 0.01


def test_test_split_uses_held_out_languages_and_voices(tmp_path):
    for i in range(6):
        rng = corpus.ClipSpec("test", 0, i, 1.0).rng()
        voice = speech.sample_voice(rng, "test")
        assert voice.language in speech.TEST_LANGUAGES and voice.variant in speech.TEST_VARIANTS
    train = corpus.ClipSpec("train", 5, 0, 1.0).rng().random(4)
    test = corpus.ClipSpec("test", 5, 0, 1.0).rng().random(4)
    assert not np.allclose(train, test)  # same seed, other split: another random stream


def test_mp4_frames_read_back_close_to_the_drawing(tmp_path):
    spec = corpus.ClipSpec("test", 3, 0, 1.0, 64)
    clip = corpus.make_clip(spec)
    corpus.write_clip(clip, tmp_path / spec.clip_id, "mp4")
    back = corpus.read_clip(tmp_path / spec.clip_id)
    assert back.frames.shape == clip.frames.shape
    mse = np.mean((back.frames.astype(float) - clip.frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="--split"):
        corpus.generate_corpus(tmp_path, "dev", clips=1, seconds=1.0)
    with pytest.raises(UserInputError, match="--clips"):
        corpus.generate_corpus(tmp_path, "train", clips=0, seconds=1.0)
    with pytest.raises(UserInputError, match="no train split"):
        corpus.list_clips(tmp_path / "nothing", "train")
    with pytest.raises(UserInputError, match="not a clip folder"):
        corpus.read_clip(tmp_path)
