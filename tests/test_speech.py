"""eSpeak NG speech: resampling, phoneme timing against the audio, pauses, voices, determinism."""

import numpy as np
import pytest

from tmrender.data import speech
from tmrender.data.resample import resample
from tmrender.data.visemes import is_vowel
from tmrender.media.audio import SAMPLE_RATE


def test_resample_keeps_a_tone_and_the_length():
    t = np.arange(22050) / 22050
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(tone, 22050, 16000)
    assert out.shape == (16000,)
    ref = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(out[50:-50] - ref[50:-50]).max() < 1e-3


def test_resample_removes_what_16k_cannot_hold():
    t = np.arange(22050) / 22050
    out = resample(np.sin(2 * np.pi * 9500 * t).astype(np.float32), 22050, 16000)
    assert np.abs(out[50:-50]).max() < 0.02


def test_parse_mnemonic_reads_stress_marks():
    assert speech.parse_mnemonic("'oU") == ("oU", 2)
    assert speech.parse_mnemonic(",a") == ("a", 1)
    assert speech.parse_mnemonic("n") == ("n", 0)


def test_vowels_fall_on_audio_energy():
    voice = speech.Voice("en", "m3", 160, 50, 50)
    audio, phonemes = speech.speak_phrase("Mama saw two big blue boats.", voice)
    peak = np.abs(audio).max()
    vowels = [p for p in phonemes if is_vowel(p.name) and p.end - p.start > 480]
    assert len(vowels) >= 6
    for p in vowels:
        rms = np.sqrt(np.mean(audio[p.start : p.end] ** 2))
        assert rms > 0.05 * peak, f"vowel {p.name} at {p.start} is silent"
    starts = [p.start for p in phonemes]
    assert starts == sorted(starts) and phonemes[-1].end == audio.size


def test_clip_speech_is_exact_length_with_real_pauses():
    rng = np.random.default_rng(5)
    voice = speech.sample_voice(rng, "train")
    spoken = speech.make_speech(rng, voice, 8.0)
    assert spoken.samples.shape == (8 * SAMPLE_RATE,) and spoken.samples.dtype == np.float32
    pauses = [p for p in spoken.phonemes if p.is_pause and p.end - p.start >= 0.3 * SAMPLE_RATE]
    assert pauses, "no pause of 0.3 s or more"
    for p in pauses:
        inner = spoken.samples[p.start + 1600 : p.end - 1600]
        assert inner.size == 0 or np.abs(inner).max() < 0.01
    assert np.abs(spoken.samples).max() > 0.3
    assert spoken.phonemes[0].start == 0 and spoken.phonemes[-1].end == spoken.samples.size


def test_speech_is_deterministic():
    voice = speech.Voice("de", "f2", 150, 40, 60)
    a = speech.make_speech(np.random.default_rng(1), voice, 3.0)
    b = speech.make_speech(np.random.default_rng(1), voice, 3.0)
    assert np.array_equal(a.samples, b.samples) and a.phonemes == b.phonemes and a.text == b.text


def test_splits_share_no_language_or_voice():
    train_lang, train_var = speech.split_voices("train")
    test_lang, test_var = speech.split_voices("test")
    assert len(train_lang) + len(test_lang) >= 10 and len(test_lang) >= 2
    assert not set(train_lang) & set(test_lang) and not set(train_var) & set(test_var)
    rng = np.random.default_rng(0)
    voices = [speech.sample_voice(rng, "test") for _ in range(20)]
    assert all(v.language in test_lang and v.variant in test_var for v in voices)
    with pytest.raises(speech.UserInputError):
        speech.split_voices("valid")


@pytest.mark.parametrize("language", speech.TRAIN_LANGUAGES + speech.TEST_LANGUAGES)
def test_every_language_speaks(language):
    rng = np.random.default_rng(2)
    audio, phonemes = speech.speak_phrase(
        speech.pseudo_phrase(rng, language, 3), speech.Voice(language, "m1", 170, 50, 50)
    )
    assert audio.size > 0.3 * SAMPLE_RATE and sum(is_vowel(p.name) for p in phonemes) >= 2
