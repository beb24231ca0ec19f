"""The retraining issue's real-face figures: how well a model keeps a real face it is given.

For every picture in a folder (default: ../shared/realworld/faces/), the aligned crop that
`generate --face auto` renders is rendered with a speech file, and compared with itself:

- upper-face SSIM: frame 25 against the aligned input, over the rows from the brows to the
  nose tip and the columns of the face outline (68 landmarks of the aligned input): do
  the eyes, nose and outline keep their shape?
- face PSNR with the mouth closed: the face (brows to chin, outline's columns) against the
  aligned input, over the frames whose landmark mouth opening is no wider than the
  input's own by more than REST eye distances (the mouth at rest, as in the portrait:
  how far the face drifts where nothing should move);
- and a strip per picture: aligned input, frame 25, the widest-open frame.

    python scripts/real_faces.py --audio speech.wav --model tm-mini --model new.safetensors \
        --strip docs/real_faces_strip.png --strip-faces liveportrait_s2,sadtalker_sad

Prints one table row per picture and model, then each model's worst and mean.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from tmrender.eval.metrics import psnr, ssim_map
from tmrender.faces.measure import framed_landmarks, framed_mouth
from tmrender.models.registry import load_model
from tmrender.render.pipeline import render_frames
from tmrender.render.source import load_picture

REST = 0.04  # landmark mouth opening over the input's, in eye distances: the mouth at rest
FRAME = 25
PICTURES = (".png", ".jpg", ".jpeg", ".webp")


def regions(points: np.ndarray, side: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(upper face, whole face) as (rows, columns) slices of a model-framed frame, from its
    68 landmarks (68, 2): brows (17-26) to the nose tip (30) or to the chin (8), between
    the outline's (0-16) outermost columns."""
    x0, x1 = points[0:17, 0].min(), points[0:17, 0].max()
    top, nose, chin = points[17:27, 1].min(), points[30, 1], points[8, 1]

    def box(y0: float, y1: float) -> tuple[slice, slice]:
        rows = slice(max(0, int(np.floor(y0))), min(side, int(np.ceil(y1)) + 1))
        return rows, slice(max(0, int(np.floor(x0))), min(side, int(np.ceil(x1)) + 1))

    return box(top, nose), box(top, chin)


def measure(model, picture: Path, audio: Path) -> tuple[dict, np.ndarray]:
    """One picture's figures and its strip row (S, 3 S, 3) uint8."""
    reference = load_picture(picture).for_model(model.cfg.height, paste_back=False).reference
    frames = np.concatenate(list(render_frames(model, reference, audio)))
    side = reference.shape[0]
    upper, face = regions(framed_landmarks(reference), side)
    ssim_upper = float(ssim_map(frames[FRAME : FRAME + 1], reference[None])[0][upper].mean())
    opening = framed_mouth(frames)[:, 0]
    closed = opening <= framed_mouth(reference[None])[0, 0] + REST
    face_psnr = (
        float(
            np.mean(
                psnr(
                    frames[closed][:, face[0], face[1]],
                    reference[None][:, face[0], face[1]].repeat(closed.sum(), 0),
                )
            )
        )  # fmt: skip
        if closed.any()
        else float("nan")
    )
    row = np.concatenate([reference, frames[FRAME], frames[int(np.argmax(opening))]], axis=1)
    figures = {
        "ssim_upper_f25": ssim_upper,
        "face_psnr_closed": face_psnr,
        "closed_frames": int(closed.sum()),
        "frames": len(frames),
        "max_opening": float(opening.max()),
    }
    return figures, row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=Path("../shared/realworld/faces"))
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--strip", type=Path, default=None, help="PNG of the strip rows")
    parser.add_argument("--strip-faces", default="", help="comma-separated picture stems")
    parser.add_argument(
        "--keep-reference", default=None, help="lo,hi or none: override the model's"
    )
    args = parser.parse_args()
    pictures = sorted(p for p in args.faces.iterdir() if p.suffix.lower() in PICTURES)
    chosen = [s for s in args.strip_faces.split(",") if s]
    strip = []
    for spec in args.model or ["tm-mini"]:
        model, _ = load_model(spec, "cpu")
        if args.keep_reference is not None:
            keep = () if args.keep_reference == "none" else tuple(
                float(v) for v in args.keep_reference.split(",")
            )  # fmt: skip
            sampler = replace(model.cfg.sampler, keep_reference=keep)
            model.cfg = replace(model.cfg, sampler=sampler)
        rows = []
        for picture in pictures:
            figures, row = measure(model, picture, args.audio)
            rows.append(figures)
            print(f"{spec:28s} {picture.stem:24s} " + "  ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
            ), flush=True)  # fmt: skip
            if picture.stem in chosen:
                strip.append(row)
        for key in ("ssim_upper_f25", "face_psnr_closed"):
            values = np.array([r[key] for r in rows], np.float64)
            print(f"{spec:28s} {key}: worst {np.nanmin(values):.3f}, mean {np.nanmean(values):.3f}")
    if args.strip is not None and strip:
        image = np.concatenate(strip, axis=0)
        big = Image.fromarray(image).resize((image.shape[1] * 2, image.shape[0] * 2))
        big.save(args.strip)
        print(f"wrote {args.strip}")


if __name__ == "__main__":
    main()
