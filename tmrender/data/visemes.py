"""Visemes: eSpeak NG phonemes -> mouth parameters per video frame, with coarticulation.

Mouth parameters, the columns of a clip's `mouth.npy` (all in [0, 1]):

=====  ==========  ================================================================
index  name        meaning
=====  ==========  ================================================================
0      jaw         jaw opening (0 closed teeth, 1 widest "a")
1      width       lip width (0 narrow/pursed, 0.5 neutral, 1 spread "i")
2      round       lip rounding and protrusion ("u", "o", "w")
3      close       lip closure (1 = lips pressed: bilabials p, b, m, and rest)
4      teeth       lower lip against the upper teeth (labiodentals f, v)
5      tongue      tongue visible between the teeth (th, l, t, n)
6      open        visible opening of the lips, derived: `opening(jaw, close, teeth)`
=====  ==========  ================================================================

Coarticulation follows the dominance model of Cohen and Massaro (1993): every phoneme has a
target and a dominance that is highest inside the phoneme and decays with the time to it,
faster for release (after the phoneme) than for anticipation (before it); a frame's value is
the dominance-weighted mean of all targets. Vowels reach 110 ms ahead and 70 ms behind,
consonants 66 ms and 42 ms on most parameters; on the one articulator that defines them
(lip closure for p/b/m, lip-teeth contact for f/v, tongue for th, rounding for w/sh) they
dominate strongly but briefly (33 ms ahead, 21 ms behind), so "mama" still opens on its
"a". Bilabial stops then seal the lips exactly: every frame whose centre lies inside p, b
or m has `close = 1` and so `open = 0`.

Frames are sampled at their centres: frame i covers samples [640 i, 640 (i + 1)) at 16 kHz.
"""

from __future__ import annotations

import functools

import numpy as np

from tmrender.data.speech import Phoneme
from tmrender.media.audio import SAMPLE_RATE

FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
PARAMS = ("jaw", "width", "round", "close", "teeth", "tongue", "open")
JAW, WIDTH, ROUND, CLOSE, TEETH, TONGUE, OPEN = range(len(PARAMS))
N_TARGETS = 6  # the first six are targets; `open` is derived

ANTICIPATION_S = 0.11  # a vowel's dominance decays to 1/e this long before it
RELEASE_S = 0.07  # and this long after it
CONSONANT_REACH = 0.6  # consonants reach less far: 66 ms ahead, 42 ms behind
DOMINANCE_POWER = 1.5
BILABIALS = frozenset({"p", "b", "m", "m-", "pF", "B"})

# target (jaw, width, round, close, teeth, tongue), dominance weight
_V = 1.0  # vowels
_C = 0.45  # ordinary consonants: they lend the jaw to the vowels around them
REST = (0.0, 0.5, 0.0, 1.0, 0.0, 0.0)
_TABLE: dict[str, tuple[tuple[float, ...], float]] = {
    # open vowels
    "a": ((0.95, 0.62, 0.0, 0.0, 0.0, 0.0), _V),
    "A": ((1.00, 0.55, 0.05, 0.0, 0.0, 0.0), _V),
    "&": ((0.85, 0.70, 0.0, 0.0, 0.0, 0.0), _V),
    "V": ((0.75, 0.55, 0.0, 0.0, 0.0, 0.0), _V),
    "0": ((0.80, 0.40, 0.45, 0.0, 0.0, 0.0), _V),
    "Q": ((0.80, 0.40, 0.45, 0.0, 0.0, 0.0), _V),
    # mid vowels
    "E": ((0.65, 0.68, 0.0, 0.0, 0.0, 0.0), _V),
    "e": ((0.45, 0.78, 0.0, 0.0, 0.0, 0.0), _V),
    "@": ((0.40, 0.52, 0.05, 0.0, 0.0, 0.0), _V * 0.7),
    "3": ((0.45, 0.52, 0.10, 0.0, 0.0, 0.0), _V),
    "O": ((0.65, 0.32, 0.65, 0.0, 0.0, 0.0), _V),
    "o": ((0.45, 0.22, 0.80, 0.0, 0.0, 0.0), _V),
    "2": ((0.40, 0.28, 0.70, 0.0, 0.0, 0.0), _V),
    "9": ((0.55, 0.32, 0.60, 0.0, 0.0, 0.0), _V),
    "8": ((0.45, 0.35, 0.50, 0.0, 0.0, 0.0), _V),
    # close vowels
    "i": ((0.20, 0.98, 0.0, 0.0, 0.0, 0.0), _V),
    "I": ((0.28, 0.85, 0.0, 0.0, 0.0, 0.0), _V),
    "1": ((0.25, 0.70, 0.0, 0.0, 0.0, 0.0), _V),
    "y": ((0.20, 0.15, 0.90, 0.0, 0.0, 0.0), _V),
    "Y": ((0.28, 0.25, 0.75, 0.0, 0.0, 0.0), _V),
    "u": ((0.20, 0.08, 1.00, 0.0, 0.0, 0.0), _V),
    "U": ((0.30, 0.20, 0.75, 0.0, 0.0, 0.0), _V),
    "M": ((0.22, 0.70, 0.0, 0.0, 0.0, 0.0), _V),
    "W": ((0.45, 0.30, 0.60, 0.0, 0.0, 0.0), _V),
    # bilabials: dominant on closure so that the lips always seal
    "p": ((0.08, 0.50, 0.05, 1.0, 0.0, 0.0), 2.0),
    "b": ((0.08, 0.50, 0.05, 1.0, 0.0, 0.0), 2.0),
    "m": ((0.06, 0.50, 0.05, 1.0, 0.0, 0.0), 2.0),
    "B": ((0.10, 0.50, 0.15, 0.85, 0.0, 0.0), 2.0),
    # labiodentals
    "f": ((0.14, 0.55, 0.0, 0.0, 1.0, 0.0), 2.5),
    "v": ((0.14, 0.55, 0.0, 0.0, 1.0, 0.0), 2.5),
    "F": ((0.14, 0.55, 0.0, 0.0, 1.0, 0.0), 2.5),
    # dentals and alveolars
    "T": ((0.25, 0.58, 0.0, 0.0, 0.0, 1.0), 1.5),
    "D": ((0.25, 0.58, 0.0, 0.0, 0.0, 1.0), 1.5),
    "l": ((0.32, 0.58, 0.0, 0.0, 0.0, 0.7), _C),
    "L": ((0.30, 0.60, 0.0, 0.0, 0.0, 0.5), _C),
    "t": ((0.20, 0.60, 0.0, 0.0, 0.0, 0.35), _C),
    "d": ((0.22, 0.60, 0.0, 0.0, 0.0, 0.35), _C),
    "n": ((0.22, 0.58, 0.0, 0.0, 0.0, 0.35), _C),
    "s": ((0.10, 0.72, 0.0, 0.0, 0.0, 0.0), 1.2),
    "z": ((0.10, 0.72, 0.0, 0.0, 0.0, 0.0), 1.2),
    "r": ((0.28, 0.45, 0.25, 0.0, 0.0, 0.2), _C),
    "*": ((0.28, 0.50, 0.10, 0.0, 0.0, 0.3), _C * 0.7),
    # postalveolars and palatals: pouted lips
    "S": ((0.16, 0.30, 0.60, 0.0, 0.0, 0.0), 1.2),
    "Z": ((0.16, 0.30, 0.60, 0.0, 0.0, 0.0), 1.2),
    "C": ((0.15, 0.75, 0.0, 0.0, 0.0, 0.0), _C),
    "j": ((0.20, 0.80, 0.0, 0.0, 0.0, 0.0), _C),
    "J": ((0.22, 0.70, 0.0, 0.0, 0.0, 0.2), _C),
    "c": ((0.22, 0.65, 0.0, 0.0, 0.0, 0.0), _C),
    # velars, uvulars, glottals: the jaw follows the vowels
    "k": ((0.28, 0.55, 0.0, 0.0, 0.0, 0.0), _C * 0.7),
    "g": ((0.28, 0.55, 0.0, 0.0, 0.0, 0.0), _C * 0.7),
    "N": ((0.25, 0.55, 0.0, 0.0, 0.0, 0.0), _C * 0.7),
    "x": ((0.28, 0.50, 0.0, 0.0, 0.0, 0.0), _C * 0.7),
    "X": ((0.30, 0.50, 0.0, 0.0, 0.0, 0.0), _C * 0.7),
    "R": ((0.30, 0.48, 0.15, 0.0, 0.0, 0.0), _C * 0.7),
    "h": ((0.35, 0.55, 0.0, 0.0, 0.0, 0.0), 0.2),
    "?": ((0.20, 0.55, 0.0, 0.0, 0.0, 0.0), 0.3),
    # approximants with lip rounding
    "w": ((0.15, 0.08, 1.00, 0.0, 0.0, 0.0), 1.5),
    "_": (REST, 0.5),
}
_MODIFIERS = ":;#-~^!2345679=`'\","  # suffixes and marks eSpeak appends to a base phoneme
_NEUTRAL = ((0.25, 0.55, 0.0, 0.0, 0.0, 0.0), 0.3)


def opening(jaw: np.ndarray, close: np.ndarray, teeth: np.ndarray) -> np.ndarray:
    """Visible lip opening in [0, 1] from jaw, closure and labiodental contact (any shape)."""
    return np.clip(jaw * (1.0 - close) * (1.0 - 0.8 * teeth), 0.0, 1.0)


@functools.cache
def targets(name: str) -> tuple[tuple[tuple[float, ...], float], ...]:
    """Targets of an eSpeak mnemonic as a sequence (two for diphthongs), each (target, weight).

    Lookup order: the name itself; the name without modifier marks (":", "~", "#", ...);
    a split into two known vowels ("aI", "oU", "&U~"); the first character; a neutral target.
    """
    if name.startswith("_") or name.startswith("(") or name in ("|", "||"):
        return (_TABLE["_"],)
    if name in _TABLE:
        return (_TABLE[name],)
    base = name.rstrip(_MODIFIERS) or name[0]
    if base in _TABLE:
        return (_TABLE[base],)
    core = "".join(ch for ch in base if ch not in _MODIFIERS)
    if len(core) >= 2 and core[0] in _TABLE and core[1:] in _TABLE:
        first, second = _TABLE[core[0]], _TABLE[core[1:]]
        if first[1] == _V and second[1] in (_V, _V * 0.7):
            return (first, second)  # diphthong: glide from the first vowel to the second
    if core and core[0] in _TABLE:
        return (_TABLE[core[0]],)
    return (_NEUTRAL,)


def is_bilabial(name: str) -> bool:
    """True for bilabial stops and nasals (p, b, m and their variants)."""
    return name in BILABIALS or name.rstrip(_MODIFIERS) in BILABIALS


def is_vowel(name: str) -> bool:
    """True when the phoneme's (first) target is a vowel's."""
    return targets(name)[0][1] in (_V, _V * 0.7)


# The articulator a consonant is defined by: dominant there, brief in time; elsewhere weak.
_KEY_PARAM = {"p": CLOSE, "b": CLOSE, "m": CLOSE, "B": CLOSE, "f": TEETH, "v": TEETH, "F": TEETH,
              "T": TONGUE, "D": TONGUE, "w": ROUND, "S": ROUND, "Z": ROUND}  # fmt: skip
KEY_REACH = 0.3  # a key articulation reaches 33 ms ahead, 21 ms behind
OTHER_WEIGHT = 0.3  # consonants' weight on the parameters they do not define


def _segments(phonemes: list[Phoneme]) -> tuple[np.ndarray, ...]:
    """Per target segment: start, end (s), target (M, 6), weight (M, 6), reach (M, 6)."""
    starts, ends, values, weights, reach = [], [], [], [], []
    for p in phonemes:
        parts = targets(p.name)
        bounds = np.linspace(p.start, p.end, len(parts) + 1) / SAMPLE_RATE
        vowel_or_pause = is_vowel(p.name) or p.is_pause
        key = _KEY_PARAM.get(p.name.rstrip(_MODIFIERS)[:1] if p.name else "")
        for k, (target, weight) in enumerate(parts):
            starts.append(bounds[k])
            ends.append(bounds[k + 1])
            values.append(target)
            w = np.full(N_TARGETS, weight * (1.15 if p.stress == 2 else 1.0))
            r = np.full(N_TARGETS, 1.0 if vowel_or_pause else CONSONANT_REACH)
            if key is not None:
                w = np.minimum(w, OTHER_WEIGHT)
                w[key], r[key] = weight, KEY_REACH
            weights.append(w)
            reach.append(r)
    arrays = (starts, ends, values, weights, reach)
    return tuple(np.array(a, dtype=np.float64) for a in arrays)


def mouth_track(phonemes: list[Phoneme], n_frames: int) -> np.ndarray:
    """Mouth parameters per frame, shape (n_frames, 7) float32 in [0, 1] (columns: PARAMS).

    Frames not covered by any phoneme take the rest pose (closed lips).
    """
    out = np.tile(np.array([*REST, 0.0], dtype=np.float32), (n_frames, 1))
    if not phonemes or n_frames == 0:
        return out
    starts, ends, values, weights, reach = _segments(phonemes)
    t = (np.arange(n_frames) + 0.5) / FPS  # frame centres, seconds
    before = np.clip(starts[None, :] - t[:, None], 0.0, None)[..., None] / (ANTICIPATION_S * reach)
    after = np.clip(t[:, None] - ends[None, :], 0.0, None)[..., None] / (RELEASE_S * reach)
    dominance = weights[None] * np.exp(-((before + after) ** DOMINANCE_POWER))  # (T, M, 6)
    dominance += 1e-9  # frames far from every phoneme fall back to the mean target
    blended = (dominance * values[None]).sum(axis=1) / dominance.sum(axis=1)
    out[:, :N_TARGETS] = blended
    _seal_bilabials(out, phonemes, t)
    out[:, OPEN] = opening(out[:, JAW], out[:, CLOSE], out[:, TEETH])
    return np.clip(out, 0.0, 1.0)


def _seal_bilabials(track: np.ndarray, phonemes: list[Phoneme], t: np.ndarray) -> None:
    """Frames whose centre lies inside a bilabial get closed lips (in place)."""
    for p in phonemes:
        if is_bilabial(p.name):
            inside = (t * SAMPLE_RATE >= p.start) & (t * SAMPLE_RATE < p.end)
            track[inside, CLOSE] = 1.0
