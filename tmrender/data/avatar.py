"""Procedural 2-D head-and-shoulders avatars: random appearance, motion, and fast drawing.

An `Appearance` (face shape, skin, hair, eyes, brows, nose, ears, lips, glasses, clothes,
background) is drawn with Pillow polygons on a canvas `SUPERSAMPLE` times larger than the
output and box-filtered down, which anti-aliases every edge. All geometry is written in
normalised image coordinates (0..1, y down) and mapped to pixels at the end, so one avatar
draws identically at any size.

Per frame the drawing takes the 7 mouth parameters of `tmrender.data.visemes` and the pose
vector (columns `POSE`: head offset dx, dy in image widths, roll in radians, yaw and pitch as
feature parallax in [-1, 1], blink in [0, 1], brow raise in [0, 1]). The head pivots about the
neck; the jaw lowers the chin and the lower lip; eyes, nose and mouth shift with yaw and pitch.

Textured avatars (`AvatarTexture`, off by default): the background becomes a procedural
picture (`tmrender.data.textures`), skin, hair and clothes are modulated by grey texture
maps (skin and hair move with the head), and the frame is lit by a soft directional light
with a colour cast. Eyes, brows, mouth and glasses keep their flat colours; the drawing of
the features, and so the mouth boxes, are exactly those of the plain avatar.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tmrender.data import textures
from tmrender.data.visemes import (
    CLOSE,
    OPEN,
    REST,
    ROUND,
    TEETH,
    TONGUE,
    WIDTH,
)

POSE = ("dx", "dy", "roll", "yaw", "pitch", "blink", "brow")
DX, DY, ROLL, YAW, PITCH, BLINK, BROW = range(len(POSE))
SUPERSAMPLE = 4
NECK_PIVOT = (0.5, 0.76)
MAX_OPENING = 0.1  # lip opening at open = 1, in image heights (scaled with the face)
CHIN_DROP = 0.55  # the chin moves down by this fraction of the lip opening

RGB = tuple[int, int, int]

# Skin tones from very light to very deep, sampled continuously between neighbours.
SKIN_TONES: tuple[RGB, ...] = (
    (255, 228, 214), (247, 214, 190), (238, 196, 166), (226, 176, 140), (205, 150, 112),
    (180, 124, 88), (150, 98, 66), (120, 76, 50), (92, 58, 40), (66, 42, 30),
)  # fmt: skip
HAIR_COLOURS: tuple[tuple[RGB, float], ...] = (
    ((24, 20, 20), 4.0), ((58, 38, 28), 3.0), ((96, 64, 40), 2.5), ((140, 98, 60), 1.5),
    ((214, 178, 108), 1.2), ((234, 222, 190), 0.4), ((146, 62, 34), 0.8), ((190, 90, 40), 0.8),
    ((140, 138, 136), 0.8), ((222, 220, 216), 0.5), ((58, 92, 176), 0.25), ((220, 104, 160), 0.25),
    ((112, 70, 156), 0.25), ((36, 140, 140), 0.2),
)  # fmt: skip
IRIS_COLOURS: tuple[RGB, ...] = (
    (92, 56, 30), (56, 34, 20), (132, 100, 48), (78, 124, 70), (72, 118, 182), (116, 132, 148),
    (160, 110, 40),
)  # fmt: skip
HAIR_STYLES = ("short", "side", "bangs", "long", "bob", "afro", "bun", "buzz", "bald", "curly")
CLOTHES = ("crew", "vneck", "collar", "hoodie", "jacket")
BACKGROUNDS = ("solid", "vertical", "radial", "stripes", "dots", "blotches")
# regions of a textured avatar (values of its per-frame region map)
FEATURE, SKIN, HAIR, CLOTH, BACKGROUND = range(5)
OPAQUE = 128  # polygons at least this opaque claim their region; fainter ones (blush) do not


@dataclass(frozen=True)
class Appearance:
    """Everything that makes one avatar look the way it does (all lengths normalised)."""

    # face
    face_w: float  # half-width of the face
    face_h: float  # half-height of the face
    jaw_taper: float  # 0 round jaw .. 1 narrow chin
    chin: float  # chin length
    face_y: float  # face centre height
    skin: RGB
    blush: float
    # eyes and brows
    eye_gap: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    iris: RGB
    lashes: bool
    brow_thick: float
    brow_arch: float
    brow_tilt: float
    brow_colour: RGB
    # nose, ears, mouth
    nose_style: int
    nose_size: float
    ear_size: float
    mouth_w: float
    lip_full: float
    lip: RGB
    smile: float
    # hair and accessories
    hair_style: str
    hair: RGB
    hair_volume: float
    glasses: int  # 0 none, 1 round, 2 rectangular
    frame_colour: RGB
    # clothes and background
    clothes: str
    cloth: RGB
    cloth2: RGB
    background: str
    bg1: RGB
    bg2: RGB
    bg_seed: int


@dataclass(frozen=True)
class AvatarTexture:
    """How a textured avatar departs from its flat colours (see the module docstring).

    Amplitudes are those of `textures.gain_map` (0: flat); `light` that of
    `textures.lighting`; `cast` the largest per-channel gain error of `textures.colour_cast`.
    """

    seed: int  # the texture maps, background picture, light direction and cast
    skin: float
    hair: float
    cloth: float
    light: float
    cast: float


def sample_texture(rng: np.random.Generator) -> AvatarTexture:
    """Random texture amplitudes and a seed for the maps, all from `rng`."""
    return AvatarTexture(
        seed=int(rng.integers(2**31)),
        skin=float(rng.uniform(0.03, 0.15)),
        hair=float(rng.uniform(0.1, 0.4)),
        cloth=float(rng.uniform(0.1, 0.5)),
        light=float(rng.uniform(0.1, 0.5)),
        cast=float(rng.uniform(0.0, 0.15)),
    )


def _hsv(h: float, s: float, v: float) -> RGB:
    """HSV in [0, 1] to an RGB tuple."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return (int(r * 255), int(g * 255), int(b * 255))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b, strict=True))


def _scale(c: RGB, k: float) -> RGB:
    return tuple(int(min(255, max(0, round(x * k)))) for x in c)


def sample_skin(rng: np.random.Generator) -> RGB:
    """A skin tone anywhere between the lightest and deepest anchors, with a little undertone."""
    t = rng.random() * (len(SKIN_TONES) - 1)
    i = min(int(t), len(SKIN_TONES) - 2)
    base = _mix(SKIN_TONES[i], SKIN_TONES[i + 1], t - i)
    undertone = rng.uniform(-0.04, 0.04)
    return _scale((base[0], base[1], int(base[2] * (1 + undertone))), 1.0)


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draw a random avatar appearance; every field comes from `rng` (deterministic)."""
    skin = sample_skin(rng)
    hair_rgb, weights = zip(*HAIR_COLOURS, strict=True)
    hair = hair_rgb[rng.choice(len(hair_rgb), p=np.array(weights) / sum(weights))]
    style = str(
        rng.choice(HAIR_STYLES, p=[0.14, 0.13, 0.11, 0.15, 0.1, 0.07, 0.07, 0.08, 0.06, 0.09])
    )
    lipstick = rng.random() < 0.15
    lip = (
        _hsv(rng.uniform(0.92, 1.0), rng.uniform(0.5, 0.8), rng.uniform(0.45, 0.75))
        if lipstick
        else _scale(_mix(skin, (186, 68, 80), rng.uniform(0.4, 0.55)), rng.uniform(0.82, 0.95))
    )
    cloth = _hsv(rng.random(), rng.uniform(0.15, 0.75), rng.uniform(0.25, 0.9))
    bg_hue = rng.random()
    bg1 = _hsv(bg_hue, rng.uniform(0.05, 0.45), rng.uniform(0.55, 0.95))
    bg2 = _hsv(
        (bg_hue + rng.uniform(-0.15, 0.15)) % 1.0, rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.8)
    )
    brow_colour = _scale(hair, 0.8) if style != "bald" or rng.random() < 0.5 else _scale(skin, 0.45)
    if sum(hair) > 560:  # white/platinum hair: brows a little darker to stay visible
        brow_colour = _scale(hair, 0.7)
    return Appearance(
        face_w=rng.uniform(0.2, 0.24),
        face_h=rng.uniform(0.265, 0.3),
        jaw_taper=rng.uniform(0.1, 0.55),
        chin=rng.uniform(0.0, 1.0),
        face_y=rng.uniform(0.43, 0.46),
        skin=skin,
        blush=rng.uniform(0.0, 0.35),
        eye_gap=rng.uniform(0.084, 0.098),
        eye_w=rng.uniform(0.038, 0.048),
        eye_h=rng.uniform(0.017, 0.025),
        eye_tilt=rng.uniform(-0.08, 0.15),
        iris=IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))],
        lashes=bool(rng.random() < 0.45),
        brow_thick=rng.uniform(0.007, 0.014),
        brow_arch=rng.uniform(0.004, 0.016),
        brow_tilt=rng.uniform(-0.12, 0.12),
        brow_colour=brow_colour,
        nose_style=int(rng.integers(3)),
        nose_size=rng.uniform(0.8, 1.25),
        ear_size=rng.uniform(0.85, 1.15),
        mouth_w=rng.uniform(0.068, 0.084),
        lip_full=rng.uniform(0.7, 1.3),
        lip=lip,
        smile=rng.uniform(-0.002, 0.006),
        hair_style=style,
        hair=hair,
        hair_volume=rng.uniform(0.0, 1.0),
        glasses=int(rng.choice(3, p=[0.78, 0.11, 0.11])),
        frame_colour=_hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.05, 0.5)),
        clothes=str(rng.choice(CLOTHES)),
        cloth=cloth,
        cloth2=_hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.7, 0.98)),
        background=str(rng.choice(BACKGROUNDS)),
        bg1=bg1,
        bg2=bg2,
        bg_seed=int(rng.integers(2**31)),
    )


# -- geometry helpers (normalised coordinates; arrays of shape (N, 2)) -----------------------


def ellipse(
    cx: float, cy: float, rx: float, ry: float, n: int = 40, angle: float = 0.0
) -> np.ndarray:
    """Points of an ellipse, shape (n, 2), optionally rotated by `angle` radians."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def between(x: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Polygon of the region between two curves over the same x samples, shape (2N, 2)."""
    upper = np.stack([x, top], axis=1)
    lower = np.stack([x[::-1], bottom[::-1]], axis=1)
    return np.concatenate([upper, lower])


def _bump(u: np.ndarray, power: float) -> np.ndarray:
    """(1 - u^2)^power on [-1, 1], 0 outside: the profile of lids, lips and brows."""
    return np.clip(1.0 - u * u, 0.0, None) ** power


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


@functools.cache
def _grid(n: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n)


# -- the renderer --------------------------------------------------------------------------


@dataclass
class Frame:
    """One drawn frame: pixels (H, W, 3) uint8 and boxes (x0, y0, x1, y1) in output pixels."""

    pixels: np.ndarray
    mouth_box: tuple[int, int, int, int]
    face_box: tuple[int, int, int, int]


class AvatarRenderer:
    """Draws one `Appearance` at `size` x `size` pixels, frame after frame.

    The background is rendered once; every frame copies it and draws ~50 polygons. With a
    `texture`, each polygon also marks its region (`SKIN`, `HAIR`, ...) in a region map,
    and the region's texture modulates the drawn pixels (`_textured`).
    """

    def __init__(
        self,
        look: Appearance,
        size: int = 128,
        supersample: int = SUPERSAMPLE,
        texture: AvatarTexture | None = None,
    ):
        if size < 16:
            raise ValueError(f"avatar size must be at least 16 pixels, got {size}")
        self.look = look
        self.size = size
        self.ss = supersample
        self.canvas = size * supersample
        self.texture = texture
        self._region = FEATURE
        self._regions: ImageDraw.ImageDraw | None = None
        if texture is None:
            self.background = render_background(look, self.canvas)
        else:
            self._make_textures(texture)
        a = look
        self.cx, self.cy = 0.5, a.face_y
        self.mouth_y = self.cy + a.face_h * 0.56
        self.eye_y = self.cy - a.face_h * 0.04
        self.nose_y = self.cy + a.face_h * 0.3
        self.shade = _scale(a.skin, 0.82)
        self.deep_shade = _scale(a.skin, 0.66)
        self.light = _mix(a.skin, (255, 255, 255), 0.12)
        self._face = self._face_outline()

    # ---- one frame ----

    def draw(self, mouth: np.ndarray, pose: np.ndarray) -> Frame:
        """Draw a frame from mouth params (7,) and pose (7,), both as in the module docstring."""
        img = self.background.copy()
        draw = ImageDraw.Draw(img, "RGBA")
        regions = None
        if self.texture is not None:
            regions = Image.new("L", img.size, BACKGROUND)
            self._regions = ImageDraw.Draw(regions)
        head = self._head_matrix(pose)
        parallax = np.array([pose[YAW] * 0.012, pose[PITCH] * 0.012])
        drop = mouth[OPEN] * MAX_OPENING * (self.look.face_h / 0.265) * CHIN_DROP
        # 1. behind the head: back hair, body, neck
        self._region = HAIR
        self._back_hair(draw, head)
        self._region = CLOTH
        self._body(draw)
        self._region = SKIN
        self._neck(draw, head, drop)
        # 2. the head: ears, face, shading
        if self.look.hair_style not in ("long", "bob", "afro"):
            self._ears(draw, head, pose[YAW])
        face = self._jaw_drop(self._face, drop)
        self._poly(draw, head, face, self.shade)
        self._poly(draw, head, self._jaw_drop(self._face_light(), drop), self.look.skin)
        self._cheeks(draw, head, parallax)
        # 3. features, shifted by yaw and pitch parallax
        self._region = FEATURE
        self._eyes(draw, head, parallax, pose[BLINK])
        self._brows(draw, head, parallax, pose[BROW])
        self._region = SKIN
        self._nose(draw, head, parallax)
        self._region = FEATURE
        lips = self._mouth(draw, head, parallax, mouth)
        # 4. in front: hair, glasses
        self._region = HAIR
        self._front_hair(draw, head)
        self._region = FEATURE
        self._glasses(draw, head, parallax)
        scale = self.ss
        if regions is not None:  # textures at half the canvas (a quarter of the work)
            step = self.canvas // len(self._light)
            img = img.reduce(step) if step > 1 else img
            img = self._textured(
                img, np.asarray(regions)[step // 2 :: step, step // 2 :: step], head
            )
            self._regions = None
            scale //= step
        pixels = np.asarray(img.reduce(scale) if scale > 1 else img)
        return Frame(pixels, self._box(head, lips), self._box(head, face))

    # ---- transforms ----

    def _head_matrix(self, pose: np.ndarray) -> np.ndarray:
        """2x3 affine map from normalised head coordinates to canvas pixels."""
        px, py = NECK_PIVOT
        c, s = np.cos(pose[ROLL]), np.sin(pose[ROLL])
        k = self.canvas
        m = np.array([[c, -s], [s, c]]) * k
        offset = np.array([px + pose[DX], py + pose[DY]]) * k - m @ np.array([px, py])
        return np.concatenate([m, offset[:, None]], axis=1)

    def _px(self, head: np.ndarray | None, pts: np.ndarray) -> list[float]:
        out = pts * self.canvas if head is None else pts @ head[:, :2].T + head[:, 2]
        return out.ravel().tolist()

    def _poly(self, draw, head, pts: np.ndarray, colour, alpha: int | None = None) -> None:
        fill = colour if alpha is None else (*colour, alpha)
        draw.polygon(self._px(head, pts), fill=fill)
        if self._regions is not None and (alpha is None or alpha >= OPAQUE):
            self._regions.polygon(self._px(head, pts), fill=self._region)

    def _line(self, draw, head, pts: np.ndarray, colour, width: float) -> None:
        w = max(1, int(round(width * self.canvas)))
        draw.line(self._px(head, pts), fill=colour, width=w, joint="curve")
        if self._regions is not None:
            self._regions.line(self._px(head, pts), fill=self._region, width=w, joint="curve")

    # ---- textures ----

    def _make_textures(self, texture: AvatarTexture) -> None:
        """The background picture (canvas, canvas), the gain maps (k, k) of skin, hair and
        clothes, the light (k, k) and the colour cast (3,) of a textured avatar; k is half
        the canvas when the supersampling is even (the textures' work is done there)."""
        rng = np.random.default_rng(texture.seed)
        self.background = Image.fromarray(textures.texture_image(rng, self.canvas))
        k = self.canvas // 2 if self.ss % 2 == 0 else self.canvas
        self._skin = textures.gain_map(rng, k, texture.skin, choice=0)  # fractal only
        self._hair = textures.gain_map(rng, k, texture.hair)
        self._cloth = textures.gain_map(rng, k, texture.cloth)
        self._light = textures.lighting(rng, k, texture.light)
        self._cast = textures.colour_cast(rng, texture.cast)

    def _textured(self, img: Image.Image, regions: np.ndarray, head: np.ndarray) -> Image.Image:
        """Modulate `img` (k, k) by the gain of each pixel's region (`regions` uint8 (k, k));
        skin and hair maps follow the head (`head`, `_head_matrix`, in canvas pixels)."""
        gain = np.where(regions == CLOTH, self._cloth, np.float32(1.0))
        for region, texture in ((SKIN, self._skin), (HAIR, self._hair)):
            inside = regions == region
            if inside.any():
                gain = np.where(inside, self._follow_head(texture, head), gain)
        gain *= self._light
        pixels = np.asarray(img, np.float32) * gain[..., None]
        pixels *= self._cast
        return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))

    def _follow_head(self, gain: np.ndarray, head: np.ndarray) -> np.ndarray:
        """`gain` (k, k), drawn at the rest pose, moved as the head is by `head` (canvas
        pixels; the rest pose's head matrix is canvas x identity)."""
        inverse = np.linalg.inv(head[:, :2] / self.canvas)
        shift = -inverse @ head[:, 2] * (len(gain) / self.canvas)
        data = (*inverse[0], shift[0], *inverse[1], shift[1])
        moved = Image.fromarray(gain).transform(
            gain.shape[::-1], Image.AFFINE, data, Image.BILINEAR, fillcolor=1.0
        )
        return np.asarray(moved)

    def _box(self, head: np.ndarray, pts: np.ndarray) -> tuple[int, int, int, int]:
        xy = (pts @ head[:, :2].T + head[:, 2]) / self.ss
        x0, y0 = np.floor(xy.min(axis=0)).astype(int) - 1
        x1, y1 = np.ceil(xy.max(axis=0)).astype(int) + 1
        clip = lambda v: int(min(max(v, 0), self.size))  # noqa: E731
        return (clip(x0), clip(y0), clip(x1), clip(y1))

    def _jaw_drop(self, pts: np.ndarray, drop: float) -> np.ndarray:
        """Move points below the mouth line down with the jaw (smoothly from 2% above it)."""
        if drop == 0:
            return pts
        out = pts.copy()
        weight = smoothstep((pts[:, 1] - (self.mouth_y - 0.01)) / 0.06)
        out[:, 1] += drop * weight
        return out

    # ---- face ----

    def _face_outline(self, shrink: float = 0.0, shift: float = 0.0) -> np.ndarray:
        a = self.look
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        u, v = np.cos(t), np.sin(t)  # v > 0: lower half
        lower = np.clip(v, 0, None)
        x = (a.face_w - shrink) * u * (1 - a.jaw_taper * 0.45 * lower**2.2)
        y = (a.face_h - shrink) * v * np.where(v < 0, 0.93, 1.0 + 0.08 * a.chin * lower**6)
        return np.stack([self.cx + x + shift, self.cy + y - shrink * 0.3], axis=1)

    def _face_light(self) -> np.ndarray:
        """The lit part of the face: the outline shrunk and shifted toward the light (left)."""
        return self._face_outline(shrink=0.006, shift=-0.007)

    def _cheeks(self, draw, head, parallax) -> None:
        a = self.look
        if a.blush > 0.05:
            alpha = int(a.blush * 110)
            colour = _mix(a.skin, (230, 90, 100), 0.5)
            for side in (-1, 1):
                c = (
                    ellipse(self.cx + side * a.face_w * 0.55, self.mouth_y - 0.045, 0.032, 0.018)
                    + parallax
                )
                self._poly(draw, head, c, colour, alpha)

    def _ears(self, draw, head, yaw: float) -> None:
        a = self.look
        for side in (-1, 1):
            ex = self.cx + side * (a.face_w * 0.97 - side * yaw * 0.006)
            ear = ellipse(ex, self.eye_y + 0.035, 0.03 * a.ear_size, 0.052 * a.ear_size)
            self._poly(draw, head, ear, self.shade)
            inner = ellipse(
                ex + side * 0.006, self.eye_y + 0.037, 0.015 * a.ear_size, 0.032 * a.ear_size
            )
            self._poly(draw, head, inner, self.deep_shade, 140)

    def _neck(self, draw, head, drop: float) -> None:
        a = self.look
        w = a.face_w * 0.46
        top, bottom = self.cy + 0.05, 0.95
        neck = np.array(
            [
                [self.cx - w, top],
                [self.cx + w, top],
                [self.cx + w * 1.1, bottom],
                [self.cx - w * 1.1, bottom],
            ]
        )
        self._poly(draw, None, neck, a.skin)
        # the chin's shadow on the neck: the lower face outline, moved down, within the neck
        face = self._jaw_drop(self._face, drop)
        lower = face[face[:, 1] > self.cy]
        order = np.argsort(lower[:, 0])
        xs = np.linspace(self.cx - w, self.cx + w, 16)
        chin = np.interp(xs, lower[order, 0], lower[order, 1])
        shadow = between(xs, np.full_like(xs, top), chin + 0.03)
        self._poly(draw, head, shadow, self.deep_shade, 170)

    # ---- eyes and brows ----

    def _eye_curves(self, blink: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x grid (N,), upper and lower lid offsets (N,) for one eye, normalised to the eye."""
        a = self.look
        u = _grid(21)
        upper_open = -a.eye_h * _bump(u, 0.7) * 1.05
        lower = a.eye_h * 0.8 * _bump(u, 0.9)
        upper = upper_open + (lower - upper_open) * min(blink, 1.0) * 0.96
        return u * a.eye_w, upper, lower

    def _eyes(self, draw, head, parallax, blink: float) -> None:
        a = self.look
        x, upper, lower = self._eye_curves(blink)
        lash_colour = _scale(_mix(a.brow_colour, (20, 16, 16), 0.7), 1.0)
        for side in (-1, 1):
            ex, ey = self.cx + side * a.eye_gap + parallax[0], self.eye_y + parallax[1]
            tilt = -a.eye_tilt * side * x  # outer corners up when tilt > 0
            top, bot = ey + upper + tilt * a.eye_h / a.eye_w, ey + lower + tilt * a.eye_h / a.eye_w
            crease = (
                ey + (upper - (upper - lower) * 0.0) - a.eye_h * 0.55 + tilt * a.eye_h / a.eye_w
            )
            self._line(draw, head, np.stack([ex + x[3:-3], crease[3:-3]], 1), self.shade, 0.003)
            if blink < 0.9:
                self._poly(draw, head, between(ex + x, top, bot), (246, 244, 240))
                self._iris(
                    draw, head, ex + x, top, bot, ex + side * 0.002, ey + a.eye_h * 0.1, a.eye_h
                )
            lid = between(ex + x, top - 0.0035 * _bump(_grid(21), 0.3), top + 0.0012)
            self._poly(draw, head, lid, lash_colour)
            if a.lashes:
                tip = np.array([[ex + side * a.eye_w * 1.0, top[-1 if side > 0 else 0]]])
                wing = np.concatenate(
                    [tip, tip + [[side * 0.01, -0.008]], tip + [[-side * 0.006, -0.004]]]
                )
                self._poly(draw, head, wing, lash_colour)

    def _iris(self, draw, head, xs, top, bot, gx: float, gy: float, eye_h: float) -> None:
        """Iris, pupil and highlight, clipped to the lid curves by clamping y at each x."""
        a = self.look
        r = eye_h * 1.05

        def clipped(pts: np.ndarray) -> np.ndarray:
            px = np.clip(pts[:, 0], xs[0], xs[-1])
            lo, hi = np.interp(px, xs, top), np.interp(px, xs, bot)
            return np.stack([px, np.clip(pts[:, 1], lo, hi)], axis=1)

        self._poly(draw, head, clipped(ellipse(gx, gy, r, r, 28)), a.iris)
        self._poly(
            draw, head, clipped(ellipse(gx, gy, r * 0.72, r * 0.72, 24)), _scale(a.iris, 0.7), 120
        )
        self._poly(draw, head, clipped(ellipse(gx, gy, r * 0.45, r * 0.45, 20)), (14, 12, 12))
        self._poly(
            draw,
            head,
            clipped(ellipse(gx - r * 0.35, gy - r * 0.38, r * 0.24, r * 0.24, 12)),
            (255, 255, 255),
            230,
        )

    def _brows(self, draw, head, parallax, raise_: float) -> None:
        a = self.look
        u = _grid(15)
        width = a.eye_w * 1.25
        for side in (-1, 1):
            bx = self.cx + side * (a.eye_gap + 0.004) + parallax[0]
            by = self.eye_y - a.eye_h - 0.024 - raise_ * 0.014 + parallax[1] * 0.7
            centre = by - a.brow_arch * _bump(u, 1.0) + side * u * width * a.brow_tilt
            thick = a.brow_thick * (1.0 - 0.55 * (side * u + 1) / 2)  # thick inside, thin outside
            x = bx + u * width
            self._poly(
                draw, head, between(x, centre - thick / 2, centre + thick / 2), a.brow_colour
            )

    def _nose(self, draw, head, parallax) -> None:
        a = self.look
        nx, ny, k = self.cx + parallax[0] * 1.3, self.nose_y + parallax[1], a.nose_size
        if a.nose_style == 0:  # soft shadow under the tip and two nostrils
            self._poly(
                draw, head, ellipse(nx, ny + 0.006 * k, 0.02 * k, 0.009 * k), self.shade, 170
            )
        elif a.nose_style == 1:  # a side line down the bridge
            line = np.array(
                [
                    [nx + 0.008, self.eye_y + 0.03],
                    [nx + 0.012 * k, ny - 0.01],
                    [nx + 0.016 * k, ny + 0.004],
                ]
            )
            self._line(draw, head, line, self.shade, 0.004)
        else:  # triangle shade along the side of the nose
            tri = np.array(
                [
                    [nx + 0.002, self.eye_y + 0.03],
                    [nx + 0.02 * k, ny + 0.004],
                    [nx + 0.0, ny + 0.008],
                ]
            )
            self._poly(draw, head, tri, self.shade, 150)
        self._poly(
            draw, head, ellipse(nx - 0.003, ny - 0.003, 0.008 * k, 0.006 * k), self.light, 160
        )
        for side in (-1, 1):
            self._poly(
                draw,
                head,
                ellipse(nx + side * 0.009 * k, ny + 0.006 * k, 0.0045 * k, 0.003 * k),
                self.deep_shade,
                220,
            )

    # ---- mouth ----

    def mouth_shape(self, mouth: np.ndarray) -> dict[str, np.ndarray]:
        """Curves of the mouth around its centre (offsets, normalised), each over the same x (N,).

        Keys: x, outer_top, inner_top, inner_bottom, outer_bottom (y offsets, y down).
        """
        a = self.look
        scale = a.face_h / 0.265
        half_w = a.mouth_w * (1.0 + 0.35 * (mouth[WIDTH] - 0.5) - 0.28 * mouth[ROUND])
        u = _grid(25)
        x = u * half_w
        height = mouth[OPEN] * MAX_OPENING * scale
        inner_w = 0.88 - 0.25 * mouth[ROUND]
        shape = _bump(u / inner_w, 0.5 + 0.25 * mouth[ROUND] - 0.15 * (mouth[WIDTH] - 0.5))
        corner = -a.smile * (1 - mouth[ROUND]) * u * u  # corners up for a smile
        inner_top = corner - height * 0.3 * shape
        inner_bottom = corner + height * 0.7 * shape
        lip_scale = a.lip_full * (
            1.0 + 0.45 * mouth[ROUND] - 0.2 * mouth[CLOSE] * (1 - mouth[ROUND])
        )
        bow = 1.0 - 0.35 * np.exp(-((u / 0.12) ** 2))  # cupid's bow dip in the middle
        upper_t = 0.018 * scale * lip_scale * _bump(u, 0.55) * bow
        lower_t = 0.023 * scale * lip_scale * _bump(u, 0.6) * (1 - 0.35 * mouth[TEETH])
        lower_t = np.maximum(lower_t, 0)
        return {
            "x": x,
            "outer_top": inner_top - upper_t - 0.002 * scale * _bump(u, 1.0),
            "inner_top": inner_top,
            "inner_bottom": inner_bottom - 0.006 * scale * mouth[TEETH] * _bump(u, 1.0),
            "outer_bottom": inner_bottom + lower_t - 0.004 * scale * mouth[TEETH] * _bump(u, 1.0),
        }

    def _mouth(self, draw, head, parallax, mouth: np.ndarray) -> np.ndarray:
        """Draw lips, interior, teeth and tongue; return the outer lip polygon (normalised)."""
        a = self.look
        c = self.mouth_shape(mouth)
        mx, my = self.cx + parallax[0] * 1.1, self.mouth_y + parallax[1]
        x = mx + c["x"]
        top_o, top_i = my + c["outer_top"], my + c["inner_top"]
        bot_i, bot_o = my + c["inner_bottom"], my + c["outer_bottom"]
        outer = between(x, top_o, bot_o)
        dark_lip = _scale(a.lip, 0.78)
        self._poly(draw, head, outer, a.lip)
        self._poly(draw, head, between(x, top_o, top_i + 0.001), dark_lip)  # upper lip in shade
        gap = bot_i - top_i
        if gap.max() > 0.0015:
            self._poly(draw, head, between(x, top_i, bot_i), (58, 18, 24))
            teeth_h = np.minimum(
                0.011 * a.face_h / 0.265 * _bump(c["x"] / (c["x"][-1] * 0.82), 0.3), gap
            )
            self._poly(draw, head, between(x, top_i, top_i + teeth_h), (244, 240, 230))
            tongue = mouth[TONGUE] * 0.6 + 0.25
            tongue_top = np.maximum(
                bot_i - gap * tongue * _bump(c["x"] / (c["x"][-1] * 0.7), 0.5),
                top_i + teeth_h * 0.7,
            )
            tongue_top = np.minimum(tongue_top, bot_i)
            self._poly(draw, head, between(x, tongue_top, bot_i), (196, 86, 96))
        if mouth[TEETH] > 0.2:  # upper teeth resting on the lower lip
            h = 0.006 * mouth[TEETH] * _bump(c["x"] / (c["x"][-1] * 0.6), 0.5)
            self._poly(draw, head, between(x, top_i - 0.0005, top_i + h), (244, 240, 230))
        seam = np.stack([x[2:-2], (top_i[2:-2] + bot_i[2:-2]) / 2], axis=1)
        self._line(draw, head, seam, (70, 28, 32) if gap.max() <= 0.0015 else dark_lip, 0.0025)
        highlight = ellipse(
            mx - 0.008, (bot_i.max() + bot_o.max()) / 2 - 0.001, a.mouth_w * 0.3, 0.0025
        )
        self._poly(draw, head, highlight, (255, 255, 255), 55)
        return outer

    # ---- hair ----

    def _skull(self, volume: float, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Upper outline of the hair mass from the left temple over the top to the right."""
        a = self.look
        t = np.linspace(np.pi * 1.02, np.pi * 1.98, n)  # left to right over the top
        rx = a.face_w * (1.06 + 0.1 * volume)
        ry = a.face_h * (0.98 + 0.1 * volume)
        return self.cx + rx * np.cos(t), self.cy - 0.01 + ry * np.sin(t)

    def _hair_cap(self, n: int = 48) -> np.ndarray:
        """Front hair: between an outer arc and the hairline, both over the same angles.

        Angles run from below the left temple over the top to below the right one; the
        hairline follows the face outline at the sides and rises to the forehead at the top.
        """
        a = self.look
        style = a.hair_style
        low = {"long": 0.75, "bob": 0.7, "buzz": 0.05}.get(style, 0.22)  # radians below horizontal
        t = np.linspace(np.pi - low, 2 * np.pi + low, n)
        up = np.clip(-np.sin(t), 0, None)  # 1 at the top of the head, 0 at the temples
        side = np.cos(t)  # -1 left .. 1 right
        volume = -0.6 if style == "buzz" else a.hair_volume
        rx, ry = a.face_w * (1.06 + 0.1 * volume), a.face_h * (1.07 + 0.14 * volume)
        outer = np.stack([self.cx + rx * side, self.cy + ry * 0.93 * np.sin(t)], 1)
        # hairline height at the forehead, as a fraction of the face half-height above centre
        forehead = {
            "bangs": 0.4 + 0.02 * np.sin(side * 20),
            "side": 0.5 + 0.22 * side,
            "long": 0.62 - 0.15 * np.abs(side),
            "bob": 0.45 + 0.0 * side,
            "buzz": 0.72 + 0.0 * side,
        }.get(style, 0.66 - 0.06 * np.exp(-((side * 4) ** 2)) + 0.0 * side)
        weight = up ** (0.6 if style in ("bangs", "bob") else 1.2)
        inner_scale = 0.97 if style in ("long", "bob") else 1.0
        inner_r = np.stack([a.face_w * inner_scale * side, a.face_h * 0.93 * np.sin(t)], 1)
        inner_top = np.stack([a.face_w * 0.9 * side, -a.face_h * forehead * np.ones_like(t)], 1)
        inner = (
            np.array([self.cx, self.cy])
            + inner_r * (1 - weight[:, None])
            + inner_top * weight[:, None]
        )
        return np.concatenate([outer, inner[::-1]])

    def _back_hair(self, draw, head) -> None:
        a = self.look
        style = a.hair_style
        if style in ("long", "bob"):
            length = 0.27 if style == "long" else 0.08
            sx, sy = self._skull(a.hair_volume)
            w = a.face_w * (1.2 + 0.15 * a.hair_volume)
            bottom = self.cy + a.face_h + length
            u = np.linspace(1, -1, 24)
            tips = np.stack([self.cx + u * w * 1.05, bottom + 0.012 * np.cos(u * 9)], 1)
            pts = np.concatenate(
                [np.stack([sx, sy], 1), [[self.cx + w, self.cy]], tips, [[self.cx - w, self.cy]]]
            )
            self._poly(draw, head, pts, _scale(a.hair, 0.8))
        elif style in ("afro", "curly"):
            r = a.face_w * (1.45 if style == "afro" else 1.22) * (1 + 0.1 * a.hair_volume)
            t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
            radius = r * (1 + 0.035 * np.sin(t * 17))
            cy = self.cy - a.face_h * (0.28 if style == "afro" else 0.2)
            pts = np.stack([self.cx + radius * np.cos(t), cy + radius * 0.95 * np.sin(t)], 1)
            self._poly(draw, head, pts, _scale(a.hair, 0.85))
        elif style == "bun":
            self._poly(
                draw,
                head,
                ellipse(self.cx, self.cy - a.face_h * 1.12, 0.07, 0.06),
                _scale(a.hair, 0.9),
            )

    def _front_hair(self, draw, head) -> None:
        a = self.look
        if a.hair_style == "bald":
            shine = ellipse(
                self.cx - a.face_w * 0.35, self.cy - a.face_h * 0.75, 0.035, 0.015, angle=-0.5
            )
            self._poly(draw, head, shine, (255, 255, 255), 50)
            return
        colour = _mix(a.hair, a.skin, 0.35) if a.hair_style == "buzz" else a.hair
        cap = self._hair_cap()
        self._poly(draw, head, cap, colour)
        if a.hair_style in ("afro", "curly"):
            t = np.linspace(np.pi * 1.05, np.pi * 1.95, 9)
            for k, ti in enumerate(t):  # a few curls along the hairline
                p = (
                    self.cx + a.face_w * 0.9 * np.cos(ti),
                    self.cy - 0.01 + a.face_h * 0.78 * np.sin(ti),
                )
                self._poly(
                    draw, head, ellipse(*p, 0.018, 0.016, 16), _scale(colour, 0.9 + 0.05 * (k % 2))
                )

    # ---- accessories, body ----

    def _glasses(self, draw, head, parallax) -> None:
        a = self.look
        if a.glasses == 0:
            return
        w = a.eye_w * 1.35
        h = a.eye_w * (1.15 if a.glasses == 1 else 0.85)
        ey = self.eye_y + parallax[1] + 0.004
        for side in (-1, 1):
            ex = self.cx + side * a.eye_gap + parallax[0]
            if a.glasses == 1:
                rim = ellipse(ex, ey, w, h, 36)
            else:
                u = np.linspace(0, 2 * np.pi, 36, endpoint=False)
                rim = np.stack(
                    [
                        ex + w * np.sign(np.cos(u)) * np.abs(np.cos(u)) ** 0.35,
                        ey + h * np.sign(np.sin(u)) * np.abs(np.sin(u)) ** 0.35,
                    ],
                    1,
                )
            self._poly(draw, head, rim, (235, 245, 255), 40)
            self._line(draw, head, np.concatenate([rim, rim[:1]]), a.frame_colour, 0.006)
            arm = np.array(
                [[ex + side * w, ey - h * 0.3], [self.cx + side * a.face_w * 0.98, ey - h * 0.45]]
            )
            self._line(draw, head, arm, a.frame_colour, 0.005)
        bridge = np.array(
            [
                [self.cx - a.eye_gap + w, ey - h * 0.2],
                [self.cx, ey - h * 0.4],
                [self.cx + a.eye_gap - w, ey - h * 0.2],
            ]
        ) + [parallax[0], 0]
        self._line(draw, head, bridge, a.frame_colour, 0.005)

    def _body(self, draw) -> None:
        a = self.look
        cx, shoulder_y = self.cx, self.cy + a.face_h + 0.075
        sw = 0.42 + 0.05 * (a.face_w - 0.22) / 0.02
        nw = a.face_w * 0.5
        u = np.linspace(-1, 1, 41)
        top = shoulder_y + 0.07 * np.abs(u) ** 2.2  # sloping shoulders
        collar = {"crew": 0.06, "vneck": 0.15, "collar": 0.1, "hoodie": 0.05, "jacket": 0.16}[
            a.clothes
        ]
        dip = collar * _bump(
            u * sw / (nw * 1.35), 0.5 if a.clothes != "vneck" and a.clothes != "jacket" else 1.0
        )
        outline = between(cx + u * sw, top + dip, np.full_like(u, 1.02))
        outline = np.concatenate(
            [outline, [[cx - sw - 0.06, 1.02], [cx - sw - 0.02, shoulder_y + 0.2]]]
        )
        outline[:41] = np.stack([cx + u * sw * np.where(np.abs(u) > 0.9, 1.0, 1.0), top + dip], 1)
        body = np.concatenate([[[cx - sw - 0.05, 1.02]], outline[:41], [[cx + sw + 0.05, 1.02]]])
        self._poly(draw, None, body, a.cloth)
        shade = _scale(a.cloth, 0.78)
        if a.clothes == "collar":
            for side in (-1, 1):
                flap = np.array(
                    [
                        [cx + side * nw * 1.3, shoulder_y - 0.005],
                        [cx + side * 0.004, shoulder_y + collar + 0.005],
                        [cx + side * nw * 2.4, shoulder_y + 0.06],
                    ]
                )
                self._poly(draw, None, flap, a.cloth2)
                self._line(draw, None, flap[[0, 1, 2, 0]], _scale(a.cloth2, 0.75), 0.003)
        elif a.clothes == "hoodie":
            band = between(
                cx + u * nw * 1.9, top + dip - 0.02 - 0.012 * _bump(u, 1), top + dip + 0.012
            )
            self._poly(draw, None, band, shade)
            for side in (-1, 1):
                cord = np.array(
                    [
                        [cx + side * nw * 0.6, shoulder_y + 0.07],
                        [cx + side * nw * 0.65, shoulder_y + 0.17],
                    ]
                )
                self._line(draw, None, cord, a.cloth2, 0.006)
        elif a.clothes == "jacket":
            shirt = np.array(
                [
                    [cx - nw * 1.2, shoulder_y],
                    [cx + nw * 1.2, shoulder_y],
                    [cx + 0.002, shoulder_y + collar + 0.01],
                    [cx - 0.002, shoulder_y + collar + 0.01],
                ]
            )
            self._poly(draw, None, shirt, a.cloth2)
            for side in (-1, 1):
                lapel = np.array(
                    [
                        [cx + side * nw * 1.25, shoulder_y - 0.005],
                        [cx + side * 0.008, shoulder_y + collar + 0.04],
                        [cx + side * 0.02, 1.02],
                        [cx + side * nw * 3.2, 1.02],
                        [cx + side * nw * 2.6, shoulder_y + 0.05],
                    ]
                )
                self._poly(draw, None, lapel, shade)
        else:
            hem = between(cx + u * nw * 1.55, top + dip - 0.004, top + dip + 0.008)
            self._poly(draw, None, hem[np.abs(np.concatenate([u, u[::-1]])) < 0.999], shade)


# -- background ----------------------------------------------------------------------------


def render_background(look: Appearance, size: int) -> Image.Image:
    """The clip's static background as an RGB image of size x size pixels."""
    rng = np.random.default_rng(look.bg_seed)
    c1, c2 = np.array(look.bg1, np.float32), np.array(look.bg2, np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = look.background
    if kind == "vertical":
        t = yy[..., None]
    elif kind == "radial":
        t = np.clip(np.hypot(xx - 0.5, yy - 0.4)[..., None] * 1.5, 0, 1)
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        t = 0.5 + 0.5 * np.sign(
            np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(12, 30))
        )
        t = t[..., None] * 0.25
    elif kind == "blotches":
        low = rng.random((6, 6)).astype(np.float32)
        t = np.asarray(
            Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
            np.float32,
        )
        t = (t / 255.0)[..., None]
    else:
        t = np.zeros((size, size, 1), np.float32) + 0.15 * yy[..., None]
    pixels = c1 * (1 - t) + c2 * t
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if kind == "dots":
        draw = ImageDraw.Draw(img, "RGBA")
        step = size / rng.uniform(6, 12)
        r = step * rng.uniform(0.12, 0.3)
        for i in range(int(size / step) + 2):
            for j in range(int(size / step) + 2):
                x, y = (j + 0.5 * (i % 2)) * step, i * step
                draw.ellipse([x - r, y - r, x + r, y + r], fill=(*look.bg2, 60))
    if kind in ("solid", "vertical", "radial"):  # a soft vignette for depth
        vignette = 1.0 - 0.18 * np.clip(np.hypot(xx - 0.5, yy - 0.45) * 1.6, 0, 1) ** 2
        img = Image.fromarray((np.asarray(img, np.float32) * vignette[..., None]).astype(np.uint8))
    return img.filter(ImageFilter.GaussianBlur(size / 400)) if kind == "dots" else img


# -- motion --------------------------------------------------------------------------------


BLINK_GAP_S = (2.0, 6.0)
BLINK_S = (0.06, 0.04, 0.12)  # closing, closed, opening
NOD_S = 0.45
BROW_S = 0.7


def frame_energy(samples: np.ndarray, n_frames: int, samples_per_frame: int) -> np.ndarray:
    """RMS of each frame's samples, shape (n_frames,), normalised so the loudest frame is 1."""
    padded = np.zeros(n_frames * samples_per_frame, np.float32)
    padded[: min(samples.size, padded.size)] = samples[: padded.size]
    rms = np.sqrt((padded.reshape(n_frames, samples_per_frame) ** 2).mean(axis=1))
    return rms / max(float(rms.max()), 1e-6)


def _smooth_noise(rng: np.random.Generator, n_frames: int, fps: int, period_s: float) -> np.ndarray:
    """Smooth random curve in about [-1, 1], shape (n_frames,): cosine-interpolated knots."""
    step = max(1, int(period_s * fps))
    knots = rng.uniform(-1, 1, n_frames // step + 3)
    t = np.arange(n_frames) / step + rng.random()
    i = t.astype(int)
    f = (1 - np.cos(np.pi * (t - i))) / 2
    return knots[i] * (1 - f) + knots[i + 1] * f


def _pulse(t: np.ndarray, start: float, length: float) -> np.ndarray:
    """A smooth 0 -> 1 -> 0 bump of `length` seconds beginning at `start`, sampled at t."""
    u = (t - start) / length
    return np.where((u > 0) & (u < 1), np.sin(np.pi * np.clip(u, 0, 1)) ** 2, 0.0)


def blink_curve(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Eyelid closure per frame time t (s): blinks every 2-6 s, each about 0.2 s long."""
    out = np.zeros_like(t)
    close, hold, reopen = BLINK_S
    start = rng.uniform(0.3, 3.0)
    while start < t[-1] + 1:
        rise = np.clip((t - start) / close, 0, 1)
        fall = np.clip(1 - (t - start - close - hold) / reopen, 0, 1)
        out = np.maximum(out, np.minimum(rise, fall))
        start += rng.uniform(*BLINK_GAP_S)
    return out


def motion_track(
    rng: np.random.Generator,
    samples: np.ndarray,
    stresses: list[tuple[float, float]],
    n_frames: int,
    fps: int = 25,
) -> np.ndarray:
    """Head pose per frame, shape (n_frames, 7) float32, columns `POSE`.

    `stresses` lists (time s, strength 0..1) of stressed syllables; each may bring a nod
    and, less often, a brow raise. Head drift is smooth noise, livelier while speaking; in
    silence the head keeps a slow idle sway. Blinks come every 2-6 s.
    """
    t = (np.arange(n_frames) + 0.5) / fps
    energy = frame_energy(samples, n_frames, len(samples) // max(n_frames, 1) or 1)
    kernel = np.hanning(int(fps * 0.8) | 1)
    # numpy's mode="same" for a clip at least as long as the kernel, and for shorter ones
    full = np.convolve(energy > 0.05, kernel / kernel.sum(), mode="full")
    activity = full[(len(kernel) - 1) // 2 :][:n_frames]
    liveliness = 0.5 + 0.9 * activity
    pose = np.zeros((n_frames, len(POSE)), np.float32)
    pose[:, DX] = 0.012 * _smooth_noise(rng, n_frames, fps, 2.2) * liveliness
    pose[:, DY] = 0.006 * _smooth_noise(rng, n_frames, fps, 1.7) * liveliness
    pose[:, ROLL] = 0.045 * _smooth_noise(rng, n_frames, fps, 2.5) * liveliness
    pose[:, YAW] = 0.6 * _smooth_noise(rng, n_frames, fps, 3.0) * liveliness
    pitch = 0.25 * _smooth_noise(rng, n_frames, fps, 2.0) * liveliness
    brow = 0.15 * np.clip(_smooth_noise(rng, n_frames, fps, 3.0), 0, None)
    for when, strength in stresses:
        if rng.random() < 0.55:
            nod = _pulse(t, when - 0.08, NOD_S) * strength * rng.uniform(0.6, 1.0)
            pitch += nod
            pose[:, DY] += 0.008 * nod
        if rng.random() < 0.25 * strength:
            brow = np.maximum(brow, _pulse(t, when - 0.15, BROW_S) * rng.uniform(0.6, 1.0))
    pose[:, PITCH] = np.clip(pitch, -1, 1)
    pose[:, BLINK] = blink_curve(rng, t)
    pose[:, BROW] = np.clip(brow, 0, 1)
    return pose


def neutral_pose() -> np.ndarray:
    """Pose vector (7,) of a still, front-facing head with open eyes."""
    return np.zeros(len(POSE), np.float32)


def neutral_mouth() -> np.ndarray:
    """Mouth vector (7,) at rest: lips closed."""
    return np.array([*REST, 0.0], np.float32)


def draw_avatar(seed: int, size: int = 512, textured: bool = False) -> np.ndarray:
    """One avatar of appearance `seed`, neutral and mouth closed: uint8 (size, size, 3).
    `textured`: with the textures of `texture_for_seed(seed)` (same face otherwise)."""
    look = sample_appearance(np.random.default_rng(seed))
    supersample = SUPERSAMPLE if size <= 256 else 2
    texture = texture_for_seed(seed) if textured else None
    renderer = AvatarRenderer(look, size, supersample, texture)
    return renderer.draw(neutral_mouth(), neutral_pose()).pixels


TEXTURE_TAG = 0x7E87  # keeps texture randomness apart from the appearance's stream


def texture_for_seed(*seed: int) -> AvatarTexture:
    """The texture of the avatar drawn from `seed` (one or more ints), from its own random
    stream: switching textures on changes nothing else of the avatar or its clip."""
    return sample_texture(np.random.default_rng(np.random.SeedSequence([*seed, TEXTURE_TAG])))
