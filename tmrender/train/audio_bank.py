"""The audio stage's data bank: every training clip's audio and frame targets, padded and
stacked into tensors that batches are cut from (`tmrender.train.audio.make_batch`).

Targets per video frame: the phoneme sounding at the frame's centre (the corpus' phoneme
events, a vocabulary built over the train split with rare names folded into `OTHER`) and
the 7 mouth parameters. Beside the clean audio the bank can hold a second version of each
clip, its lossy codec round trip (`codec_pool`, cached in the run folder).
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tmrender.data import visemes
from tmrender.data.corpus import read_wav
from tmrender.files import atomic_write
from tmrender.train import augment

PAUSE = "_"  # eSpeak's pause phoneme: silence before, between and after phrases
OTHER = "<other>"  # rare phoneme names, and names the train split never uses


# -- targets ---------------------------------------------------------------------------------


def read_events(clip: Path) -> list[tuple[str, int, int]]:
    """Phoneme events (name, start sample, end sample) of a clip folder's meta.json."""
    meta = json.loads((clip / "meta.json").read_text())
    return [(str(name), int(start), int(end)) for name, start, end, _ in meta["phonemes"]]


def phoneme_vocabulary(events: list[list[tuple[str, int, int]]], min_count: int) -> tuple[str, ...]:
    """Phoneme names seen at least `min_count` times (sorted), PAUSE always, then OTHER."""
    counts = Counter(name for clip in events for name, _, _ in clip)
    names = {name for name, n in counts.items() if n >= min_count} | {PAUSE}
    return (*sorted(names), OTHER)


def frame_phonemes(
    events: list[tuple[str, int, int]], frames: int, vocab: tuple[str, ...], samples_per_frame: int
) -> np.ndarray:
    """Vocabulary index of the phoneme sounding at each frame's centre, (frames,) int64;
    frames outside every event are PAUSE, names outside the vocabulary OTHER."""
    index = {name: i for i, name in enumerate(vocab)}
    centres = np.arange(frames) * samples_per_frame + samples_per_frame // 2
    out = np.full(frames, index[PAUSE], np.int64)
    if not events:
        return out
    starts = np.array([e[1] for e in events])
    ends = np.array([e[2] for e in events])
    ids = np.array([index.get(e[0], index[OTHER]) for e in events])
    k = np.searchsorted(starts, centres, side="right") - 1
    inside = (k >= 0) & (centres < ends[np.maximum(k, 0)])
    out[inside] = ids[k[inside]]
    return out


@dataclass
class ClipTargets:
    """One clip: wav (N,) float32, mouth (T, 7) float32, phonemes (T,) int64."""

    wav: np.ndarray
    mouth: np.ndarray
    phonemes: np.ndarray


def load_clip_targets(clip: Path, vocab: tuple[str, ...], samples_per_frame: int) -> ClipTargets:
    """Audio and frame targets of one clip folder (frames are not decoded)."""
    mouth = np.load(clip / "mouth.npy").astype(np.float32)
    wav = read_wav(clip / "audio.wav")
    frames = mouth.shape[0]
    assert frames == -(-wav.size // samples_per_frame), f"{clip}: frames do not match audio"
    return ClipTargets(
        wav, mouth, frame_phonemes(read_events(clip), frames, vocab, samples_per_frame)
    )


# -- the training clips as padded tensors ----------------------------------------------------


@dataclass
class ClipBank:
    """Training clips zero-padded into tensors, `pad` frames before each clip:

    wav (V, C, S) float16: version v of clip c, sample `pad * spf + j` = the clip's sample j;
        version 0 is the clean audio, version 1 (if any) the codec pool, which holds the
        first `pooled` clips (the rows of the others are unused zeros)
    mouth (C, T, 7) float32 and phonemes (C, T) int64: frame f of a clip is row `pad + f`;
        the padding holds the rest pose and PAUSE
    frames (C,) int64 frames per clip; power (C,) float32 mean power of each clean clip
    """

    wav: Tensor
    mouth: Tensor
    phonemes: Tensor
    frames: Tensor
    power: Tensor
    pad: int
    samples_per_frame: int
    pooled: int = 0

    def to(self, device: torch.device) -> ClipBank:
        names = ("wav", "mouth", "phonemes", "frames", "power")
        moved = {name: getattr(self, name).to(device) for name in names}
        return replace(self, **moved)


def stack_clips(
    clips: list[ClipTargets],
    pad: int,
    samples_per_frame: int,
    pause_id: int,
    codec: list[np.ndarray] | None = None,
) -> ClipBank:
    """Pad and stack clips into a ClipBank (`codec`: round-tripped wavs of the first
    len(codec) clips)."""
    spf = samples_per_frame
    frames = max(c.mouth.shape[0] for c in clips) + 2 * pad
    rest = torch.from_numpy(visemes.mouth_track([], 1)[0])
    versions = [[c.wav for c in clips]] + ([codec] if codec else [])
    wav = torch.zeros(len(versions), len(clips), frames * spf, dtype=torch.float16)
    mouth = rest.repeat(len(clips), frames, 1)
    phonemes = torch.full((len(clips), frames), pause_id, dtype=torch.int64)
    for i, c in enumerate(clips):
        n, t = c.wav.size, c.mouth.shape[0]
        for v, version in enumerate(versions):
            if i < len(version):
                wav[v, i, pad * spf : pad * spf + n] = torch.from_numpy(version[i])
        mouth[i, pad : pad + t] = torch.from_numpy(c.mouth)
        phonemes[i, pad : pad + t] = torch.from_numpy(c.phonemes)
    return ClipBank(
        wav=wav,
        mouth=mouth,
        phonemes=phonemes,
        frames=torch.tensor([c.mouth.shape[0] for c in clips]),
        power=torch.tensor([float(np.mean(c.wav.astype(np.float64) ** 2)) for c in clips]),
        pad=pad,
        samples_per_frame=spf,
        pooled=len(codec) if codec else 0,
    )


def codec_pool(
    clips: list[Path], wavs: list[np.ndarray], cache: Path, sample_rate: int, seed: int
) -> list[np.ndarray]:
    """Each clip's wav after one lossy round trip (codec k drawn per clip from `seed`),
    cached in `cache` (int16) and rebuilt when the clips or the codecs change."""
    rng = np.random.default_rng(seed)
    choice = [augment.CODECS[k] for k in rng.integers(len(augment.CODECS), size=len(clips))]
    key = json.dumps({"clips": [p.name for p in clips], "codecs": [c.name for c in choice]})
    if cache.exists():
        state = torch.load(cache, weights_only=True)
        if state["key"] == key:
            return [w.float().numpy() / 32767.0 for w in state["wavs"]]

    def one(k: int) -> np.ndarray:
        return augment.codec_round_trip(wavs[k], choice[k], sample_rate)

    with ThreadPoolExecutor(max_workers=2) as pool:
        out = list(pool.map(one, range(len(clips))))
    quantised = [
        torch.from_numpy(np.round(np.clip(w, -1, 1) * 32767).astype(np.int16)) for w in out
    ]
    with atomic_write(cache) as partial:
        torch.save({"key": key, "wavs": quantised}, partial)
    return [w.float().numpy() / 32767.0 for w in quantised]
