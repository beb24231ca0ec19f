"""Procedural images with the statistics of natural photographs (numpy + Pillow, seeded).

The VAE and the DiT must not be able to memorise appearance: these generators give them
images no avatar has. Every function draws all its randomness from the `rng` it is given,
so the same seed gives the same pixels.

- `fractal_noise`: Gaussian noise with a 1/f^beta power spectrum (natural images: beta ~ 2).
- `dead_leaves`: occluding discs with radii drawn from a 1/r^3 density, the classic model
  of the scale invariance and sharp edges of natural images (Lee, Mumford and Huang 2001).
- `grating`, `gradient`: oriented periodic texture and smooth colour ramps.
- `lighting`, `colour_cast`: a soft directional light and a white-balance error.
- `texture_image`: one of the above, coloured, lit and cast: an RGB uint8 picture.
- `gain_map`: a grey texture around 1, to modulate a flat-coloured region (avatar skin,
  hair, clothes) multiplicatively.
- `texture_frames`: a clip of a texture (or a photo shipped by an installed package)
  panning, zooming and changing light, for VAE training.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TEXTURE_KINDS = ("dead_leaves", "fractal", "grating", "gradient", "mixed")


def fractal_noise(rng: np.random.Generator, size: int, beta: float = 2.0) -> np.ndarray:
    """Noise whose power spectrum falls as 1/f^beta, scaled to [0, 1]: float32 (size, size)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0 / size  # no infinite DC term
    amplitude = f ** (-beta / 2)
    amplitude[0, 0] = 0.0
    spectrum = amplitude * (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape))
    field = np.fft.irfft2(spectrum, s=(size, size))
    lo, hi = field.min(), field.max()
    return ((field - lo) / max(hi - lo, 1e-9)).astype(np.float32)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour in [0, 1], float32 (3,): random hue, saturation and value."""
    hue, sat, val = rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.1, 1.0)
    rgb = np.array([hue, hue + 2 / 3, hue + 1 / 3]) % 1.0
    base = np.clip(np.abs(rgb * 6 - 3) - 1, 0, 1)  # a hue wheel
    return (val * (1 - sat + sat * base)).astype(np.float32)


def dead_leaves(
    rng: np.random.Generator,
    size: int,
    r_min: float = 0.01,
    r_max: float = 0.25,
    leaves: int = 400,
    palette: np.ndarray | None = None,
) -> np.ndarray:
    """A dead-leaves image: float32 (size, size, 3) in [0, 1].

    `leaves` discs (radii r_min..r_max of the image width, density 1/r^3, sampled by
    inverse transform) are drawn back to front; each has a colour of `palette` (K, 3)
    or a random one, varied a little in brightness.
    """
    # radius with density ~ r^-3 on [r_min, r_max]: inverse CDF of 1/r^2
    u = rng.random(leaves)
    radii = 1.0 / np.sqrt(r_min**-2 - u * (r_min**-2 - r_max**-2))
    centres = rng.random((leaves, 2)) * 1.2 - 0.1
    if palette is None:
        palette = np.stack([random_colour(rng) for _ in range(int(rng.integers(3, 9)))])
    picks = rng.integers(len(palette), size=leaves)
    shade = rng.uniform(0.75, 1.2, leaves)
    img = Image.new("RGB", (size, size), tuple(int(c * 255) for c in palette[picks[0]]))
    draw = ImageDraw.Draw(img)
    for (cx, cy), r, k, s in zip(centres * size, radii * size, picks, shade, strict=True):
        colour = tuple(int(v) for v in np.clip(palette[k] * s * 255, 0, 255))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    return np.asarray(img, np.float32) / 255.0


def grating(rng: np.random.Generator, size: int) -> np.ndarray:
    """An oriented, noise-warped periodic texture (stripes, weave, checks) in [0, 1]:
    float32 (size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(4, 40)
    warp = (fractal_noise(rng, size, 2.5) - 0.5) * rng.uniform(0.0, 2.0)
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) * freq * 2 * np.pi + warp * 2 * np.pi
    wave = np.sin(phase)
    if rng.random() < 0.4:  # a second direction: weave or checks
        phase2 = (-xx * np.sin(angle) + yy * np.cos(angle)) * freq * rng.uniform(0.5, 2) * 2 * np.pi
        wave = wave * np.sin(phase2)
    sharpness = rng.uniform(1.0, 8.0)  # 1: sinusoid .. 8: almost square
    return (0.5 + 0.5 * np.tanh(sharpness * wave) / np.tanh(sharpness)).astype(np.float32)


def gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear or radial ramp in [0, 1] with a random direction and centre: (size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle) + 0.5
    else:
        cx, cy = rng.uniform(-0.2, 1.2, 2)
        t = np.hypot(xx - cx, yy - cy) * rng.uniform(0.6, 1.5)
    return np.clip(t, 0, 1).astype(np.float32)


def lighting(rng: np.random.Generator, size: int, strength: float = 0.35) -> np.ndarray:
    """A soft light: a directional ramp times a wide spot, around 1: float32 (size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)
    cx, cy = rng.uniform(0.1, 0.9, 2)
    spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / rng.uniform(0.1, 0.6))
    light = 1.0 + strength * rng.uniform(0.3, 1.0) * (ramp + 0.5 * (spot - spot.mean()))
    return light.astype(np.float32)


def colour_cast(rng: np.random.Generator, strength: float = 0.12) -> np.ndarray:
    """Per-channel gains of a white-balance error (warm, cool, green, magenta): (3,)."""
    return (1.0 + rng.uniform(-strength, strength, 3)).astype(np.float32)


def colourise(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Map a grey field (H, W) in [0, 1] between two random colours -> (H, W, 3)."""
    a, b = random_colour(rng), random_colour(rng)
    return a * (1 - t[..., None]) + b * t[..., None]


def texture_rgb(rng: np.random.Generator, size: int, kind: str | None = None) -> np.ndarray:
    """An unlit texture of `kind` (default: random of `TEXTURE_KINDS`): float32 (size, size,
    3) in [0, 1]."""
    kind = kind or str(rng.choice(TEXTURE_KINDS))
    if kind == "dead_leaves":
        return dead_leaves(rng, size, r_min=rng.uniform(0.005, 0.03), r_max=rng.uniform(0.1, 0.4))
    if kind == "fractal":
        return colourise(rng, fractal_noise(rng, size, rng.uniform(1.5, 3.0)))
    if kind == "grating":
        return colourise(rng, grating(rng, size))
    if kind == "gradient":
        detail = fractal_noise(rng, size, rng.uniform(1.0, 2.5)) - 0.5
        return np.clip(colourise(rng, gradient(rng, size)) + 0.15 * detail[..., None], 0, 1)
    if kind == "mixed":  # leaves textured by noise and gratings
        leaves = dead_leaves(rng, size, r_min=0.02, r_max=0.3)
        gain = gain_map(rng, size, rng.uniform(0.1, 0.4))
        return np.clip(leaves * gain[..., None], 0, 1)
    raise ValueError(f"unknown texture kind {kind!r}; choose from {TEXTURE_KINDS}")


def texture_image(rng: np.random.Generator, size: int, kind: str | None = None) -> np.ndarray:
    """`texture_rgb` lit by `lighting` and cast by `colour_cast`: uint8 (size, size, 3)."""
    rgb = texture_rgb(rng, size, kind) * lighting(rng, size)[..., None] * colour_cast(rng)
    return to_uint8(rgb)


def gain_map(
    rng: np.random.Generator, size: int, strength: float, choice: int | None = None
) -> np.ndarray:
    """A grey texture with mean ~1 and amplitude `strength`: float32 (size, size).

    Fractal noise (`choice` 0), a grating (1) or dead-leaves luminance (2); random if None.
    """
    choice = int(rng.integers(3)) if choice is None else choice
    if choice == 0:
        t = fractal_noise(rng, size, rng.uniform(1.2, 2.5))
    elif choice == 1:
        t = grating(rng, size)
    else:
        grey = np.array([[0.2], [0.5], [0.8], [0.35], [0.65]], np.float32).repeat(3, axis=1)
        t = dead_leaves(rng, size, r_min=0.005, r_max=0.08, palette=grey)[..., 0]
    return (1.0 + strength * 2.0 * (t - t.mean())).astype(np.float32)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] -> uint8, rounded and clipped."""
    return np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)


# -- photos that installed packages ship ---------------------------------------------------


@functools.cache
def package_photos() -> tuple[Path, ...]:
    """Real photographs shipped by installed packages (matplotlib's sample data; scikit-
    image's data if installed), sorted; empty if none is found."""
    found: list[Path] = []
    try:
        from matplotlib import cbook

        found.append(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    except (ImportError, OSError, ValueError):
        pass
    try:
        import skimage.data  # noqa: F401  (optional)

        folder = Path(skimage.data.__file__).parent
        found += [p for p in folder.glob("*.jpg") if p.stat().st_size > 20_000]
        found += [p for p in folder.glob("*.png") if p.stat().st_size > 100_000]
    except ImportError:
        pass
    return tuple(sorted(p for p in found if p.is_file()))


def photo_rgb(rng: np.random.Generator, path: Path, size: int) -> np.ndarray:
    """A random square crop (40-100% of the short side) of the photo at `path`, maybe
    mirrored, resized to size x size: float32 (size, size, 3) in [0, 1]."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        side = int(min(w, h) * rng.uniform(0.4, 1.0))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = img.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + side, y0 + side))
    pixels = np.asarray(crop, np.float32) / 255.0
    return pixels[:, ::-1] if rng.random() < 0.5 else pixels


# -- clips of textures -------------------------------------------------------------------------


def texture_frames(
    rng: np.random.Generator, frames: int, size: int, photo_share: float = 0.2
) -> tuple[np.ndarray, dict]:
    """A clip of one picture seen by a slowly moving camera: uint8 (frames, size, size, 3).

    The picture (a `texture_rgb` of 2x the size, or with probability `photo_share` a crop of
    a `package_photos` photo) pans at up to 1 px per frame (less in long clips), zooms by up
    to 10% over the clip and its light drifts; colour cast fixed. Returns (frames, what).
    """
    big = 2 * size
    photos = package_photos()
    if photos and rng.random() < photo_share:
        path = photos[int(rng.integers(len(photos)))]
        source, what = photo_rgb(rng, path, big), {"kind": "photo", "photo": path.name}
    else:
        kind = str(rng.choice(TEXTURE_KINDS))
        source, what = texture_rgb(rng, big, kind), {"kind": kind}
    source = source * colour_cast(rng)[None, None]
    light_a, light_b = lighting(rng, size), lighting(rng, size)
    picture = Image.fromarray(to_uint8(source))
    # camera: start point, velocity (px/frame in the big picture), zoom at start and end
    # (the view, at most 0.55 of the picture wide, stays inside it: no empty borders)
    velocity = rng.uniform(-1.0, 1.0, 2) * min(1.0, 0.12 * big / max(frames, 1))
    zoom = rng.uniform(0.9, 1.1, 2)
    start = rng.uniform(0.4, 0.6, 2) * big
    out = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        u = i / max(frames - 1, 1)
        scale = zoom[0] + (zoom[1] - zoom[0]) * u  # big-picture px per output px / 1
        centre = start + velocity * i
        x0, y0 = centre - scale * size / 2
        view = picture.transform(
            (size, size), Image.AFFINE, (scale, 0, x0, 0, scale, y0), Image.BILINEAR
        )
        light = light_a * (1 - u) + light_b * u
        out[i] = to_uint8(np.asarray(view, np.float32) / 255.0 * light[..., None])
    return out, what
