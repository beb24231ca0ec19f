"""What the chunk length gives `tmrender live`: the shipped tm-mini rendering chunks of 4,
2 (as shipped) and 1 latent frames (`TalkingModel.set_chunk_latent_frames`), each run as a
live session without WebRTC: speech pushed in real time, 20 ms at a
time, and one frame taken every 40 ms, as the server does. Prints, per chunk length, the
compute per chunk and the server's latency (audio in -> frame out; median of the page's
figures over the session) and how long frames waited to be sent.

    python scripts/live_chunks.py [--seconds 20] [--latents 4 2 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import torch

from tmrender.media.audio import SAMPLE_RATE, load_audio
from tmrender.media.image import load_image
from tmrender.models.registry import load_model
from tmrender.models.talking import TalkingModel
from tmrender.serve.session import LiveOptions, LiveSession

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BLOCK = SAMPLE_RATE // 50  # 20 ms, an Opus frame


def shipped_model(latents: int) -> TalkingModel:
    """The shipped model, rendering `latents` latent frames per chunk."""
    model, _ = load_model(None, "cpu")
    model.set_chunk_latent_frames(latents)
    return model


def run(latents: int, seconds: float) -> dict:
    model = shipped_model(latents)
    cfg = model.cfg
    reference = load_image(EXAMPLES / "face.png", (cfg.height, cfg.width))
    speech = load_audio(EXAMPLES / "speech.wav")
    audio = speech[(torch.arange(int(seconds * SAMPLE_RATE)) % speech.size).numpy()]
    session = LiveSession(model, reference, LiveOptions()).start()
    start = time.perf_counter()

    def feed() -> None:
        for k, i in enumerate(range(0, audio.size, BLOCK)):
            time.sleep(max(0.0, start + k * BLOCK / SAMPLE_RATE - time.perf_counter()))
            session.push_audio(audio[i : i + BLOCK])

    threading.Thread(target=feed, daemon=True).start()
    figures, tick = [], 0
    while time.perf_counter() - start < seconds:
        time.sleep(max(0.0, start + tick / cfg.fps - time.perf_counter()))
        session.next_frame()
        tick += 1
        if tick % (cfg.fps // 2) == 0:
            figures.append(session.snapshot())
    session.close()
    last = figures[-1]
    latency = [f["latency_ms"] for f in figures if f["latency_ms"] is not None]
    waits = [f["buffer_wait_ms"] for f in figures if f["buffer_wait_ms"] is not None]
    return {
        "latents_per_chunk": latents,
        "frames_per_chunk": cfg.frames_per_chunk,
        "compute_ms_per_chunk": last["compute_ms_per_chunk"],
        "server_latency_ms": round(statistics.median(latency)),
        "waiting_to_be_sent_ms": round(statistics.median(waits)),
        "frames_held": last["frames_held"],
        "frames_dropped": last["frames_dropped"],
        "audio_dropped_ms": last["audio_dropped_ms"],
        "load_average": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--latents", type=int, nargs="+", default=[4, 2, 1])
    args = parser.parse_args()
    for latents in args.latents:
        print(json.dumps(run(latents, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
