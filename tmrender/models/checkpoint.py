"""Inference checkpoints: one safetensors file, config in the metadata (k-diffusion's
`convert_for_inference.py` style), strict key/shape checks on load.

File: tensors of `TalkingModel.state_dict()` under the network prefixes (`vae.`, `dit.`,
`audio_encoder.`, `audio_proj.`, `silence.`); metadata: ONE key, "tmrender", holding
    {"format": "tmrender", "format_version": "2", "config": ModelConfig (JSON object),
     "trained": bool, "extra": extra_meta} as JSON with sorted keys.
One key because safetensors writes several metadata keys in random order, which would give
the same weights a different SHA-256 at every save; one key makes exports reproducible.
Training checkpoints (model, ema, optimizer, step) are a different thing (tmrender/train).
Our DiT uses Wan2.1's key names (wan/modules/model.py); `tmrender.convert` maps releases in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from tmrender.config import ModelConfig
from tmrender.errors import UserInputError
from tmrender.models.talking import TalkingModel

FORMAT = "tmrender"
FORMAT_VERSION = "2"
METADATA_KEY = "tmrender"


class CheckpointError(UserInputError):
    """A checkpoint that cannot be used: not a tmrender file, or keys/shapes that do not
    match its own config (one line, user-fixable: use another file)."""


@dataclass(frozen=True)
class KeyReport:
    """Result of comparing expected with found tensors."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[str, ...]  # "key: expected (..) found (..)"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 5) -> str:
        parts = []
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("wrong shape", self.mismatched),
        ):
            if keys:
                more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:limit])}{more}")
        return "; ".join(parts) or "all keys match"


def compare_keys(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> KeyReport:
    """Compare {key: shape} maps strictly."""
    return KeyReport(
        missing=tuple(sorted(set(expected) - set(found))),
        unexpected=tuple(sorted(set(found) - set(expected))),
        mismatched=tuple(
            f"{k}: expected {tuple(expected[k])} found {tuple(found[k])}"
            for k in sorted(set(expected) & set(found))
            if tuple(expected[k]) != tuple(found[k])
        ),
    )


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level network (children) plus "total"; for a TalkingModel also
    "dit.base" and "dit.audio" (the audio layers added to the DiT)."""
    counts = {
        name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    dit = getattr(model, "dit", None)
    if dit is not None:
        audio = sum(
            p.numel()
            for n, p in dit.named_parameters()
            if ".audio_cross_attn." in n or ".norm_audio." in n
        )
        counts["dit.audio"] = audio
        counts["dit.base"] = counts["dit"] - audio
    return counts


def save_checkpoint(
    model: TalkingModel, path: str | Path, trained: bool, extra_meta: dict[str, Any] | None = None
) -> None:
    """Write `model` to one safetensors file with its config in the metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=checkpoint_metadata(model.cfg, trained, extra_meta))


def checkpoint_metadata(
    cfg: ModelConfig, trained: bool, extra_meta: dict[str, Any] | None = None
) -> dict[str, str]:
    """The safetensors metadata of a tmrender checkpoint: one key, see the module docstring."""
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.loads(cfg.to_json()),
        "trained": bool(trained),
        "extra": extra_meta or {},
    }
    return {METADATA_KEY: json.dumps(record, sort_keys=True)}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """-> {"config": ModelConfig, "trained": bool, "format_version": str, "extra": dict}.
    Raises CheckpointError for anything that is not a tmrender checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a safetensors file ({err})") from err
    try:
        record = json.loads(meta.get(METADATA_KEY, "{}"))
    except ValueError:
        record = {}
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a tmrender checkpoint")
    if record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {record.get('format_version')}, "
            f"this tmrender reads {FORMAT_VERSION}"
        )
    try:
        config = ModelConfig.from_json(json.dumps(record["config"]))
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable model config in metadata ({err})") from err
    return {
        "config": config,
        "trained": record.get("trained") is True,
        "format_version": FORMAT_VERSION,
        "extra": record.get("extra", {}),
    }


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[TalkingModel, dict[str, Any]]:
    """Build the model from the file's config and load its tensors, strictly.

    The model is created on the meta device (no init cost, no double memory) and its
    tensors are assigned from the file; floating tensors are cast to `dtype`."""
    meta = read_metadata(path)
    with torch.device("meta"):
        model = TalkingModel(meta["config"])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        names = list(f.keys())  # noqa: SIM118 (safe_open is not iterable)
        found = {k: tuple(f.get_slice(k).get_shape()) for k in names}
        report = compare_keys(expected, found)
        if not report.ok:
            raise CheckpointError(f"{path} does not match its own config: {report.describe()}")
        state = {k: _cast(f.get_tensor(k), dtype) for k in names}
    model.load_state_dict(state, strict=True, assign=True)
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not leftovers, f"tensors not in the checkpoint: {leftovers[:5]}"
    return model.eval(), meta


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(dtype) if t.is_floating_point() else t
