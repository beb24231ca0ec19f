"""SyncNet lip-sync confidence (LSE-C, "Sync-C") and distance (LSE-D, "Sync-D"), the figures
Wav2Lip, LatentSync and most talking-head papers report, measured as joonson/syncnet_python
measures them with its `syncnet_v2.model` (Chung & Zisserman, "Out of time: automated lip
sync in the wild", ACCV 2016 workshops). We cannot ship those weights: `tmrender eval
--syncnet FILE` reads the file (a PyTorch state dict of that repository's `SyncNetModel`).

The pipeline, step by step as syncnet_python's `run_pipeline.py` / `SyncNetInstance.evaluate`:

1. Face crop per frame (`face_crops`): from the face box (x0, y0, x1, y1), half-size
   s = max(w, h) / 2 and centre, each median-filtered over 13 frames (zero-padded ends, as
   scipy.signal.medfilt); the frame padded by int(s * 1.8) with grey 110; the crop rows
   cy - s .. cy + 1.8 s, columns cx - 1.4 s .. cx + 1.4 s (crop scale 0.4), resized to
   224 x 224 (bilinear), colour order BGR, values 0..255.
2. Audio: MFCC (`tmrender.eval.mfcc`) of the whole 16 kHz track on the int16 scale, 100 per
   second; frame i's window is MFCC columns 4i .. 4i + 20 (13 x 20).
3. T = min(frames, samples // 640); for i in 0 .. T - 6, the lip branch embeds frames
   i .. i + 4 (3 x 5 x 224 x 224) and the audio branch window i (1 x 13 x 20), 1024 each.
4. Offset search (`offset_search`): for each shift k in -15 .. 15, the mean over i of
   ||video_i - audio_(i+k) + 1e-6|| (audio outside the clip is the zero vector); LSE-D is
   the smallest mean distance, LSE-C the median over shifts minus it, the offset
   15 - argmin (in frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tmrender.errors import UserInputError
from tmrender.eval.mfcc import mfcc, to_int16_scale

CROP = 224  # side of a face crop fed to the lip branch
WINDOW = 5  # frames per lip window
MFCC_PER_FRAME = 4  # 100 MFCC frames per second at 25 fps
MFCC_WINDOW = 20  # MFCC columns per audio window (0.2 s)
SAMPLES_PER_FRAME = 640  # 16 kHz at 25 fps
VSHIFT = 15  # frames searched either side
CROP_SCALE = 0.4  # context around the face box (syncnet_python's --crop_scale)
SMOOTH = 13  # median filter over frames of the box size and centre
PAD_GREY = 110  # the value the frame is padded with
EMBED = 1024  # features per window
PAIR_EPS = 1e-6  # torch.nn.functional.pairwise_distance's eps
BATCH = 20  # windows per forward pass

# The layers of `SyncNetModel`, in order (their index is the state-dict key's number):
# ("conv", in, out, kernel, stride, padding), ("bn", channels), ("relu",),
# ("pool", kernel, stride, padding). 2-D for audio (1 x 13 x 20), 3-D for lips (3 x 5 x 224^2).
AUDIO_LAYERS = (
    ("conv", 1, 64, (3, 3), (1, 1), (1, 1)), ("bn", 64), ("relu",), ("pool", (1, 1), (1, 1), 0),
    ("conv", 64, 192, (3, 3), (1, 1), (1, 1)), ("bn", 192), ("relu",), ("pool", (3, 3), (1, 2), 0),
    ("conv", 192, 384, (3, 3), (1, 1), (1, 1)), ("bn", 384), ("relu",),
    ("conv", 384, 256, (3, 3), (1, 1), (1, 1)), ("bn", 256), ("relu",),
    ("conv", 256, 256, (3, 3), (1, 1), (1, 1)), ("bn", 256), ("relu",), ("pool", (3, 3), (2, 2), 0),
    ("conv", 256, 512, (5, 4), (1, 1), (0, 0)), ("bn", 512), ("relu",),
)  # fmt: skip
LIP_LAYERS = (
    ("conv", 3, 96, (5, 7, 7), (1, 2, 2), 0), ("bn", 96), ("relu",),
    ("pool", (1, 3, 3), (1, 2, 2), 0),
    ("conv", 96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), ("bn", 256), ("relu",),
    ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("conv", 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)), ("bn", 256), ("relu",),
    ("conv", 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)), ("bn", 256), ("relu",),
    ("conv", 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)), ("bn", 256), ("relu",),
    ("pool", (1, 3, 3), (1, 2, 2), 0),
    ("conv", 256, 512, (1, 6, 6), (1, 1, 1), 0), ("bn", 512), ("relu",),
)  # fmt: skip


def _stack(layers: tuple, dims: int) -> nn.Sequential:
    """nn.Sequential of a layer table, `dims` = 2 or 3."""
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
    norm = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
    built = []
    for kind, *args in layers:
        if kind == "conv":
            cin, cout, kernel, stride, padding = args
            built.append(conv(cin, cout, kernel, stride=stride, padding=padding))
        elif kind == "bn":
            built.append(norm(args[0]))
        elif kind == "relu":
            built.append(nn.ReLU())
        else:
            kernel, stride, padding = args
            built.append(pool(kernel, stride=stride, padding=padding))
    return nn.Sequential(*built)


def _head(embed: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed))


class SyncNet(nn.Module):
    """syncnet_python's `SyncNetModel` (parameter names as its state dict): an audio branch
    on MFCC windows (B, 1, 13, 20) and a lip branch on face windows (B, 3, 5, 224, 224),
    BGR 0..255, each to a (B, 1024) embedding. Always run in eval mode (batch norm with
    running statistics)."""

    def __init__(self, embed: int = EMBED):
        super().__init__()
        self.netcnnaud = _stack(AUDIO_LAYERS, 2)
        self.netfcaud = _head(embed)
        self.netcnnlip = _stack(LIP_LAYERS, 3)
        self.netfclip = _head(embed)

    def embed_audio(self, mfcc_windows: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) -> (B, 1024)."""
        assert mfcc_windows.shape[1:] == (1, 13, MFCC_WINDOW), tuple(mfcc_windows.shape)
        return self.netfcaud(self.netcnnaud(mfcc_windows).flatten(1))

    def embed_lips(self, face_windows: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) -> (B, 1024)."""
        assert face_windows.shape[1:] == (3, WINDOW, CROP, CROP), tuple(face_windows.shape)
        return self.netfclip(self.netcnnlip(face_windows).flatten(1))


def load_syncnet(path: Path | str, device: str = "cpu") -> SyncNet:
    """A SyncNet with the weights of a `syncnet_v2.model` file, in eval mode on `device`.
    UserInputError (one line) for a missing file, a file that is not a state dict, or one
    whose keys or shapes are not SyncNet's (batch norms' `num_batches_tracked` may be
    absent, as in files saved by older PyTorch)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(
            f"--syncnet {path}: no such file (give syncnet_python's syncnet_v2.model)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserInputError(
            f"--syncnet {path}: not a PyTorch state dict ({type(error).__name__})"
        ) from None
    net = SyncNet()
    check_state(state, net.state_dict(), path)
    net.load_state_dict(state, strict=False)  # checked above; only counters may be absent
    return net.to(device).eval()


def check_state(state, expected: dict, path: Path) -> None:
    """UserInputError unless `state` has exactly `expected`'s keys (counters optional) and
    shapes."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(f"--syncnet {path}: not a SyncNet state dict (no tensors by name)")
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = [
        f"{label} {len(keys)} key(s), e.g. {keys[0]}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        )
        if keys
    ]
    if problems:
        raise UserInputError(f"--syncnet {path}: not a SyncNet state dict: {'; '.join(problems)}")


def median_filter(values: np.ndarray, size: int = SMOOTH) -> np.ndarray:
    """(T,) median over `size` neighbours, zero-padded at both ends (scipy.signal.medfilt)."""
    half = size // 2
    padded = np.concatenate([np.zeros(half), np.asarray(values, np.float64), np.zeros(half)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, size)
    return np.median(windows, axis=1)


def crop_boxes(face_boxes: np.ndarray) -> np.ndarray:
    """(T, 4) face boxes x0, y0, x1, y1 -> (T, 3) smoothed half-size s, centre y, centre x."""
    boxes = np.asarray(face_boxes, np.float64)
    half = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    cy, cx = (boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2
    return np.stack([median_filter(half), median_filter(cy), median_filter(cx)], axis=1)


def face_crop(frame: np.ndarray, half: float, cy: float, cx: float) -> np.ndarray:
    """One (H, W, 3) uint8 RGB frame -> (224, 224, 3) uint8 BGR crop around the face."""
    pad = int(half * (1 + 2 * CROP_SCALE))
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=PAD_GREY)
    y, x = cy + pad, cx + pad
    top, bottom = int(y - half), int(y + half * (1 + 2 * CROP_SCALE))
    left, right = int(x - half * (1 + CROP_SCALE)), int(x + half * (1 + CROP_SCALE))
    face = torch.from_numpy(np.ascontiguousarray(padded[top:bottom, left:right, ::-1]))
    resized = F.interpolate(
        face.permute(2, 0, 1)[None].float(), size=(CROP, CROP), mode="bilinear",
        align_corners=False,
    )  # fmt: skip
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def face_crops(frames: np.ndarray, face_boxes: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames and (T, 4) face boxes -> (T, 224, 224, 3) uint8 BGR."""
    assert len(frames) == len(face_boxes), (len(frames), len(face_boxes))
    smooth = crop_boxes(face_boxes)
    return np.stack([face_crop(f, *box) for f, box in zip(frames, smooth, strict=True)])


def window_count(frames: int, samples: int) -> int:
    """Windows syncnet_python scores: min(frames, samples // 640) - 5 (0 if fewer)."""
    return max(0, min(frames, samples // SAMPLES_PER_FRAME) - WINDOW)


@torch.no_grad()
def embed_clip(
    net: SyncNet,
    frames: np.ndarray,
    face_boxes: np.ndarray,
    audio: np.ndarray,
    batch: int = BATCH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, H, W, 3) uint8 RGB frames, (T, 4) face boxes and (N,) float audio in [-1, 1] at
    16 kHz -> video and audio embeddings, (W, 1024) each on the CPU, W = `window_count`.
    Faces are cropped batch by batch (memory does not grow with the clip)."""
    count = window_count(len(frames), audio.size)
    device = next(net.parameters()).device
    smooth = crop_boxes(face_boxes)
    cepstra = torch.from_numpy(mfcc(to_int16_scale(audio)).T.astype(np.float32))  # (13, F)
    video, sound = [], []
    for lo in range(0, count, batch):
        hi = min(count, lo + batch)
        span = range(lo, hi + WINDOW - 1)
        crops = np.stack([face_crop(frames[i], *smooth[i]) for i in span])  # (B + 4, 224, 224, 3)
        faces = np.stack([crops[i : i + WINDOW] for i in range(hi - lo)])  # (B, 5, 224, 224, 3)
        faces = torch.from_numpy(faces).to(device).permute(0, 4, 1, 2, 3).float()
        mel = torch.stack(
            [
                cepstra[:, MFCC_PER_FRAME * i : MFCC_PER_FRAME * i + MFCC_WINDOW]
                for i in range(lo, hi)
            ]
        )[:, None]  # (B, 1, 13, 20)
        video.append(net.embed_lips(faces).cpu())
        sound.append(net.embed_audio(mel.to(device)).cpu())
    if not video:
        return torch.zeros(0, EMBED), torch.zeros(0, EMBED)
    return torch.cat(video), torch.cat(sound)


@dataclass(frozen=True)
class SyncScore:
    """SyncNet's verdict on one clip."""

    confidence: float  # LSE-C: median - min of the mean distance over shifts (higher: better)
    distance: float  # LSE-D: the min mean distance (lower: better)
    offset: int  # frames, VSHIFT - argmin: video frame i goes with audio window i - offset
    # (positive: the video is late), syncnet_python's sign
    mean_distance: np.ndarray  # (2 * VSHIFT + 1,) mean distance per shift, -VSHIFT first


def offset_search(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> SyncScore:
    """(W, D) video and audio embeddings -> the `SyncScore` of step 4 (module docstring)."""
    assert video.shape == audio.shape and video.ndim == 2, (video.shape, audio.shape)
    count, video = len(video), video.double()
    padded = F.pad(audio.double(), (0, 0, vshift, vshift))  # zero vectors outside the clip
    mean = torch.stack(  # (S,), shift by shift: memory W x D, not W x S x D
        [
            (video - padded[s : s + count] + PAIR_EPS).norm(dim=1).mean()
            for s in range(2 * vshift + 1)
        ]
    )
    best = int(torch.argmin(mean))
    return SyncScore(
        confidence=float(mean.median() - mean[best]),
        distance=float(mean[best]),
        offset=vshift - best,
        mean_distance=mean.numpy(),
    )


class SyncNetScorer:
    """Scores clips with one loaded SyncNet: `score(frames, face_boxes, audio)`."""

    def __init__(self, net: SyncNet):
        self.net = net

    def score(self, frames: np.ndarray, face_boxes: np.ndarray, audio: np.ndarray) -> dict:
        """(T, H, W, 3) uint8 RGB, (T, 4) face boxes, (N,) audio in [-1, 1] at 16 kHz ->
        {"sync_c", "sync_d", "sync_offset"}; None each for clips under 6 frames."""
        if window_count(len(frames), audio.size) < 1:
            return {"sync_c": None, "sync_d": None, "sync_offset": None}
        video, sound = embed_clip(self.net, frames, face_boxes, audio)
        result = offset_search(video, sound)
        return {
            "sync_c": round(result.confidence, 5),
            "sync_d": round(result.distance, 5),
            "sync_offset": result.offset,
        }
