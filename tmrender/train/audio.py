"""The `audio` stage (`tmrender train audio`): pretrain the tm-mini Wav2Vec2 on frame targets.

The paper uses a pretrained wav2vec2, frozen. tm-mini's encoder is tiny and starts from
nothing, so this stage trains it on what the corpus gives exactly for every video frame:
the phoneme sounding at the frame's centre (the corpus' phoneme events; a vocabulary
built over the train split, rare names folded into one "other" class) and the 7 mouth
parameters (`tmrender.train.audio_bank` holds them with the audio, padded into tensors).
Two small heads read the encoder's features; they live here and are discarded on export,
where only the encoder changes in the model.

Framing is the renderer's (`tmrender.render.features`): the encoder sees frame-aligned
windows of `FIRST_SEGMENT_FRAMES` or `SEGMENT_FRAMES` frames plus `MARGIN_FRAMES` on
each side, zeros beyond the clip, and only the central frames count in the loss. Held-out
figures run the renderer's own `FeatureProducer` over whole clips (`tmrender.train.framing`).

Robustness to real recordings comes from augmentation (`tmrender.train.augment`): lossy
codec round trips (a pool computed once per run folder), speed perturbation (resampling:
pitch and tempo together, the targets resampled with it), reverberation, white, pink and
babble noise at 5-30 dB SNR, the telephone band, and gain with clipping.

Run folder: what `tmrender.train.loop` writes, plus `codec-pool.pt` (the round-tripped
training clips, int16, rebuilt when the clips or codecs change).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tmrender.data import visemes
from tmrender.data.corpus import list_clips
from tmrender.errors import UserInputError
from tmrender.eval.metrics import pearson
from tmrender.files import atomic_write
from tmrender.models.audio import MouthHead
from tmrender.models.checkpoint import save_checkpoint
from tmrender.models.talking import TalkingModel
from tmrender.render.features import (
    FIRST_SEGMENT_FRAMES,
    MARGIN_FRAMES,
    SEGMENT_FRAMES,
)
from tmrender.train import augment
from tmrender.train.audio_bank import (
    PAUSE,
    ClipBank,
    codec_pool,
    load_clip_targets,
    phoneme_vocabulary,
    read_events,
    stack_clips,
)
from tmrender.train.framing import renderer_features

OPEN = visemes.PARAMS.index("open")
CODEC_POOL = "codec-pool.pt"
SPEED_MARGIN = 1600  # samples resampled beyond each end of a window (FFT wrap-around)


@dataclass(frozen=True)
class AugmentOptions:
    """Probabilities and ranges of the augmentations (each drawn per training window)."""

    codec_prob: float = 0.25  # take the window from the codec pool (MP3 / Opus / AAC)
    codec_clips: int | None = None  # clips in the pool (the first ones); None: every one
    speed_prob: float = 0.4  # resample: pitch and tempo x factor
    speed_range: tuple[float, float] = (0.87, 1.15)
    speed_levels: int = 9  # factors log-spaced over speed_range (batched per level)
    reverb_prob: float = 0.3
    rt60_range: tuple[float, float] = (0.1, 0.8)  # seconds
    drr_db_range: tuple[float, float] = (-3.0, 12.0)  # direct-to-reverberant ratio
    noise_prob: float = 0.6  # white, pink or babble, equally likely
    snr_db_range: tuple[float, float] = (5.0, 30.0)
    babble_voices: int = 6  # at most; at least 3
    telephone_prob: float = 0.15
    telephone_low_hz: tuple[float, float] = (250.0, 400.0)
    telephone_high_hz: tuple[float, float] = (3000.0, 3600.0)
    gain_db_range: tuple[float, float] = (-25.0, 6.0)


@dataclass(frozen=True)
class AudioOptions:
    """Options of the audio stage (the loop's options are `tmrender.train.loop.LoopOptions`)."""

    # batches: windows of the renderer's segment sizes, frame-aligned
    batch: int = 16  # windows per step
    window_frames: int = SEGMENT_FRAMES + 2 * MARGIN_FRAMES
    short_window_frames: int = FIRST_SEGMENT_FRAMES + 2 * MARGIN_FRAMES
    short_window_prob: float = 0.2
    loss_margin: int = MARGIN_FRAMES  # frames at each window end left out of the loss
    edge_frames: int = MARGIN_FRAMES + 2  # windows may reach this far past a clip's ends
    val_clips: int = 8  # the last clips of the train split, held out
    # targets and heads
    min_phoneme_count: int = 10  # rarer phoneme names fold into OTHER
    open_weight: float = 3.0  # weight of `open` among the (normalised) mouth errors
    phoneme_weight: float = 0.3
    head_hidden: int = 128
    head_context: int = 1  # frames each side the heads see
    # validation: white noise at this SNR besides the clean figures
    val_snr_db: float = 10.0
    seed: int = 0  # head initialisation, codec choice per clip
    augment: AugmentOptions = field(default_factory=AugmentOptions)


# -- how far batches reach into the bank -----------------------------------------------------


def bank_padding(opts: AudioOptions, shortest_clip: int, samples_per_frame: int) -> int:
    """Frames of padding each side so that every window `make_batch` can draw (any start
    within `edge_frames` of the clip, the fastest speed, FFT margins) stays in the bank."""
    fastest = opts.augment.speed_range[1]
    longest = max(opts.window_frames, opts.short_window_frames)
    margin = math.ceil(fastest * SPEED_MARGIN / samples_per_frame)
    reach = math.ceil((fastest - 1.0) * longest) + margin + 1
    too_long = max(0, longest - shortest_clip - 2 * opts.edge_frames)
    return opts.edge_frames + reach + too_long


# -- batches ---------------------------------------------------------------------------------


@dataclass
class AudioBatch:
    """wav (B, N) float32 with N = W * spf; mouth (B, W, 7) float32; phonemes (B, W) int64."""

    wav: Tensor
    mouth: Tensor
    phonemes: Tensor


def speed_factors(aug: AugmentOptions) -> Tensor:
    """The speed perturbation factors, (speed_levels,) log-spaced over speed_range."""
    lo, hi = aug.speed_range
    return torch.logspace(math.log10(lo), math.log10(hi), aug.speed_levels, dtype=torch.float64)


def crop_targets(bank: ClipBank, rows: Tensor, position: Tensor) -> tuple[Tensor, Tensor]:
    """Targets of bank rows (B,) at fractional bank frame positions (B, W): mouth linearly
    interpolated (B, W, 7), phonemes of the nearest frame (B, W)."""
    last = bank.mouth.shape[1] - 1
    lo = position.floor().long().clamp(0, last)
    hi = (lo + 1).clamp(max=last)
    frac = (position - position.floor()).float()[..., None]
    r = rows[:, None]
    mouth = bank.mouth[r, lo] * (1 - frac) + bank.mouth[r, hi] * frac
    return mouth, bank.phonemes[r, position.round().long().clamp(0, last)]


def crop_windows(
    bank: ClipBank, rows: Tensor, versions: Tensor, start: Tensor, frames: int, speed: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Windows of `frames` frames from bank rows (B,) starting at clip frame `start` (B,),
    of audio version `versions` (B,) (0 clean, 1 codec pool), resampled by `speed` (B,)
    (1.0: a plain copy). -> wav (B, frames * spf) float32, mouth (B, frames, 7), phonemes."""
    spf = bank.samples_per_frame
    n = frames * spf
    first = (start + bank.pad) * spf  # bank sample of the window's first sample
    wav = torch.empty(rows.shape[0], n, device=rows.device)
    position = (start + bank.pad)[:, None].double() + torch.arange(frames, device=rows.device)
    for factor in speed.unique().tolist():
        group = (speed == factor).nonzero()[:, 0]
        v, r = versions[group, None], rows[group, None]
        if factor == 1.0:
            idx = first[group, None] + torch.arange(n, device=rows.device)
            wav[group] = bank.wav[v, r, idx].float()
            continue
        # resample SPEED_MARGIN + n + SPEED_MARGIN output samples from `taken` source samples
        taken = round(factor * (n + 2 * SPEED_MARGIN))
        actual = taken / (n + 2 * SPEED_MARGIN)
        lead = round(factor * SPEED_MARGIN)
        idx = first[group, None] - lead + torch.arange(taken, device=rows.device)
        source = bank.wav[v, r, idx].float()
        wav[group] = augment.resample_fft(source, n + 2 * SPEED_MARGIN)[
            :, SPEED_MARGIN : SPEED_MARGIN + n
        ]
        # output frame i's centre sits at source sample first - lead + actual * (margin + c_i)
        centres = SPEED_MARGIN + (torch.arange(frames, device=rows.device) + 0.5) * spf
        source_sample = (first[group, None] - lead).double() + actual * centres.double()
        position[group] = source_sample / spf - 0.5
    mouth, phonemes = crop_targets(bank, rows, position)
    return wav, mouth, phonemes


def make_batch(
    bank: ClipBank, opts: AudioOptions, gen: torch.Generator, device: torch.device
) -> AudioBatch:
    """One augmented training batch on `device` (bank already there). Small random draws
    come from the CPU generator `gen`; the noise itself from a device generator seeded
    from it, so a batch is a function of gen's state (and the device)."""
    aug, b, spf = opts.augment, opts.batch, bank.samples_per_frame
    sample_rate = spf * visemes.FPS

    def uniform(lo_hi: tuple[float, float], n: int = b) -> Tensor:
        return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(n, generator=gen)

    def chance(p: float) -> Tensor:
        return torch.rand(b, generator=gen) < p

    # 1. what to cut: window length, clips, frame-aligned starts, source, speed
    short = bool(torch.rand((), generator=gen) < opts.short_window_prob)
    frames = opts.short_window_frames if short else opts.window_frames
    rows = torch.randint(0, bank.frames.shape[0], (b,), generator=gen)
    span = (bank.frames.cpu()[rows] + 2 * opts.edge_frames - frames + 1).clamp(min=1)
    start = (torch.rand(b, generator=gen) * span).long() - opts.edge_frames
    versions = (chance(aug.codec_prob) & (rows < bank.pooled)).long()
    levels = speed_factors(aug)[torch.randint(0, aug.speed_levels, (b,), generator=gen)]
    speed = torch.where(chance(aug.speed_prob), levels, torch.ones(b, dtype=torch.float64))
    # 2. what to do to them (parameters drawn for every window, used where chosen)
    reverb, rt60, drr = chance(aug.reverb_prob), uniform(aug.rt60_range), uniform(aug.drr_db_range)
    noisy, snr = chance(aug.noise_prob), uniform(aug.snr_db_range)
    kind = torch.randint(0, 3, (b,), generator=gen)  # 0 white, 1 pink, 2 babble
    voices = torch.randint(0, bank.frames.shape[0], (b, aug.babble_voices), generator=gen)
    voice_at = torch.rand(b, aug.babble_voices, generator=gen)
    active = torch.arange(aug.babble_voices)[None] < torch.randint(
        3, aug.babble_voices + 1, (b, 1), generator=gen
    )
    phone = chance(aug.telephone_prob)
    low, high = uniform(aug.telephone_low_hz), uniform(aug.telephone_high_hz)
    gain = uniform(aug.gain_db_range)
    dev_gen = torch.Generator(device).manual_seed(int(torch.randint(2**62, (), generator=gen)))
    # 3. cut, then room, noise, channel, level
    put = {"device": device}
    wav, mouth, phonemes = crop_windows(
        bank, rows.to(**put), versions.to(**put), start.to(**put), frames, speed.to(**put)
    )
    if reverb.any():
        i = reverb.nonzero()[:, 0].to(**put)
        wav[i] = augment.reverberate(
            wav[i], rt60.to(**put)[i], drr.to(**put)[i], sample_rate, dev_gen
        )
    if noisy.any():
        i = noisy.nonzero()[:, 0]
        noise = unit_noise(bank, kind[i], voices[i], voice_at[i], active[i], wav.shape[1], dev_gen)
        i = i.to(**put)
        power = bank.power[rows.to(**put)[i]]
        wav[i] = augment.add_noise(wav[i], noise, snr.to(**put)[i], power)
    if phone.any():
        i = phone.nonzero()[:, 0].to(**put)
        wav[i] = augment.band_limit(wav[i], low.to(**put)[i], high.to(**put)[i], sample_rate)
    wav = augment.apply_gain(wav, gain.to(**put))
    return AudioBatch(wav, mouth, phonemes)


def babble_crops(bank: ClipBank, voices: Tensor, at: Tensor, samples: int) -> Tensor:
    """Clean speech of bank rows voices (B, K) from fractional positions `at` (B, K) of
    each clip -> (B, K, samples) float32."""
    spf = bank.samples_per_frame
    room = (bank.frames[voices] * spf - samples).clamp(min=0)
    first = bank.pad * spf + (at * room).long()
    idx = first[..., None] + torch.arange(samples, device=voices.device)
    return bank.wav[0, voices[..., None], idx].float()


def unit_noise(
    bank: ClipBank,
    kind: Tensor,
    voices: Tensor,
    at: Tensor,
    active: Tensor,
    samples: int,
    gen: torch.Generator,
) -> Tensor:
    """Unit-power noise (B, samples) on gen's device: white where kind (B,) is 0, pink where
    1, babble where 2 (the `active` (B, K) voices of bank rows `voices` (B, K) from
    positions `at` (B, K), see `babble_crops`). kind, voices, at, active on the CPU."""
    device = gen.device
    out = torch.empty(kind.shape[0], samples, device=device)
    for code, make in ((0, augment.white_noise), (1, augment.pink_noise)):
        i = (kind == code).nonzero()[:, 0]
        if len(i):
            out[i.to(device)] = make(len(i), samples, gen)
    i = (kind == 2).nonzero()[:, 0]
    if len(i):
        crops = babble_crops(bank, voices[i].to(device), at[i].to(device), samples)
        out[i.to(device)] = augment.babble(crops, active[i].to(device))
    return out


# -- heads and loss --------------------------------------------------------------------------


class FrameHeads(MouthHead):
    """Readouts of encoder features (B, F, L, D): mouth parameters (B, F, 7) and phoneme
    logits (B, F, P), both from the mouth head's hidden layer (`MouthHead`)."""

    def __init__(self, feature_dim: int, phonemes: int, hidden: int, context: int) -> None:
        super().__init__(feature_dim, hidden, context)
        self.phoneme = nn.Linear(hidden, phonemes)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        x = self.hidden(features.float())
        return self.mouth(x), self.phoneme(x)


def mouth_weights(open_weight: float) -> Tensor:
    """Weights of the 7 mouth columns in the loss: `open_weight` for `open`, 1 elsewhere."""
    w = torch.ones(len(visemes.PARAMS))
    w[OPEN] = open_weight
    return w


def frame_loss(
    mouth_pred: Tensor,
    phoneme_logits: Tensor,
    batch: AudioBatch,
    mouth_scale: Tensor,
    weights: Tensor,
    phoneme_weight: float,
    margin: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss on the central frames [margin, W - margin) of the windows: the weighted mean of
    squared mouth errors in units of each column's spread `mouth_scale` (7,), plus
    `phoneme_weight` times the phoneme cross-entropy. mouth_pred (B, W, 7), phoneme_logits
    (B, W, P). Returns (loss, {"mouth", "phoneme_ce"} detached)."""
    w = mouth_pred.shape[1]
    keep = slice(margin, w - margin) if w > 2 * margin else slice(None)
    err = ((mouth_pred[:, keep].float() - batch.mouth[:, keep]) / mouth_scale) ** 2
    mouth = (err * weights).sum(-1).mean() / weights.sum()
    logits = phoneme_logits[:, keep].float()
    ce = F.cross_entropy(logits.flatten(0, 1), batch.phonemes[:, keep].flatten())
    loss = mouth + phoneme_weight * ce
    return loss, {"mouth": mouth.detach(), "phoneme_ce": ce.detach()}


# -- figures: the renderer's own framing over whole clips (`tmrender.train.framing`) ---------


def add_white_noise(wav: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """wav (N,) plus white Gaussian noise `snr_db` below the clip's mean power (seeded)."""
    power = float(np.mean(wav.astype(np.float64) ** 2))
    sigma = math.sqrt(power / 10 ** (snr_db / 10))
    noise = np.random.default_rng(seed).normal(0.0, sigma, wav.size)
    return (wav + noise).astype(np.float32)


@torch.no_grad()
def evaluate(
    model: TalkingModel,
    heads: FrameHeads,
    clips: list[Path],
    vocab: tuple[str, ...],
    snr_db: float = 10.0,
    seed: int = 0,
) -> dict[str, float]:
    """Figures of encoder + heads on whole clips through the renderer's framing:
    {"clips", "frames", "open_r" (pooled Pearson r of the opening), "open_r_clip_mean",
    "open_mae", "phoneme_acc", "open_r_<snr>db" (white noise at `snr_db`, seeded)}."""
    if not clips:
        raise UserInputError("no clips to evaluate the audio encoder on")
    device = next(heads.parameters()).device
    spf = model.cfg.samples_per_frame
    preds, noisy_preds, truths, hits, per_clip = [], [], [], [], []
    for k, path in enumerate(clips):
        clip = load_clip_targets(path, vocab, spf)
        mouth, logits = heads(renderer_features(model, clip.wav).to(device))
        noisy = add_white_noise(clip.wav, snr_db, seed * 100_003 + k)
        noisy_mouth, _ = heads(renderer_features(model, noisy).to(device))
        preds.append(mouth[0, :, OPEN].float().cpu().numpy())
        noisy_preds.append(noisy_mouth[0, :, OPEN].float().cpu().numpy())
        truths.append(clip.mouth[:, OPEN])
        hits.append(logits[0].argmax(-1).cpu().numpy() == clip.phonemes)
        per_clip.append(pearson(preds[-1], truths[-1]))
    pred, noisy_pred, truth = map(np.concatenate, (preds, noisy_preds, truths))
    return {
        "clips": len(clips),
        "frames": int(truth.size),
        "open_r": round(pearson(pred, truth), 4),
        f"open_r_{snr_db:g}db": round(pearson(noisy_pred, truth), 4),
        "open_r_clip_mean": round(float(np.nanmean(per_clip)), 4),
        "open_mae": round(float(np.abs(pred - truth).mean()), 4),
        "phoneme_acc": round(float(np.concatenate(hits).mean()), 4),
    }


# -- the stage -------------------------------------------------------------------------------


class AudioStage:
    """The audio stage for `tmrender.train.loop.run_stage`: trains `model.audio_encoder`
    (in place) and the frame heads on the train split of `data`; exports `model`."""

    name = "audio"

    def __init__(
        self,
        data: Path,
        model: TalkingModel,
        run_dir: Path,
        opts: AudioOptions | None = None,
        init_name: str | None = None,
    ) -> None:
        self.model, self.opts = model, opts or AudioOptions()
        self.init_name = init_name  # the --init file, for the provenance
        spf = model.cfg.samples_per_frame
        # 1. clips: the last val_clips of the train split held out; the vocabulary over all
        clips = list_clips(data, "train")
        if len(clips) <= self.opts.val_clips:
            raise UserInputError(
                f"{len(clips)} train clips in {data}: need more than the {self.opts.val_clips} "
                "held out for validation"
            )
        self.train_clips, self.val_clips = (
            clips[: -self.opts.val_clips],
            clips[-self.opts.val_clips :],
        )
        self.vocab = phoneme_vocabulary(
            [read_events(c) for c in clips], self.opts.min_phoneme_count
        )
        # 2. training tensors: clean audio, the codec pool (unless unused), targets
        targets = [load_clip_targets(c, self.vocab, spf) for c in self.train_clips]
        run_dir.mkdir(parents=True, exist_ok=True)
        aug, codec = self.opts.augment, None
        pooled = len(targets) if aug.codec_clips is None else min(aug.codec_clips, len(targets))
        if aug.codec_prob > 0 and pooled > 0:
            codec = codec_pool(
                self.train_clips[:pooled], [t.wav for t in targets[:pooled]],
                run_dir / CODEC_POOL, model.cfg.audio_encoder.sample_rate, self.opts.seed,
            )  # fmt: skip
        pad = bank_padding(self.opts, min(t.mouth.shape[0] for t in targets), spf)
        self.bank = stack_clips(targets, pad, spf, self.vocab.index(PAUSE), codec)
        mouth = np.concatenate([t.mouth for t in targets])
        self.mouth_scale = torch.from_numpy(mouth.std(0)).clamp(min=0.05)
        self.weights = mouth_weights(self.opts.open_weight)
        self._device_bank: tuple[torch.device, ClipBank] | None = None
        # 3. heads, initialised from the stage's own seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.opts.seed)
            self.heads = FrameHeads(
                model.cfg.audio_feature_dim, len(self.vocab), self.opts.head_hidden,
                self.opts.head_context,
            )  # fmt: skip
        self.step = 0
        self.figures: dict[str, float] = {}

    def networks(self) -> dict[str, nn.Module]:
        return {"audio_encoder": self.model.audio_encoder, "heads": self.heads}

    def optimizers(self) -> dict[str, list[nn.Parameter]]:
        return {"main": [*self.model.audio_encoder.parameters(), *self.heads.parameters()]}

    def updates(self, step: int) -> list[str]:
        self.step = step + 1
        return ["main"]

    def batch(self, gen: torch.Generator, device: torch.device) -> AudioBatch:
        if self._device_bank is None or self._device_bank[0] != device:
            self._device_bank = (device, self.bank.to(device))
        return make_batch(self._device_bank[1], self.opts, gen, device)

    def loss(self, opt_name: str, batch: AudioBatch) -> tuple[Tensor, dict[str, Tensor]]:
        device = batch.wav.device
        mouth, logits = self.heads(self.model.audio_encoder(batch.wav))
        return frame_loss(
            mouth, logits, batch, self.mouth_scale.to(device), self.weights.to(device),
            self.opts.phoneme_weight, self.opts.loss_margin,
        )  # fmt: skip

    def validate(self) -> dict[str, float]:
        figures = evaluate(self.model, self.heads, self.val_clips, self.vocab, self.opts.val_snr_db)
        self.figures = {k: v for k, v in figures.items() if k not in ("clips", "frames")}
        return self.figures

    def evaluate_test(self, data: Path) -> dict[str, float]:
        """The figures of `evaluate` on the test split of `data` (never seen in training)."""
        figures = evaluate(
            self.model, self.heads, list_clips(data, "test"), self.vocab, self.opts.val_snr_db
        )
        return {"split": "test", **figures}

    def export(self, path: Path) -> dict:
        """The whole model (from `--init`) with the trained encoder, as an inference
        checkpoint (`trained=False`: the DiT is not trained yet); figures in `extra`."""
        extra = {
            "stage": "audio",
            "init": self.init_name,
            "audio_steps": self.step,
            "audio_validation": self.figures,
            "audio_phonemes": list(self.vocab),
            "audio_train_clips": len(self.train_clips),
            "audio_options": json.loads(json.dumps(asdict(self.opts))),
        }
        with atomic_write(path) as partial:
            save_checkpoint(self.model, partial, trained=False, extra_meta=extra)
        return extra
