"""Frame strips for the README and the issue notes.

    python scripts/strips.py video examples/speech.mp4 -o docs/example_strip.png
    python scripts/strips.py clip --data data --clip test-7-00003 -o docs/avatar_strip.png

`video`: evenly spaced frames of a rendered video, each labelled with its time.
`clip`: a corpus clip rendered from its first frame and audio: the truth's frames over the
model's, then the mouth of each (the clip's own mouth box, widened) enlarged 3x, at the
clip's widest openings and a closed moment, each labelled with its time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tmrender.media.video import read_video_frames

LABEL = 14  # pixels of the label band above each row
FPS = 25


def labelled_row(frames: list[np.ndarray], labels: list[str], gap: int = 4) -> Image.Image:
    """frames, each (H, W, 3) uint8 of one size -> one row image with a label band."""
    h, w = frames[0].shape[:2]
    row = Image.new("RGB", (len(frames) * (w + gap) - gap, h + LABEL), "white")
    draw = ImageDraw.Draw(row)
    for i, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        row.paste(Image.fromarray(frame), (i * (w + gap), LABEL))
        draw.text((i * (w + gap) + 2, 1), label, fill="black")
    return row


def stack(rows: list[Image.Image], gap: int = 6) -> Image.Image:
    width = max(r.width for r in rows)
    out = Image.new("RGB", (width, sum(r.height for r in rows) + gap * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height + gap
    return out


def video_strip(path: Path, count: int) -> Image.Image:
    frames = read_video_frames(path)
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return labelled_row([frames[i] for i in picks], [f"{i / FPS:.2f} s" for i in picks])


def mouth_crop(frames: np.ndarray, box: np.ndarray, scale: int = 3) -> list[np.ndarray]:
    """The same square around `box` (x0, y0, x1, y1) of every frame, enlarged `scale`x."""
    x0, y0, x1, y1 = box
    side = int(max(x1 - x0, y1 - y0) * 1.6)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    h, w = frames.shape[1:3]
    left = int(np.clip(cx - side // 2, 0, w - side))
    top = int(np.clip(cy - side // 2, 0, h - side))
    return [
        np.asarray(
            Image.fromarray(f[top : top + side, left : left + side]).resize(
                (side * scale, side * scale), Image.Resampling.NEAREST
            )
        )
        for f in frames
    ]


def clip_strip(data: Path, clip_id: str, model_name: str, count: int, split: str) -> Image.Image:
    from tmrender.data.corpus import read_clip
    from tmrender.data.visemes import PARAMS
    from tmrender.eval.sources import model_source
    from tmrender.models.registry import load_model
    from tmrender.render.pipeline import RenderOptions

    clip = read_clip(data / split / clip_id)
    model, _ = load_model(model_name, "cpu")
    rendered = model_source(model, RenderOptions())(clip)
    opening = clip.mouth[:, PARAMS.index("open")]
    widest = [int(i) for i in np.argsort(-opening) if i > 0]
    picks: list[int] = []
    for i in widest:  # the widest openings, at least half a second apart
        if all(abs(i - j) >= FPS // 2 for j in picks):
            picks.append(i)
        if len(picks) == count - 1:
            break
    picks.append(int(np.argmin(np.where(np.arange(len(opening)) > 0, opening, np.inf))))
    picks.sort()
    labels = [f"{i / FPS:.2f} s" for i in picks]
    box = np.median(clip.mouth_boxes[picks], axis=0).astype(int)
    truth, render = clip.frames[picks], rendered[picks]
    return stack(
        [
            labelled_row(list(truth), [f"truth {t}" for t in labels]),
            labelled_row(list(render), [f"{model.cfg.name} {t}" for t in labels]),
            labelled_row(mouth_crop(truth, box), ["truth"] * len(picks)),
            labelled_row(mouth_crop(render, box), ["render"] * len(picks)),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    video = sub.add_parser("video", help="evenly spaced frames of a video")
    video.add_argument("path", type=Path)
    video.add_argument("--frames", type=int, default=10)
    clip = sub.add_parser("clip", help="a corpus clip: truth over render, mouths enlarged")
    clip.add_argument("--data", type=Path, required=True)
    clip.add_argument("--split", default="test")
    clip.add_argument("--clip", required=True, help="clip id, e.g. test-7-00003")
    clip.add_argument("--model", default=None, help="model name or file (default: tm-mini)")
    clip.add_argument("--frames", type=int, default=6)
    for p in (video, clip):
        p.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    if args.kind == "video":
        image = video_strip(args.path, args.frames)
    else:
        image = clip_strip(args.data, args.clip, args.model, args.frames, args.split)
    image.save(args.out)
    print(f"wrote {args.out} ({image.width}x{image.height})")


if __name__ == "__main__":
    main()
