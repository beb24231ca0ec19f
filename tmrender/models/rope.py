"""3-D rotary position embedding (RoPE) split over (time, height, width), Wan2.1 layout.

A head of width `d` is rotated in `d / 2` adjacent pairs (x[2i], x[2i+1]) — Wan's
`view_as_complex` pairing — and the pairs are split between the axes as Wan splits them:
height and width get `d // 6` pairs each, time the rest (`d/2 - 2 (d // 6)`). Axis `a` with
`n_a` pairs uses frequencies `theta ** (-2 i / (2 n_a))`, i < n_a (Su et al., RoFormer,
eq. 34; Wan `rope_params`). Computed from positions on the fly (no 1024-entry table), in
real arithmetic, so it runs in any dtype and on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tmrender.models.fused import rotate_pairs


def rope_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs given to (t, h, w) for a head of width `head_dim` (Wan's split)."""
    assert head_dim % 2 == 0, f"head_dim {head_dim} must be even"
    hw = head_dim // 6
    return head_dim // 2 - 2 * hw, hw, hw


def grid_positions(frames: Tensor, height: int, width: int) -> Tensor:
    """Token positions (t, h, w) of a latent token grid, frame-major.

    frames: (T,) time position of each token frame (may be any float/int values).
    Returns (T * height * width, 3) float64.
    """
    t = frames.to(torch.float64)
    h = torch.arange(height, dtype=torch.float64, device=t.device)
    w = torch.arange(width, dtype=torch.float64, device=t.device)
    grid = torch.stack(torch.meshgrid(t, h, w, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3)


@dataclass(frozen=True)
class Rope:
    """cos / sin of the rotation angles of L tokens, each (L, head_dim / 2) float32."""

    cos: Tensor
    sin: Tensor

    @classmethod
    def at(cls, positions: Tensor, head_dim: int, theta: float) -> Rope:
        """positions (L, 3) (t, h, w) -> the rotation of each token's pairs."""
        assert positions.ndim == 2 and positions.shape[1] == 3
        angles = []
        for axis, pairs in enumerate(rope_axis_pairs(head_dim)):
            dim = 2 * pairs
            exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device)
            freqs = 1.0 / theta ** (exponent / dim)
            angles.append(positions[:, axis, None] * freqs)
        angle = torch.cat(angles, dim=1)
        return cls(angle.cos().float(), angle.sin().float())

    def __len__(self) -> int:
        return self.cos.shape[0]

    def apply(self, x: Tensor) -> Tensor:
        """Rotate x (B, L, H, head_dim) in adjacent pairs; returns x's shape and dtype."""
        b, n, h, d = x.shape
        assert n == len(self) and d == 2 * self.cos.shape[1], (
            f"rope for {len(self)} tokens x {2 * self.cos.shape[1]} dims, got {tuple(x.shape)}"
        )
        return rotate_pairs(x, self.cos, self.sin)
