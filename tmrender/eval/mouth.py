"""Reading mouth parameters off frames with the mouth reader, and its weight files.

Frames at this edge are numpy uint8 `(T, H, W, 3)`; the reader sees `(B, 3, h, w)` regions.
Weights: one safetensors file whose metadata has a single key, `META_KEY`, holding JSON
{"config": MouthReaderConfig, "extra": {...}} (one key because safetensors writes several
in random order, and the same weights must give the same SHA-256); fp16 tensors are
loaded into an fp32 module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tmrender.errors import UserInputError
from tmrender.files import atomic_write, sha256_file, verify_checksum
from tmrender.models.mouth_reader import MouthReader, MouthReaderConfig, normalise

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "mouth_reader.safetensors"
META_KEY = "tmrender-mouth-reader"


def to_frame_size(frames: np.ndarray, size: int) -> Tensor:
    """uint8 frames (T, H, W, 3) -> uint8 tensor (T, 3, size, size), resized if needed."""
    assert frames.ndim == 4 and frames.shape[-1] == 3, f"expected (T, H, W, 3), got {frames.shape}"
    x = torch.tensor(frames).permute(0, 3, 1, 2)  # a copy: frames may be read-only views
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


def mouth_regions(frames: np.ndarray, cfg: MouthReaderConfig, margin: int = 0) -> Tensor:
    """The reader's input regions, uint8 (T, 3, h + 2 margin, w + 2 margin).

    `margin` widens the region on every side (training crops it back with a random
    shift); pixels beyond the frame repeat the edge.
    """
    x = to_frame_size(frames, cfg.frame_size)
    x0, y0, x1, y1 = cfg.crop
    size = cfg.frame_size
    pad = max(0, margin - min(x0, y0), margin + max(x1, y1) - size)
    if pad:
        x = F.pad(x.float(), (pad, pad, pad, pad), mode="replicate").to(torch.uint8)
    return x[..., y0 - margin + pad : y1 + margin + pad, x0 - margin + pad : x1 + margin + pad]


@torch.no_grad()
def read_mouth(reader: MouthReader, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """Mouth parameters of every frame: float32 (T, len(reader.cfg.outputs)), clipped to [0, 1]."""
    reader.eval()
    out = []
    for i in range(0, len(frames), batch):
        regions = mouth_regions(frames[i : i + batch], reader.cfg)
        out.append(reader(normalise(regions)).clamp(0, 1))
    if not out:
        return np.zeros((0, len(reader.cfg.outputs)), np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def save_mouth_reader(
    reader: MouthReader, path: Path | str, half: bool = True, extra: dict[str, Any] | None = None
) -> str:
    """Write the reader's weights (fp16 if `half`) with its config; returns the SHA-256."""
    from safetensors.torch import save_file

    dtype = torch.float16 if half else torch.float32
    tensors = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in reader.state_dict().items()
    }
    meta = {"config": json.loads(reader.cfg.to_json()), "extra": extra or {}}
    metadata = {META_KEY: json.dumps(meta, sort_keys=True)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as partial:
        save_file(tensors, str(partial), metadata=metadata)
    return sha256_file(path)


def load_mouth_reader(path: Path | str | None = None) -> MouthReader:
    """Load a mouth reader (default: the shipped weights), in eval mode, fp32, on the CPU.
    A file listed in the SHA256SUMS beside it must match its line (the instrument every
    lip-sync figure rests on)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise UserInputError(
            f"mouth reader weights not found: {path} "
            "(train them with `tmrender train mouth-reader`)"
        )
    verify_checksum(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except SafetensorError as err:
        raise UserInputError(f"not a safetensors file: {path} ({err})") from err
    if META_KEY not in meta:
        raise UserInputError(f"not a mouth reader checkpoint: {path}")
    config = json.loads(meta[META_KEY])["config"]
    reader = MouthReader(MouthReaderConfig.from_json(json.dumps(config)))
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    reader.load_state_dict(state, strict=True)
    return reader.eval()
