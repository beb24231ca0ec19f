"""The corpus's picture pages in docs/: a contact sheet of avatars and a labelled mouth strip.

Regenerate with ``python -m tmrender.data.sheets [DOCS_DIR]`` (default: ./docs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tmrender.data import avatar, speech, visemes
from tmrender.media.audio import SAMPLE_RATE, frames_for_samples

SHEET_SEEDS = range(100, 116)
STRIP_TEXT = "Mama buys five blue shoes, with fresh peaches."
STRIP_VOICE = speech.Voice("en", "f3", 140, 50, 50)


def contact_sheet(seeds=SHEET_SEEDS, size: int = 192, columns: int = 4) -> Image.Image:
    """Avatars of `seeds` in a grid, each `size` pixels, neutral with the mouth closed."""
    tiles = [avatar.draw_avatar(seed, size) for seed in seeds]
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return Image.fromarray(np.concatenate(rows, axis=0))


def mouth_strip(
    text: str = STRIP_TEXT, voice: speech.Voice = STRIP_VOICE, seed: int = 104, zoom: int = 2
) -> Image.Image:
    """One frame per phoneme of a spoken sentence, drawn at 128 px and cropped to the lower
    face, magnified `zoom` times (nearest) and labelled with the eSpeak phoneme and `open`."""
    speech.reset_engine()
    audio, phonemes = speech.speak_phrase(text, voice)
    mouth = visemes.mouth_track(phonemes, frames_for_samples(audio.size, visemes.FPS))
    renderer = avatar.AvatarRenderer(avatar.sample_appearance(np.random.default_rng(seed)), 128)
    font = _font(11 * zoom // 2 + 4)
    tiles = []
    for p in phonemes:
        if p.is_pause:
            continue
        frame_index = min(int((p.start + p.end) / 2 / SAMPLE_RATE * visemes.FPS), len(mouth) - 1)
        frame = renderer.draw(mouth[frame_index], avatar.neutral_pose())
        x0, y0, x1, y1 = frame.mouth_box
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        crop = Image.fromarray(frame.pixels).crop((cx - 24, cy - 20, cx + 24, cy + 20))
        tile = Image.new("RGB", (48 * zoom, 40 * zoom + 34), "white")
        tile.paste(crop.resize((48 * zoom, 40 * zoom), Image.NEAREST), (0, 0))
        label = ImageDraw.Draw(tile)
        label.text((4, 40 * zoom + 2), p.name, fill="black", font=font)
        label.text(
            (4, 40 * zoom + 18),
            f"open {mouth[frame_index, visemes.OPEN]:.2f}",
            fill=(90, 90, 90),
            font=_font(11),
        )
        tiles.append(np.asarray(tile))
    per_row = 11
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % per_row)
    rows = [np.concatenate(tiles[i : i + per_row], axis=1) for i in range(0, len(tiles), per_row)]
    strip = Image.fromarray(np.concatenate(rows, axis=0))
    page = Image.new("RGB", (strip.width, strip.height + 26), "white")
    page.paste(strip, (0, 26))
    ImageDraw.Draw(page).text(
        (6, 5),
        f'"{text}"  ({voice.espeak_name}, 128 px frames, x{zoom})',
        fill="black",
        font=_font(14),
    )
    return page


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def main(argv: list[str] | None = None) -> None:
    """Write avatars.png and mouth_strip.png into the folder given (default ./docs)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "docs")
    out.mkdir(parents=True, exist_ok=True)
    contact_sheet().save(out / "avatars.png", optimize=True)
    mouth_strip().save(out / "mouth_strip.png", optimize=True)
    print(f"wrote {out / 'avatars.png'} and {out / 'mouth_strip.png'}")


if __name__ == "__main__":
    main()
