"""CUDA-graph replay of the renderer's steady chunk step, for GPUs.

A 2-step student is launch-bound on a fast GPU: the 1.3B-shaped DiT issues tens of thousands
of small kernels per second of video and its stream is often idle (figures in
`docs/PERFORMANCE.md`). After the first chunk everything in a chunk step has a fixed shape
and a fixed place: the RoPE slots are window-relative (chunk 1000 looks exactly like chunk
2), the KV window is preallocated, and `commit_kv` / `commit_chunk` write the previous
chunk into it in place. So one capture
of "denoising steps + commit" replays for every later chunk, with the new noise and audio
tokens copied into the captured input buffers first.

What replay skips is Python: the stream state's `generation` counter and `chunks_done`
stop advancing, so after the capture the renderer must not use its `StreamState` again
(it doesn't: every later chunk is a replay). `graph_ready` says when the state is steady.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

WARMUP_CHUNKS = 2  # eager chunks first: chunk 1 attends to a shorter window, chunk 2 warms up


def graph_ready(state, device: torch.device) -> bool:
    """True when a chunk step from `state` can be captured and replayed: on a CUDA device,
    with the preallocated KV window, after `WARMUP_CHUNKS` eager chunks (the first attends
    to a shorter window; the second runs the steady shapes once, so that libraries have
    initialised their kernels and workspaces before the capture)."""
    return device.type == "cuda" and state.window is not None and state.chunks_done >= WARMUP_CHUNKS


class ChunkGraph:
    """One captured chunk step. `step(noise, tokens) -> clean` must do all its work on the
    GPU with fixed shapes (no host synchronisation, no new Python state that later steps
    read). The capture runs nothing; `replay` runs the captured work."""

    def __init__(self, step: Callable[[Tensor, Tensor], Tensor], noise: Tensor, tokens: Tensor):
        """noise, tokens: examples of the inputs (their shapes and dtypes are fixed from now on)."""
        self.noise = noise.clone()
        self.tokens = tokens.clone()
        self.graph = torch.cuda.CUDAGraph()
        # other threads (the VAE decoder) keep launching work while this one captures
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.clean = step(self.noise, self.tokens)

    def replay(self, noise: Tensor, tokens: Tensor) -> Tensor:
        """Run the step on new inputs of the captured shapes; returns the clean chunk (a
        copy: the captured output buffer is overwritten by the next replay)."""
        assert noise.shape == self.noise.shape and tokens.shape == self.tokens.shape, (
            f"replay inputs {tuple(noise.shape)}, {tuple(tokens.shape)} differ from the "
            f"captured {tuple(self.noise.shape)}, {tuple(self.tokens.shape)}"
        )
        self.noise.copy_(noise)
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.clean.clone()
