"""Synthetic speech: eSpeak NG through ctypes, pseudo-sentences, pauses, phoneme timing.

eSpeak NG comes as a shared library inside the `espeakng-loader` wheel; we drive it in
synchronous mode with phoneme events enabled. Each synthesized piece yields int16 PCM at
22050 Hz plus one event per phoneme whose `sample` field is the phoneme's start sample and
whose `id` union packs the phoneme mnemonic (up to 8 chars, stress marks first: "'oU").

A clip's speech is a sequence of short phrases in one voice, joined by real silence of
0.3-3 s, resampled to 16 kHz; every phoneme is returned with its [start, end) sample range
at 16 kHz. Texts are pseudo-sentences built from per-language syllable inventories written
here (no corpus is downloaded), so any seed gives new text that the language's rules read.

The engine is process-global state (one voice at a time), so each worker process owns one
`Engine`; nothing here is thread-safe.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tmrender.data.resample import resample
from tmrender.errors import UserInputError
from tmrender.media.audio import SAMPLE_RATE

# eSpeak NG API constants (speak_lib.h).
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000
CHARS_AUTO = 0
POS_CHARACTER = 1
EVENT_LIST_TERMINATED = 0
EVENT_PHONEME = 7
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4

PAUSE_PHONEMES = ("_", "_:", "_!", "_^_", "_|", "||", "|")
MIN_PAUSE_S, MAX_PAUSE_S = 0.3, 3.0


class _Event(ctypes.Structure):
    """espeak_EVENT; the `id` union is read as its 8-byte `string` member."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class Engine:
    """One initialised eSpeak NG library in this process: text + voice -> PCM and phoneme events."""

    def __init__(self, library: str | None = None):
        import espeakng_loader

        self.library = library or espeakng_loader.get_library_path()
        self._lib = ctypes.CDLL(self.library)
        self._lib.espeak_Initialize.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int
        ]  # fmt: skip
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        data = espeakng_loader.get_data_path().encode()
        options = INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT
        self.sample_rate = self._lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, options)
        if self.sample_rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise (data at {data.decode()})")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, bytes]] = []
        self._callback = _Callback(self._on_synth)  # keep a reference: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, n_samples, events) -> int:
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            if events[i].type == EVENT_PHONEME:
                self._events.append((events[i].sample, bytes(events[i].id)))
            i += 1
        if n_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, (n_samples,)).copy())
        return 0  # continue synthesis

    def set_voice(self, voice: Voice) -> None:
        """Select `voice` (name, rate, pitch, range) for the following `speak` calls."""
        if self._lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
            raise UserInputError(f"eSpeak NG has no voice {voice.espeak_name!r}")
        self._lib.espeak_SetParameter(PARAM_RATE, voice.rate, 0)
        self._lib.espeak_SetParameter(PARAM_PITCH, voice.pitch, 0)
        self._lib.espeak_SetParameter(PARAM_RANGE, voice.pitch_range, 0)

    def speak(self, text: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Synthesize `text`: int16 PCM at `sample_rate` (N,), and (start sample, mnemonic) events.

        eSpeak's noise sources (breath, jitter) are reseeded from the text, so the same text
        and voice give the same samples on every call.
        """
        self._chunks, self._events = [], []
        self._lib.espeak_ng_SetRandSeed(zlib.crc32(text.encode("utf-8")))
        data = text.encode("utf-8") + b"\0"
        buffer = ctypes.create_string_buffer(data, len(data))
        err = self._lib.espeak_Synth(buffer, len(data), 0, POS_CHARACTER, 0, CHARS_AUTO, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} on {text!r}")
        self._lib.espeak_Synchronize()
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        events = [
            (sample, raw.split(b"\0")[0].decode("utf-8", "replace")) for sample, raw in self._events
        ]
        return pcm, events

    def close(self) -> None:
        """Terminate eSpeak and unload this copy of the library."""
        import _ctypes

        self._lib.espeak_Terminate()
        _ctypes.dlclose(self._lib._handle)


_ENGINE: list[Engine] = []  # this process's engine, at most one
_PRIVATE_DIR: list[tempfile.TemporaryDirectory] = []


def engine() -> Engine:
    """This process's eSpeak NG engine (created on first use, after any fork)."""
    if not _ENGINE:
        _ENGINE.append(Engine())
    return _ENGINE[0]


def reset_engine() -> Engine:
    """Replace this process's engine by one with pristine internal state, and return it.

    eSpeak NG keeps hidden state between syntheses (the voice flutter phase, echo buffers), so
    the same text sounds a hair different on each call, and no API resets it; re-initialising
    does not either. A freshly loaded copy of the library does: we copy the .so to a private
    file (a new inode, so the loader maps it anew), load it and unload the previous one.
    """
    import espeakng_loader

    if _ENGINE:
        _ENGINE.pop().close()
    if not _PRIVATE_DIR:
        _PRIVATE_DIR.append(tempfile.TemporaryDirectory(prefix="tmrender-espeak-"))
    private = Path(_PRIVATE_DIR[0].name) / f"libespeak-ng-{os.getpid()}.so"
    private.unlink(missing_ok=True)
    shutil.copyfile(espeakng_loader.get_library_path(), private)
    _ENGINE.append(Engine(str(private)))
    return _ENGINE[0]


# -- voices --------------------------------------------------------------------------------

TRAIN_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "sv", "cs", "ro", "id", "sw")
TEST_LANGUAGES = ("fi", "hu", "tr")  # never spoken in the train split
TRAIN_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4", "Andy", "Annie", "Denis", "Lee",
    "Mario", "Michael", "adam", "anika", "aunty", "benjamin", "caleb", "david", "edward",
    "linda", "max", "paul", "rob", "steph", "travis", "victor", "zac",
)  # fmt: skip
TEST_VARIANTS = ("m6", "m7", "f5", "Alicia", "Gene", "norbert", "shelby", "quincy")


@dataclass(frozen=True)
class Voice:
    """An eSpeak NG voice: language + variant, rate (words/min), pitch and pitch range (0-100)."""

    language: str
    variant: str
    rate: int
    pitch: int
    pitch_range: int

    @property
    def espeak_name(self) -> str:
        return f"{self.language}+{self.variant}"


def split_voices(split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(languages, variants) a split may use; train and test share none of either."""
    if split == "train":
        return TRAIN_LANGUAGES, TRAIN_VARIANTS
    if split == "test":
        return TEST_LANGUAGES, TEST_VARIANTS
    raise UserInputError(f"unknown split {split!r}; choose train or test")


def sample_voice(rng: np.random.Generator, split: str) -> Voice:
    """A random voice of `split`: language, variant, rate 125-205 wpm, pitch 25-75, range 30-85."""
    languages, variants = split_voices(split)
    return Voice(
        language=str(rng.choice(languages)),
        variant=str(rng.choice(variants)),
        rate=int(rng.integers(125, 206)),
        pitch=int(rng.integers(25, 76)),
        pitch_range=int(rng.integers(30, 86)),
    )


DEFAULT_VOICE = "en+m3"
DEFAULT_RATE, DEFAULT_PITCH, DEFAULT_PITCH_RANGE = 160, 50, 55  # middles of sample_voice's ranges


def voice_names() -> list[str]:
    """Every LANGUAGE+VARIANT name of the project's voices (both splits), sorted."""
    names = []
    for split in ("train", "test"):
        languages, variants = split_voices(split)
        names += [f"{language}+{variant}" for language in languages for variant in variants]
    return sorted(names)


def named_voice(name: str, seed: int | None = None) -> Voice:
    """The voice called `name` ("en+m3", or a bare language "en" for its first variant).

    Rate, pitch and range are the middles of `sample_voice`'s ranges, or with `seed` drawn
    from those ranges as the corpus draws them. Raises UserInputError for unknown names.
    """
    language, _, variant = name.strip().partition("+")
    languages = TRAIN_LANGUAGES + TEST_LANGUAGES
    variants = TRAIN_VARIANTS + TEST_VARIANTS
    variant = variant or ("m1" if language in TRAIN_LANGUAGES else "m6")
    if language not in languages or variant not in variants:
        raise UserInputError(
            f"unknown voice {name!r}: use LANGUAGE+VARIANT, e.g. {DEFAULT_VOICE}; languages "
            f"{' '.join(languages)}; variants {' '.join(variants)}"
        )
    if seed is None:
        return Voice(language, variant, DEFAULT_RATE, DEFAULT_PITCH, DEFAULT_PITCH_RANGE)
    drawn = sample_voice(np.random.default_rng(seed), "train")
    return Voice(language, variant, drawn.rate, drawn.pitch, drawn.pitch_range)


def speak_text(text: str, voice: Voice, peak: float = 0.8) -> np.ndarray:
    """Speak `text` in `voice`: float32 (N,) at 16 kHz, scaled to `peak`.

    The engine is reset first, so the same text, voice and peak give identical samples.
    Raises UserInputError for empty text or text that eSpeak NG reads as silence.
    """
    if not text.strip():
        raise UserInputError("the text is empty: give some words to speak")
    reset_engine()
    audio, _ = speak_phrase(" ".join(text.split()), voice)
    loudest = float(np.abs(audio).max()) if audio.size else 0.0
    if loudest < 1e-3:
        raise UserInputError(f"eSpeak NG speaks no sound for {text!r}")
    return (audio * (peak / loudest)).astype(np.float32)


# -- text ----------------------------------------------------------------------------------

# Per-language inventories, written in each language's spelling: onsets | nuclei | codas | words.
# Pseudo-words are onset + nucleus (+ coda) syllables; short real function words glue them.
_INVENTORIES = {
    "en": (
        "b d f g h k l m n p r s t v w y th sh ch j bl br pl pr st tr fl gr|"
        "a e i o u ee oo ay ai ow ea|"
        "n m t d s k l r nd st ng p|"
        "the and a to of in is it we you"
    ),
    "de": (
        "b d f g h k l m n p r s t w z sch st sp br gr fr pf kl|"
        "a e i o u ei au eu ie ä ö ü|"
        "n m t s ch l r ng st ck|"
        "und der die das ist ein ich wir nicht mit"
    ),
    "fr": (
        "b d f g l m n p r s t v ch j br pl tr gr cr|"
        "a e i o u ou ai au é è on an|"
        "n r l s t|"
        "le la et un une de je nous pas est"
    ),
    "es": (
        "b d f g j l m n p r s t v ch ll br pl tr gr c|"
        "a e i o u ue ie ia|"
        "n s l r z|"
        "el la y un una de que es no por"
    ),
    "it": (
        "b d f g l m n p r s t v z ch gn br pr tr st|"
        "a e i o u ia io uo|"
        "n l r s|"
        "il la e un una di che non per sono"
    ),
    "pt": (
        "b d f g j l m n p r s t v ch lh nh br pr tr|"
        "a e i o u ão ei ou|"
        "s r l m|"
        "o a e um uma de que não com por"
    ),
    "nl": (
        "b d f g h k l m n p r s t v w z sch st br tr|"
        "a e i o u aa ee oo ij ui ou|"
        "n k t s l r ng|"
        "de het en een is ik wij niet met van"
    ),
    "pl": (
        "b d f g h k l m n p r s t w z sz cz rz dz ch pr tr st|"
        "a e i o u y ą ę ó|"
        "n k t m l r ch sz|"
        "i w na nie to jest się z że co"
    ),
    "sv": (
        "b d f g h k l m n p r s t v j sk st tr br|"
        "a e i o u y å ä ö|"
        "n k t s l r ng|"
        "och en ett är det jag inte på med som"
    ),
    "cs": (
        "b d f h k l m n p r s t v z č š ř ž ch pr tr st|"
        "a e i o u á é í ů y|"
        "n k t s l r|"
        "a je to na se v že ne jsem s"
    ),
    "ro": (
        "b d f g l m n p r s t v z ș ț c br pr tr st|"
        "a e i o u ă â î ea oa|"
        "n r l s t|"
        "și un o de la nu este că în pe"
    ),
    "id": (
        "b d g h j k l m n p r s t w y c ng ny|"
        "a e i o u ai au|"
        "n k t h l r ng|"
        "dan yang di ini itu ke tidak dengan saya kami"
    ),
    "sw": (
        "b d f g h j k l m n p s t v w y ch mb nd ng ny|"
        "a e i o u|"
        "-|"
        "na ya wa ni kwa la za katika hii sana"
    ),
    "fi": (
        "h j k l m n p r s t v|"
        "a e i o u y ä ö aa ee ii uu ai ei|"
        "n s t l r|"
        "ja on ei se hän me että kun mutta tämä"
    ),
    "hu": (
        "b d f g h j k l m n p r s t v z sz cs zs gy ny ty|"
        "a e i o u á é í ó ö ő ü|"
        "n k t s l r z|"
        "a az és egy nem van hogy is de ez"
    ),
    "tr": (
        "b c ç d f g h k l m n p r s ş t v y z|"
        "a e ı i o ö u ü|"
        "n k t s l r m z|"
        "ve bir bu da ne için ile çok gibi var"
    ),
}


@functools.cache
def _inventory(language: str) -> tuple[list[str], list[str], list[str], list[str]]:
    onsets, nuclei, codas, words = (part.split() for part in _INVENTORIES[language].split("|"))
    codas = [c for c in codas if c != "-"]
    return onsets, nuclei, codas, words


def pseudo_word(rng: np.random.Generator, language: str) -> str:
    """One pronounceable pseudo-word of 1-3 syllables in `language`'s spelling."""
    onsets, nuclei, codas, _ = _inventory(language)
    syllables = []
    for i in range(int(rng.choice([1, 2, 2, 3, 3]))):
        onset = str(rng.choice(onsets)) if (i > 0 or rng.random() < 0.85) else ""
        coda = str(rng.choice(codas)) if codas and rng.random() < 0.3 else ""
        syllables.append(onset + str(rng.choice(nuclei)) + coda)
    return "".join(syllables)


def pseudo_phrase(rng: np.random.Generator, language: str, n_words: int) -> str:
    """`n_words` words (mostly pseudo-words, some function words), ending in . , ? or !."""
    words = _inventory(language)[3]
    chosen = [
        str(rng.choice(words)) if rng.random() < 0.25 else pseudo_word(rng, language)
        for _ in range(n_words)
    ]
    chosen[0] = chosen[0].capitalize()
    return " ".join(chosen) + str(rng.choice([".", ".", ",", "?", "!"]))


# -- clip speech ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Phoneme:
    """One phoneme: eSpeak mnemonic (stress marks removed), [start, end) in 16 kHz samples."""

    name: str
    start: int
    end: int
    stress: int  # 2 primary ('), 1 secondary (,), 0 none

    @property
    def is_pause(self) -> bool:
        return self.name in PAUSE_PHONEMES or self.name.startswith("_")


@dataclass
class Speech:
    """A clip's audio, shape (N,) float32 at 16 kHz, its phonemes and the phrases spoken."""

    samples: np.ndarray
    phonemes: list[Phoneme]
    voice: Voice
    phrases: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, text)

    @property
    def text(self) -> str:
        return " ".join(text for _, _, text in self.phrases)


def parse_mnemonic(raw: str) -> tuple[str, int]:
    """Split an event mnemonic like "'oU" or ",a" into ("oU", stress 2 or 1 or 0)."""
    stress = 2 if "'" in raw else 1 if "," in raw else 0
    return raw.replace("'", "").replace(",", "").strip(), stress


def speak_phrase(text: str, voice: Voice) -> tuple[np.ndarray, list[Phoneme]]:
    """Synthesize one phrase: float32 (N,) at 16 kHz and its phonemes (16 kHz sample ranges)."""
    eng = engine()
    eng.set_voice(voice)
    pcm, events = eng.speak(text)
    ratio = SAMPLE_RATE / eng.sample_rate
    audio = resample(pcm.astype(np.float32) / 32768.0, eng.sample_rate, SAMPLE_RATE)
    starts = [min(int(round(sample * ratio)), audio.size) for sample, _ in events]
    phonemes = [Phoneme("_", 0, starts[0], 0)] if starts and starts[0] > 0 else []
    for i, (_, raw) in enumerate(events):
        end = starts[i + 1] if i + 1 < len(events) else audio.size
        name, stress = parse_mnemonic(raw)
        if name and end > starts[i]:
            phonemes.append(Phoneme(name, starts[i], end, stress))
    return audio, phonemes


def pause_samples(rng: np.random.Generator) -> int:
    """Length of one inserted pause: 0.3-3 s, short pauses more likely than long ones."""
    seconds = MIN_PAUSE_S + (MAX_PAUSE_S - MIN_PAUSE_S) * rng.random() ** 2
    return int(seconds * SAMPLE_RATE)


def make_speech(rng: np.random.Generator, voice: Voice, seconds: float) -> Speech:
    """Speech of exactly `seconds` (rounded to samples): phrases of 1-6 words joined by pauses.

    Starts with 0-1 s of silence, adds phrase, pause, phrase, ... while they fit, and pads the
    end with silence. The eSpeak engine is reset first, so the result depends only on `rng`
    and `voice`. Silence is inserted as samples, and pauses become "_" phonemes, so the
    phoneme list covers the whole clip without gaps.
    """
    total = int(round(seconds * SAMPLE_RATE))
    if total <= 0:
        raise UserInputError(f"--seconds must be positive, got {seconds}")
    reset_engine()  # identical engine state for every clip: byte-identical audio per seed
    gain = float(rng.uniform(0.45, 0.95))
    pieces: list[np.ndarray] = []
    phonemes: list[Phoneme] = []
    phrases: list[tuple[int, int, str]] = []
    cursor = _append_silence(pieces, phonemes, 0, int(rng.uniform(0.0, 1.0) * SAMPLE_RATE), total)
    failures = 0
    while cursor < total and failures < 3:
        text = pseudo_phrase(rng, voice.language, int(rng.integers(1, 7)))
        audio, spoken = speak_phrase(text, voice)
        if cursor + audio.size > total:
            failures += 1  # too long for the space left: try a shorter phrase
            continue
        peak = float(np.abs(audio).max()) or 1.0
        pieces.append(audio * (gain / peak))
        phonemes += [Phoneme(p.name, p.start + cursor, p.end + cursor, p.stress) for p in spoken]
        phrases.append((cursor, cursor + audio.size, text))
        cursor += audio.size
        cursor = _append_silence(pieces, phonemes, cursor, pause_samples(rng), total)
    _append_silence(pieces, phonemes, cursor, total - cursor, total)
    samples = np.concatenate(pieces).astype(np.float32)
    samples += rng.normal(0.0, 2e-4, samples.size).astype(np.float32)  # faint room noise
    return Speech(samples=samples, phonemes=_merge_pauses(phonemes), voice=voice, phrases=phrases)


def _append_silence(pieces, phonemes, cursor: int, length: int, total: int) -> int:
    length = max(0, min(length, total - cursor))
    if length:
        pieces.append(np.zeros(length, np.float32))
        phonemes.append(Phoneme("_", cursor, cursor + length, 0))
    return cursor + length


def _merge_pauses(phonemes: list[Phoneme]) -> list[Phoneme]:
    """Join neighbouring pause phonemes into one "_" so that pauses read as one segment."""
    merged: list[Phoneme] = []
    for p in phonemes:
        if p.is_pause and merged and merged[-1].is_pause and merged[-1].end >= p.start:
            merged[-1] = Phoneme("_", merged[-1].start, max(p.end, merged[-1].end), 0)
        else:
            merged.append(Phoneme("_", p.start, p.end, 0) if p.is_pause else p)
    return merged
