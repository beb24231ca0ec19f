"""Facts about a model for `tmrender info`: config, parameter counts, dtype, checksum, and
per network (DiT base, audio layers, VAE, image and text encoders, wav2vec2, ...) its
parameters, stored dtype, whether it is trained, and for converted models where it came
from (the layout and the parameter counts read from the source, kept in the checkpoint's
metadata by `tmrender convert`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from tmrender.models.checkpoint import count_parameters, read_metadata
from tmrender.models.talking import TalkingModel

# the networks `info` lists, in this order; the DiT is split into its base and audio layers
NETWORKS = (
    "dit.base", "dit.audio", "vae", "image_encoder", "text_encoder", "audio_encoder",
    "audio_proj", "silence",
)  # fmt: skip
AUDIO_LAYER_PARTS = (".audio_cross_attn.", ".norm_audio.")


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
    from tmrender.models.registry import resolve_model_path

    path = resolve_model_path(spec)
    meta = read_metadata(path)
    counts = _counts(meta["config"])
    dtypes = _stored_dtypes(path)
    converted = meta["extra"].get("converted_from", {})
    return {
        "name": meta["config"].name,
        "path": str(path),
        "trained": meta["trained"],
        "dtype": ", ".join(sorted(set().union(*dtypes.values()))),
        "layout": converted.get("layout"),
        "sha256": sha256_file(path),
        "size_mb": round(Path(path).stat().st_size / 2**20, 2),
        "networks": network_facts(counts, dtypes, meta["trained"], meta["extra"]),
        "extra": meta["extra"],
        "parameters": counts,
        "config": json.loads(meta["config"].to_json()),
    }


def network_of(tensor: str) -> str:
    """The `info` network of a checkpoint tensor: its prefix, the DiT split in two."""
    prefix = tensor.split(".", 1)[0]
    if prefix != "dit":
        return prefix
    return "dit.audio" if any(p in tensor for p in AUDIO_LAYER_PARTS) else "dit.base"


def network_facts(
    counts: dict[str, int], dtypes: dict[str, set[str]], trained: bool, extra: dict
) -> dict[str, dict]:
    """{network: {parameters, dtype, trained[, source_parameters]}} of the networks the
    model has. `trained` comes from the converter's trained/untrained parts when the file
    names them, else from the checkpoint's `trained` flag."""
    trained_parts = extra.get("trained_parts")
    sourced = extra.get("source_parameters", {})
    facts = {}
    for name in NETWORKS:
        if name not in counts:
            continue
        row = {
            "parameters": counts[name],
            "dtype": _float_dtypes(dtypes.get(name, set())),
            "trained": name in trained_parts if trained_parts is not None else trained,
        }
        if name in sourced:
            row["source_parameters"] = sourced[name]
        facts[name] = row
    return facts


def _stored_dtypes(path: Path) -> dict[str, set[str]]:
    """{network: the safetensors dtypes of its tensors} from the file's header."""
    found: dict[str, set[str]] = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118
            found.setdefault(network_of(k), set()).add(str(f.get_slice(k).get_dtype()))
    return found


def _float_dtypes(dtypes: set[str]) -> str:
    """A network's weight dtype(s): its floating ones (its integer buffers, e.g. the
    tokenizer bytes, left out), comma-joined."""
    floats = dtypes & {"F64", "F32", "F16", "BF16"}
    return ", ".join(sorted(floats or dtypes)) or "-"
