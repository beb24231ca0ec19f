"""Visemes: phoneme lookup, ranges, bilabial closure, pauses, coarticulation reach."""

import numpy as np

from tmrender.data import visemes as V
from tmrender.data.speech import Phoneme

MS = 16  # samples per millisecond at 16 kHz


def seq(*items):
    """Phonemes from (name, milliseconds) pairs laid end to end."""
    out, t = [], 0
    for name, ms in items:
        out.append(Phoneme(name, t * MS, (t + ms) * MS, 0))
        t += ms
    return out


def frame_at(ms):
    return int(ms / 40)


def test_lookup_strips_modifiers_and_splits_diphthongs():
    assert V.targets("a:") == V.targets("a") == V.targets("a#")
    assert len(V.targets("aI")) == 2 and len(V.targets("&U~")) == 2
    assert V.targets("_:") == V.targets("_") and V.targets("(en)") == V.targets("_")
    assert V.is_bilabial("m") and V.is_bilabial("p") and not V.is_bilabial("n")
    assert V.is_vowel("oU") and not V.is_vowel("k")
    assert len(V.targets("qq")) == 1  # unknown: a neutral target, not an error


def test_parameters_stay_in_range_and_open_is_derived():
    ph = seq(
        ("_", 300),
        ("m", 80),
        ("a", 120),
        ("p", 90),
        ("u:", 150),
        ("f", 100),
        ("i", 110),
        ("T", 80),
        ("_", 400),
    )
    m = V.mouth_track(ph, 50)
    assert m.shape == (50, len(V.PARAMS)) and m.dtype == np.float32
    assert m.min() >= 0.0 and m.max() <= 1.0
    np.testing.assert_allclose(
        m[:, V.OPEN], V.opening(m[:, V.JAW], m[:, V.CLOSE], m[:, V.TEETH]), atol=1e-6
    )


def test_bilabials_close_the_mouth_and_vowels_open_it():
    ph = seq(
        ("_", 200), ("m", 80), ("a", 120), ("m", 80), ("a", 120), ("b", 80), ("a", 200), ("_", 600)
    )
    m = V.mouth_track(ph, 40)
    for p in ph:
        inside = [i for i in range(40) if p.start <= (i + 0.5) * 640 < p.end]
        if V.is_bilabial(p.name):
            assert inside and all(m[i, V.OPEN] == 0.0 and m[i, V.CLOSE] == 1.0 for i in inside)
        if p.name == "a":
            assert max(m[i, V.OPEN] for i in inside) > 0.35


def test_mouth_is_closed_in_pauses():
    ph = seq(("a", 150), ("_", 1000), ("i", 150))
    m = V.mouth_track(ph, frame_at(1300) + 1)
    deep_pause = m[frame_at(350) : frame_at(950)]
    assert deep_pause[:, V.OPEN].max() < 0.05
    assert m[frame_at(75), V.OPEN] > 0.3


def test_coarticulation_anticipates_rounding_within_about_100_ms():
    ph = seq(("_", 600), ("t", 200), ("u:", 200), ("_", 600))
    m = V.mouth_track(ph, 40)
    assert m[frame_at(720), V.ROUND] > 0.2  # 80 ms before the /u/, lips already round
    assert m[frame_at(500), V.ROUND] < 0.05  # 300 ms before: not yet
    assert m[frame_at(900), V.ROUND] > 0.8


def test_labiodentals_and_dentals_use_their_articulator():
    m = V.mouth_track(seq(("a", 200), ("f", 120), ("a", 200), ("T", 120), ("a", 200)), 21)
    assert m[frame_at(260), V.TEETH] > 0.6 and m[frame_at(100), V.TEETH] < 0.2
    assert m[frame_at(580), V.TONGUE] > 0.5


def test_empty_input_rests():
    m = V.mouth_track([], 5)
    assert m.shape == (5, 7) and np.all(m[:, V.CLOSE] == 1) and np.all(m[:, V.OPEN] == 0)
