"""Paste-back: each rendered aligned crop goes back into the original picture, frame by frame.

The model renders an aligned `S` x `S` crop (`tmrender.faces.align`). `PasteBack` warps
every rendered frame back into the picture through the alignment's inverse and blends it
in with a feathered elliptical mask over the face, so that only the face region changes:
pixels where the mask is 0 are the picture's own, bit for bit. The work per frame is
limited to the mask's bounding box, and nothing is kept between frames but the picture and
the colour correction: memory is constant, whatever the video's length.

Colour matching: the decoder's colours drift a little from the portrait's (a VAE's bias),
which would show as a tinted patch. The first rendered frame fixes a per-channel gain and
bias (the portrait's mean and spread over the mask, against the frame's), applied to every
frame; fixed once, so that it cannot flicker.

The mask, in fractions of the crop's side: an ellipse around the face of the model's
framing (the avatars' face: centre 0.5, 0.53; half-axes 0.22 x 0.24, so the brows, cheeks,
mouth and an open jaw), 1 inside `1 - FEATHER` of its radius and falling smoothly to 0 at
its edge. On a detected face it stays within the detector's box grown by 10%
(docs/FACES.md, "Paste-back").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tmrender.faces.align import EDGE, Alignment, warp_from_crop

MASK_CENTRE = (0.5, 0.53)  # x, y as fractions of the crop's side
MASK_RADII = (0.22, 0.24)
FEATHER = 0.35  # the outer share of the radius over which the mask fades to 0
GAIN_RANGE = (0.8, 1.25)  # colour matching never scales a channel further than this
# BT.601 (Y, U, V) rows of RGB in 0..255, scaled to the limited ranges 16-235 and 16-240
YUV_ROWS = np.array(
    [
        [0.299 * 219 / 255, 0.587 * 219 / 255, 0.114 * 219 / 255],
        [-0.168736 * 224 / 255, -0.331264 * 224 / 255, 0.5 * 224 / 255],
        [0.5 * 224 / 255, -0.418688 * 224 / 255, -0.081312 * 224 / 255],
    ],
    np.float32,
)
OVERSAMPLE = 2  # RegionWarp's upright grid has this many pixels per crop pixel (per side)


def even_size(height: int, width: int) -> tuple[int, int]:
    """(H, W) rounded down to even numbers (H.264's 4:2:0 needs them), at least 2."""
    return max(2, height - height % 2), max(2, width - width % 2)


def face_mask(size: int) -> np.ndarray:
    """The feathered face mask (size, size) float32 in [0, 1] of a model-framed crop."""
    centres = (np.arange(size) + 0.5) / size
    dx = (centres[None, :] - MASK_CENTRE[0]) / MASK_RADII[0]
    dy = (centres[:, None] - MASK_CENTRE[1]) / MASK_RADII[1]
    radius = np.sqrt(dx**2 + dy**2)
    t = np.clip((1.0 - radius) / FEATHER, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep


class PasteBack:
    """Rendered crops (n, S, S, 3) uint8 -> frames of the picture (n, H, W, 3) uint8.

    image: the original RGB uint8 picture (H0, W0, 3), cut to even (H, W); alignment: the
    map from its pixels to the crop; reference: the aligned crop the model was given
    (S, S, 3), the colour target.

    Everything that does not change from frame to frame is made once here: the region the
    mask touches, the mask there (8 bits), the picture below it and the warp's geometry.
    Per frame: the colour table, the warp (`RegionWarp`) and an 8-bit blend, all in Pillow.
    """

    def __init__(self, image: np.ndarray, alignment: Alignment, reference: np.ndarray) -> None:
        size = alignment.size
        assert reference.shape == (size, size, 3), reference.shape
        height, width = even_size(*image.shape[:2])
        self.image = np.ascontiguousarray(image[:height, :width])
        self.crop_mask = face_mask(size)
        self.reference = reference
        self.gain: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        self._table: list[int] | None = None  # Pillow's per-channel lookup of gain and bias
        self.region, self.alignment = _region(self.crop_mask, alignment, (height, width))
        y, x = self.region
        self.mask = Image.fromarray(np.round(self._region_mask() * 255).astype(np.uint8))
        self.below = Image.fromarray(self.image[y, x])
        # region pixel -> pixel of the crop padded by EDGE
        to_padded = self.alignment.matrix + [[0, 0, EDGE], [0, 0, EDGE]]
        self.warp = RegionWarp(to_padded, self.below.size)
        self.planes: np.ndarray | None = None  # the picture in I420, made on first use

    @property
    def size(self) -> tuple[int, int]:
        """The output frames' (width, height)."""
        return self.image.shape[1], self.image.shape[0]

    def _region_mask(self) -> np.ndarray:
        """The mask warped into the region (h, w) float32: face mask x crop coverage."""
        y, x = self.region
        shape = (y.stop - y.start, x.stop - x.start)
        mask8 = np.repeat((self.crop_mask * 255).round().astype(np.uint8)[..., None], 3, 2)
        warped, coverage = warp_from_crop(mask8, self.alignment, shape)
        return (warped[..., 0].astype(np.float32) / 255.0) * coverage

    def match_colours(self, frame: np.ndarray) -> None:
        """Fix the per-channel gain and bias that bring `frame` (S, S, 3) to the reference's
        mean and spread over the mask."""
        weight = self.crop_mask[..., None] / self.crop_mask.sum()
        ref, out = self.reference.astype(np.float64), frame.astype(np.float64)
        ref_mean, out_mean = (ref * weight).sum((0, 1)), (out * weight).sum((0, 1))
        ref_std = np.sqrt((((ref - ref_mean) ** 2) * weight).sum((0, 1)))
        out_std = np.sqrt((((out - out_mean) ** 2) * weight).sum((0, 1)))
        gain = np.clip(ref_std / np.maximum(out_std, 1e-3), *GAIN_RANGE)
        self.gain = gain.astype(np.float32)
        self.bias = (ref_mean - gain * out_mean).astype(np.float32)
        levels = np.arange(256, dtype=np.float32)[:, None] * self.gain + self.bias + 0.5
        self._table = np.clip(levels, 0, 255).astype(np.uint8).T.ravel().tolist()

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Paste a block of rendered crops (n, S, S, 3) uint8 -> (n, H, W, 3) uint8."""
        out = np.repeat(self.image[None], len(frames), axis=0)
        y, x = self.region
        for i, pixels in enumerate(self._pasted(frames)):
            out[i, y, x] = pixels
        return out

    def planar(self, frames: np.ndarray) -> np.ndarray:
        """The same, as I420 frames (n, H * W * 3 // 2) uint8 (`rgb_to_yuv420`, planes
        one after the other), which the encoder takes as they are: only the region is
        converted per frame, the picture once (ffmpeg would convert every whole frame)."""
        if self.planes is None:
            self.planes = np.concatenate([p.ravel() for p in rgb_to_yuv420(self.image)])
        out = np.repeat(self.planes[None], len(frames), axis=0)
        y, x = self.region
        for i, pixels in enumerate(self._pasted(frames)):
            planes = i420_planes(out[i], self.image.shape[:2])
            for plane, part, step in zip(planes, rgb_to_yuv420(pixels), (1, 2, 2), strict=True):
                plane[y.start // step : y.stop // step, x.start // step : x.stop // step] = part
        return out

    def _pasted(self, frames: np.ndarray):
        """Each rendered crop of a block blended into the picture's region: (h, w, 3) uint8."""
        assert frames.ndim == 4 and frames.shape[1:] == self.reference.shape, frames.shape
        if self._table is None and len(frames):
            self.match_colours(frames[0])
        for frame in frames:
            yield np.asarray(Image.composite(self._warp(frame), self.below, self.mask))

    def _warp(self, frame: np.ndarray) -> Image.Image:
        """A rendered crop (S, S, 3), colour-matched, warped into the region (w x h RGB;
        the crop's edge repeated so that its border samples stay unmixed)."""
        padded = np.pad(frame, ((EDGE, EDGE), (EDGE, EDGE), (0, 0)), mode="edge")
        return Image.fromarray(self.warp(Image.fromarray(padded).point(self._table)))


class RegionWarp:
    """A similarity warp of a small picture (the padded crop) up to a large region, in two
    fast resamplings instead of one slow one.

    Pillow's affine transform evaluates a 4 x 4 bicubic kernel per output pixel in floating
    point; at the region's size (a face of 300 px from a 128 px crop) that is most of the
    paste's time. So: (1) the rotation, as a bicubic affine warp into an upright grid
    `OVERSAMPLE` times denser than the crop (still small), then (2) the scale, as a
    separable bicubic resize of that grid, edge to edge, onto the region (torch's uint8
    kernel, Pillow's filter, 3x faster than Pillow's own resize). Against the one-pass
    warp: 44.7-54.5 dB PSNR over the region on 19 real portraits (docs/FACES.md,
    "Paste-back"). When the region is not larger than the grid would be, it is one affine
    warp, as before.

    matrix: (2, 3) map from region pixels to source pixels (pixel centres at integers);
    size: the region's (w, h).
    """

    def __init__(self, matrix: np.ndarray, size: tuple[int, int]) -> None:
        self.size = size
        linear = matrix[:, :2]
        scale = float(np.sqrt(abs(np.linalg.det(linear))))  # source pixels per region pixel
        width, height = size
        self.grid_size = (round(OVERSAMPLE * scale * width), round(OVERSAMPLE * scale * height))
        if min(self.grid_size) < 2 or self.grid_size[0] >= width:  # not worth splitting
            self.grid_size = None
            self.data = _affine_data(matrix)
            return
        # grid pixel g spans region pixels edge to edge: g + 0.5 = (p + 0.5) * steps
        steps = np.array(self.grid_size, np.float64) / np.array(size, np.float64)
        grid_linear = linear / steps[None, :]
        shift = matrix[:, 2] + linear @ (0.5 / steps - 0.5)
        self.data = _affine_data(np.concatenate([grid_linear, shift[:, None]], axis=1))

    def __call__(self, source: Image.Image) -> np.ndarray:
        """The source picture (RGB) warped into the region (h, w, 3) uint8."""
        bicubic = Image.Resampling.BICUBIC
        if self.grid_size is None:
            return np.asarray(
                source.transform(self.size, Image.Transform.AFFINE, self.data, bicubic)
            )
        grid = source.transform(self.grid_size, Image.Transform.AFFINE, self.data, bicubic)
        pixels = torch.from_numpy(np.asarray(grid).copy()).permute(2, 0, 1)[None]  # channels last
        width, height = self.size
        # antialias=True selects the uint8 kernel (Pillow's filter); nothing is shrunk here
        out = F.interpolate(pixels, size=(height, width), mode="bicubic", antialias=True)
        return out[0].permute(1, 2, 0).numpy()


def rgb_to_yuv420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB uint8 (H, W, 3), H and W even -> the planes Y (H, W), U and V (H/2, W/2) uint8.

    BT.601 limited range, what ffmpeg's rgb24 -> yuv420p conversion uses and what players
    assume for untagged video, rounded; each chroma sample is that of its 2 x 2 block's
    mean. Channel by channel: numpy's (N, 3) @ (3, 3) product is 10x slower here."""
    height, width = rgb.shape[:2]
    assert rgb.ndim == 3 and height % 2 == 0 and width % 2 == 0, rgb.shape
    red, green, blue = (rgb[..., c].astype(np.float32) for c in range(3))
    luma = _mix(YUV_ROWS[0], red, green, blue) + 16.5  # + 0.5: rounded by the cast below
    means = [(c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]) * 0.25
             for c in (red, green, blue)]  # fmt: skip
    planes = [luma] + [_mix(row, *means) + 128.5 for row in YUV_ROWS[1:]]
    return tuple(np.clip(plane, 0, 255).astype(np.uint8) for plane in planes)


def _mix(weights: np.ndarray, red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> np.ndarray:
    """weights (3,) . (red, green, blue), planes of one shape (float32)."""
    return red * weights[0] + green * weights[1] + blue * weights[2]


def i420_planes(frame: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Views Y (H, W), U and V (H/2, W/2) of an I420 frame (H * W * 3 // 2,) of `shape`."""
    height, width = shape
    luma, quarter = height * width, height * width // 4
    return (
        frame[:luma].reshape(height, width),
        frame[luma : luma + quarter].reshape(height // 2, width // 2),
        frame[luma + quarter :].reshape(height // 2, width // 2),
    )


def _affine_data(matrix: np.ndarray) -> tuple[float, ...]:
    """Pillow's AFFINE data (output -> input, continuous coordinates) of a (2, 3) map from
    output pixels to input pixels given with pixel centres at integers."""
    linear, shift = matrix[:, :2], matrix[:, 2]
    offset = shift + 0.5 - linear @ np.array([0.5, 0.5])
    return (*linear[0], offset[0], *linear[1], offset[1])


def _region(
    crop_mask: np.ndarray, alignment: Alignment, shape: tuple[int, int]
) -> tuple[tuple[slice, slice], Alignment]:
    """The picture's rows and columns (y, x slices, even bounds) that the mask can touch,
    and the alignment from that region's pixels to the crop. `shape` (H, W) is even."""
    size = alignment.size
    ys, xs = np.nonzero(crop_mask > 0)
    corners = np.array(
        [[xs.min(), ys.min()], [xs.max(), ys.min()], [xs.min(), ys.max()], [xs.max(), ys.max()]]
    )
    corners = alignment.to_image(np.concatenate([corners - 1.0, corners + 1.0]))
    height, width = shape
    x0, y0 = np.floor(corners.min(0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 3
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, max(x1, 1)), min(height, max(y1, 1))
    x0, y0 = min(x0, x1 - 1), min(y0, y1 - 1)
    # even edges: the region is whole 2 x 2 blocks of the picture's 4:2:0 chroma (`planar`)
    x0, y0, x1, y1 = x0 - x0 % 2, y0 - y0 % 2, x1 + x1 % 2, y1 + y1 % 2
    matrix = alignment.matrix.copy()
    matrix[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float64)
    return (slice(y0, y1), slice(x0, x1)), Alignment(matrix, size)
