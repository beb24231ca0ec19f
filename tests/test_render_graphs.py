"""CUDA-graph replay of the steady chunk step (tmrender.render.graphs). The capture itself
needs a GPU; what the replay relies on is checked here on the CPU: after the warm-up chunks,
re-running the captured step with the captured (frozen) stream state, new noise and new
audio tokens gives exactly the frames of the eager loop, for both context modes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tmrender.media.audio import write_wav
from tmrender.models.dit import StreamState
from tmrender.models.presets import PRESETS
from tmrender.models.talking import TalkingModel
from tmrender.render import pipeline
from tmrender.render.graphs import WARMUP_CHUNKS, graph_ready


class ReplayOnCpu:
    """Stands in for `ChunkGraph`: the captured step re-run on the captured input buffers
    (Python runs again, but with the state object of the capture, as a replay would)."""

    made = 0

    def __init__(self, step, noise, tokens):
        ReplayOnCpu.made += 1
        self.step, self.noise, self.tokens = step, noise.clone(), tokens.clone()

    def replay(self, noise, tokens):
        self.noise.copy_(noise)
        self.tokens.copy_(tokens)
        return self.step(self.noise, self.tokens).clone()


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)


def model_with(context: str) -> TalkingModel:
    torch.manual_seed(0)
    cfg = PRESETS["tm-mini"]
    cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, context=context))
    net = TalkingModel(cfg).eval()
    with torch.no_grad():  # a fresh model's output head and audio output are zero
        net.dit.head.head.weight.normal_(0, 0.05)
        for block in net.dit.blocks:
            block.audio_cross_attn.o.weight.normal_(0, 0.5)
    return net


@pytest.mark.parametrize("context", ["refresh", "last_step"])
def test_replaying_the_captured_step_gives_the_eager_frames(context, face, tmp_path, monkeypatch):
    t = np.arange(32_000) / 16_000  # 2 s: 7 chunks, speech and pauses
    write_wav(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * t) > 0))
    model = model_with(context)

    def render(**options) -> np.ndarray:
        opts = pipeline.RenderOptions(**options)
        return np.concatenate(list(pipeline.render_frames(model, face, tmp_path / "a.wav", opts)))

    eager = render()
    monkeypatch.setattr(pipeline, "ChunkGraph", ReplayOnCpu)
    monkeypatch.setattr(
        pipeline, "graph_ready", lambda state, device: graph_ready(state, torch.device("cuda"))
    )
    monkeypatch.setattr(StreamState, "check_fresh", lambda self: None)  # replays skip Python
    made = ReplayOnCpu.made
    replayed = render(cuda_graphs=True)
    assert ReplayOnCpu.made == made + 1  # one capture, after the warm-up chunks
    assert replayed.shape == eager.shape
    assert np.array_equal(replayed, eager)


def test_graphs_wait_for_the_steady_state_and_a_gpu():
    window = object()
    steady = dataclasses.make_dataclass("S", ["window", "chunks_done"])
    assert not graph_ready(steady(window, WARMUP_CHUNKS), torch.device("cpu"))
    assert not graph_ready(steady(window, WARMUP_CHUNKS - 1), torch.device("cuda"))
    assert not graph_ready(steady(None, WARMUP_CHUNKS), torch.device("cuda"))
    assert graph_ready(steady(window, WARMUP_CHUNKS), torch.device("cuda"))
