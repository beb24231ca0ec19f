"""The one streaming rollout: what the training stages stream (`stream.student_rollout`) is
exactly what the renderer streams, in both context modes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tmrender.diffusion import stream
from tmrender.diffusion.stream import StreamPlan, student_rollout
from tmrender.media.audio import write_wav
from tmrender.models.talking import TalkingModel
from tmrender.render import pipeline

from .conftest import randomized_model, tiny_model_config


def tiny_student(context: str) -> TalkingModel:
    """A tiny model with random weights everywhere, streaming with `context`."""
    cfg = tiny_model_config()
    cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, context=context))
    torch.manual_seed(0)
    return randomized_model(TalkingModel(cfg))


def render_recorded(monkeypatch, model: TalkingModel, image: np.ndarray, wav) -> dict:
    """Render through the real renderer, recording each chunk's inputs and clean output."""
    seen: dict[str, list] = {"inputs": [], "clean": []}
    real_rollout = pipeline.rollout

    def recording(stepper, state, chunks):
        def inputs():
            for chunk in chunks:
                seen["inputs"].append(chunk)
                yield chunk

        for out in real_rollout(stepper, state, inputs()):
            seen["clean"].append(out.clean.clone())
            yield out

    monkeypatch.setattr(pipeline, "rollout", recording)
    frames = list(pipeline.render_frames(model, image, wav, pipeline.RenderOptions(seed=3)))
    assert sum(len(f) for f in frames) == 100  # 4 s at 25 fps: the render ran to the end
    return seen


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    """4 s of a chirp with a pause in the middle (speaking and silence chunks)."""
    t = np.arange(64_000) / 16_000
    wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * t) * t)
    wave[24_000:40_000] = 0.0
    path = tmp_path_factory.mktemp("stream") / "speech.wav"
    write_wav(path, wave.astype(np.float32))
    return path


@pytest.mark.parametrize("context", ["refresh", "last_step"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_training_rollout_streams_exactly_the_renderers_latents(
    monkeypatch, speech_wav, context, grad
):
    model = tiny_student(context)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    seen = render_recorded(monkeypatch, model, image, speech_wav)
    assert len(seen["inputs"]) > 2
    with torch.no_grad():
        anchor = pipeline.encode_reference(model, image)
    noise = torch.cat([c.noise for c in seen["inputs"]], dim=2).clone()
    tokens = torch.cat([c.tokens for c in seen["inputs"]], dim=1).clone()
    rendered = torch.cat(seen["clean"], dim=2)
    plan = StreamPlan.for_sampler(model.cfg.sampler)
    assert plan.context == context
    trainee = tiny_student(context)  # a fresh copy: no table the render cached in inference mode
    with torch.set_grad_enabled(grad):
        x0, clean = student_rollout(trainee.dit, plan, anchor.clone(), tokens, noise)
    assert x0.requires_grad == grad and not clean.requires_grad
    assert torch.equal(clean, rendered)
    assert torch.equal(x0.detach(), rendered)  # the exit step is the last one


def test_the_two_context_modes_stream_differently(monkeypatch, speech_wav):
    """The rollout follows the checkpoint's context mode (the test above is not vacuous)."""
    model = tiny_student("refresh")
    image = np.full((32, 32, 3), 128, np.uint8)
    seen = render_recorded(monkeypatch, model, image, speech_wav)
    with torch.no_grad():
        anchor = pipeline.encode_reference(model, image)
        noise = torch.cat([c.noise for c in seen["inputs"]], dim=2)
        tokens = torch.cat([c.tokens for c in seen["inputs"]], dim=1)
        refresh = student_rollout(model.dit, StreamPlan.for_sampler(model.cfg.sampler), anchor,
                                  tokens, noise)[1]  # fmt: skip
        last = StreamPlan.for_sampler(model.cfg.sampler, "last_step")
        other = student_rollout(model.dit, last, anchor, tokens, noise)[1]
    c = model.cfg.chunk_latent_frames
    assert torch.equal(refresh[:, :, :c], other[:, :, :c])  # the first chunk has no context
    assert not torch.allclose(refresh[:, :, c:], other[:, :, c:], atol=1e-4)


def test_the_rollout_never_commits_the_last_chunk():
    """A lazy chunk source: each chunk is denoised once and committed only when another
    follows."""
    calls: list[str] = []

    class Recorder(stream.Student):
        def __init__(self):
            pass

        def denoise(self, state, chunk):
            calls.append(f"denoise {chunk}")
            return chunk

        def commit(self, state, chunk, out):
            calls.append(f"commit {chunk}")
            return state

    outs = list(stream.rollout(Recorder(), None, iter([1, 2, 3])))
    assert outs == [1, 2, 3]
    assert calls == ["denoise 1", "commit 1", "denoise 2", "commit 2", "denoise 3"]


def test_a_plan_refuses_an_unknown_context():
    with pytest.raises(ValueError, match="context must be one of"):
        StreamPlan((1.0, 0.5), context="stale")
