"""The temporal filters compared, for `tmrender live`'s choice: no filter, the file
render's centred filter, the causal one (`RenderOptions.temporal`). For each, rendered by
the shipped tm-mini from `examples/face.png`:

- on `examples/speech.wav`: the frame-to-frame change (mean absolute difference, 0..255
  levels), and the flicker: the change into each latent's first frame over the change
  inside latents, and the same at chunk boundaries (1 = no step there);
- on pieces of that speech after silences (the live measure's onsets): the mouth's
  half-rise after each onset (the mouth reader), median, and against no filter (median and
  mean of the differences): what the filter costs in lip timing;
- frames the filter holds back for the next chunk.

    python scripts/live_flicker.py [--onsets 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from tmrender.eval.metrics import frame_motion
from tmrender.eval.mouth import load_mouth_reader, read_mouth
from tmrender.media.audio import SAMPLE_RATE, load_audio, write_wav
from tmrender.models.registry import load_model
from tmrender.render.pipeline import RenderOptions, render_frames
from tmrender.serve.measure import half_rise, onset_signal

ROOT = Path(__file__).resolve().parents[1]
FILTERS = {
    "none": RenderOptions(deflicker=False),
    "centred (file render)": RenderOptions(),
    "causal (live)": RenderOptions(temporal="causal"),
}


def step_ratio(motion: np.ndarray, period: int) -> float:
    """Change into frames k with k % period == 0 over the change into the others; motion[i]
    is the change from frame i to frame i + 1."""
    into = np.arange(1, motion.size + 1)
    at = into % period == 0
    return float(motion[at].mean() / motion[~at].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onsets", type=int, default=16)
    args = parser.parse_args()
    model, _ = load_model(None, "cpu")
    cfg = model.cfg
    face, speech = ROOT / "examples" / "face.png", ROOT / "examples" / "speech.wav"
    signal, onsets = onset_signal(load_audio(speech), args.onsets)
    reader = load_mouth_reader()
    rises = {}
    with tempfile.TemporaryDirectory() as folder:
        pieces = Path(folder) / "onsets.wav"
        write_wav(pieces, signal)
        for name, options in FILTERS.items():
            blocks = list(render_frames(model, face, speech, options))
            frames = np.concatenate(blocks)
            motion = frame_motion(frames)
            opening = read_mouth(
                reader, np.concatenate(list(render_frames(model, face, pieces, options)))
            )[:, 0]
            times = (np.arange(opening.size) + 1) / cfg.fps  # a frame ends at (i + 1) / fps
            rise = [half_rise(times, opening, s / SAMPLE_RATE) for s in onsets]
            late = [
                np.nan if r is None else r - s / SAMPLE_RATE
                for r, s in zip(rise, onsets, strict=True)
            ]
            rises[name] = np.array(late)
            delta = rises[name] - rises["none"]
            print(json.dumps({
                "filter": name,
                "motion_levels": round(float(motion.mean()), 2),
                "latent_boundary_step_ratio": round(step_ratio(motion, cfg.frames_per_latent), 2),
                "chunk_boundary_step_ratio": round(step_ratio(motion, cfg.frames_per_chunk), 2),
                "half_rise_ms": round(1000 * float(np.nanmedian(rises[name]))),
                "half_rise_vs_none_ms_median_mean": [
                    round(1000 * float(np.nanmedian(delta))), round(1000 * float(np.nanmean(delta)))
                ],
                "frames_held_back": cfg.frames_per_chunk - len(blocks[0]),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
