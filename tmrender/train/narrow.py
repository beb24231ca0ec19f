"""The narrow audio path (`AudioProjConfig.source` "mouth"): the DiT reads the 7 mouth
parameters that the audio stage's frozen mouth head reads off the encoder's features, not
the features themselves.

The teacher stage can start on it (`--audio-heads`: a fresh projection of the mouth
parameters), and the ode stage can switch a trained student to it: `narrow_audio_path`
swaps the projection, then `fit_narrow_projection` fits the new projection to the old
one's tokens before the regression starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from tmrender.errors import UserInputError
from tmrender.models.audio import AudioProjection, MouthHead
from tmrender.models.checkpoint import load_checkpoint
from tmrender.models.talking import TalkingModel

HEAD_KEYS = {"norm.weight", "norm.bias", "conv.weight", "conv.bias", "mouth.weight", "mouth.bias"}


def mouth_head_state(path: Path) -> dict[str, Tensor]:
    """The mouth head's tensors (norm, conv, mouth) from an audio-stage run checkpoint
    (`checkpoint.pt`, network "heads"), a safetensors file of just those tensors
    (`weights/stages/audio_heads.safetensors`) or an export with an `audio_head`."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"--audio-heads {path}: no such file")
    if path.suffix == ".safetensors":
        plain = load_file(str(path))
        if set(plain) == HEAD_KEYS:
            return plain
        other, _ = load_checkpoint(path, device="cpu")
        if other.audio_head is None:
            raise UserInputError(f"--audio-heads {path}: this export has no mouth head")
        return other.audio_head.state_dict()
    saved = torch.load(path, map_location="cpu", weights_only=False)
    heads = saved.get("networks", {}).get("heads") if isinstance(saved, dict) else None
    if heads is None:
        raise UserInputError(f"--audio-heads {path}: not an audio-stage run checkpoint")
    return {k: v for k, v in heads.items() if not k.startswith("phoneme.")}


def narrow_audio_path(model: TalkingModel, head_state: dict[str, Tensor], seed: int) -> nn.Module:
    """Switch `model` to the narrow audio path in place: config source "mouth", the frozen
    mouth head loaded from `head_state`, a new (seeded) projection of the mouth parameters.
    Returns the old projection (for `fit_narrow_projection`)."""
    device = next(model.audio_proj.parameters()).device
    hidden, _, width = head_state["conv.weight"].shape
    proj_cfg = replace(
        model.cfg.audio_proj, source="mouth", head_hidden=hidden, head_context=width // 2
    )
    model.cfg = replace(model.cfg, audio_proj=proj_cfg)
    head = MouthHead(model.cfg.audio_feature_dim, hidden, width // 2)
    head.load_state_dict(head_state)
    model.audio_head = head.to(device).requires_grad_(False).eval()
    old = model.audio_proj
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        proj = AudioProjection(
            proj_cfg, model.cfg.audio_window_frames, model.cfg.audio_proj_input_dim,
            model.cfg.dit.audio_dim,
        )  # fmt: skip
    model.audio_proj = proj.to(device)
    return old.requires_grad_(False)


def fit_narrow_projection(
    model: TalkingModel, old: nn.Module, windows: Callable[[], Tensor], steps: int
) -> float:
    """Fit the new projection to the old one's tokens (mean squared error, Adam): the DiT's
    audio layers then start from tokens close to those they learned on, keeping what the
    mouth parameters can carry. windows() -> the next feature windows (B, T, W, L, D).
    Returns the last step's loss."""
    params = list(model.audio_proj.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    loss = torch.zeros(())
    for _ in range(steps):
        w = windows()
        with torch.no_grad():
            target = old(w)
        loss = (model.audio_tokens(w) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())
