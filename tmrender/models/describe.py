"""Facts about a model for `tmrender info`: config, parameter counts, dtype, checksum."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from tmrender.models.checkpoint import count_parameters, read_metadata
from tmrender.models.talking import TalkingModel


def _counts(config) -> dict[str, int]:
    with torch.device("meta"):
        return count_parameters(TalkingModel(config))


def describe_preset(name: str) -> dict:
    """-> {name, source, parameters per network, config} of a preset (built on meta)."""
    from tmrender.models.init import preset_config

    config = preset_config(name)
    return {
        "name": name,
        "source": "preset",
        "parameters": _counts(config),
        "config": json.loads(config.to_json()),
    }


def describe_checkpoint(spec: str | None) -> dict:
    """-> {name, path, trained, dtype, sha256, size, parameters, config} of a checkpoint."""
    from tmrender.files import sha256_file
    from tmrender.render.weights import resolve_model_path

    path = resolve_model_path(spec)
    meta = read_metadata(path)
    return {
        "name": meta["config"].name,
        "path": str(path),
        "trained": meta["trained"],
        "dtype": _stored_dtypes(path),
        "sha256": sha256_file(path),
        "size_mb": round(Path(path).stat().st_size / 2**20, 2),
        "extra": meta["extra"],
        "parameters": _counts(meta["config"]),
        "config": json.loads(meta["config"].to_json()),
    }


def _stored_dtypes(path: Path) -> str:
    with safe_open(str(path), framework="pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    return ", ".join(sorted(dtypes))
