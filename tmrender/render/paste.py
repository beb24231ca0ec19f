"""Paste-back: each rendered aligned crop goes back into the original picture, frame by frame.

The model renders an aligned `S` x `S` crop (`tmrender.faces.align`). `PasteBack` warps
every rendered frame back into the picture through the alignment's inverse and blends it
in with a feathered elliptical mask over the face, so that only the face region changes:
where the mask is 0 the frames are the picture's own (its I420 planes, bit for bit). The
paste works in the video's planes (Y at full resolution, U and V at half), a block of
frames at a time, limited to the mask's bounding box, and nothing is kept between frames
but the picture and the colour correction: memory is constant, whatever the video's length.

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
from torch import Tensor

from tmrender.faces.align import Alignment, warp_from_crop

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
YUV_OFFSETS = (16.0, 128.0, 128.0)
OVERSAMPLE = 2  # RegionWarp's upright grid has this many pixels per crop pixel (per side)
CHROMA_OVERSAMPLE = 1  # the same for U and V (at half the resolution, and softer anyway)


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
    """Rendered crops (n, S, S, 3) uint8 -> frames of the picture, as I420 for the encoder
    (`planar`) or as RGB (n, H, W, 3) uint8 (`__call__`).

    image: the original RGB uint8 picture (H0, W0, 3), cut to even (H, W); alignment: the
    map from its pixels to the crop; reference: the aligned crop the model was given
    (S, S, 3), the colour target.

    The paste works on the video's planes, not on RGB, a block of frames at a time: the
    crops are colour-matched and converted to Y, U and V at their own small size
    (`crop_planes`), Y is warped into the region at full resolution and U, V at half
    resolution each way (`RegionWarp`), and each plane is blended into the picture's
    (`PlaneBlend`): half the pixels of an RGB paste, and no conversion of the region per
    frame. Everything that does not change from frame to frame is made once here: the
    picture's planes, the region the mask touches, the mask there (8 bits, and its 2 x 2
    means for U and V), the planes below it and the warps' sampling grids.
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
        self.region, self.alignment = _region(self.crop_mask, alignment, (height, width))
        picture = rgb_to_yuv420(self.image)
        self.i420 = np.concatenate([plane.ravel() for plane in picture])  # the whole picture
        mask = self._region_mask()
        self.parts = tuple(
            PlaneBlend(plane, self.region, mask, step)
            for plane, step in zip(picture, (1, 2, 2), strict=True)
        )
        y, x = self.region
        shape = (y.stop - y.start, x.stop - x.start)
        self.luma_warp = RegionWarp(self.alignment, shape, OVERSAMPLE)
        half = (shape[0] // 2, shape[1] // 2)
        self.chroma_warp = RegionWarp(self.alignment, half, CHROMA_OVERSAMPLE, step=2)

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

    def planar(self, frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Paste a block of rendered crops (n, S, S, 3) uint8 -> I420 frames
        (n, H * W * 3 // 2) uint8 (planes Y, U, V one after the other, BT.601 limited range
        as `rgb_to_yuv420`), which the encoder takes as they are.

        out: an earlier block of this paste's frames, the same n, to write these into (only
        the region changes, so only the region is written: no copy of the picture and no
        fresh memory per block); None: new frames."""
        if out is None:
            out = np.empty((len(frames), self.i420.size), np.uint8)
            out[:] = self.i420
        assert out.shape == (len(frames), self.i420.size), out.shape
        with torch.inference_mode():
            planes = self.crop_planes(frames)
            luma = self.luma_warp(planes[:, :1]).numpy()
            chroma = self.chroma_warp(planes[:, 1:]).numpy()
        warped = (luma[:, 0], chroma[:, 0], chroma[:, 1])
        planes = i420_planes(out, self.image.shape[:2])
        for plane, part, pixels in zip(planes, self.parts, warped, strict=True):
            plane[:, part.rows, part.cols] = part(pixels)
        return out

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """The same frames in RGB (n, H, W, 3) uint8, for whoever wants pixels rather than
        the video: where the mask touches the picture, `planar`'s frames converted back
        (`yuv420_to_rgb`); elsewhere the picture's own pixels."""
        out = np.repeat(self.image[None], len(frames), axis=0)
        y, x = self.region
        inside = self.parts[0].mask > 0
        for rgb, i420 in zip(out, self.planar(frames), strict=True):
            rgb[y, x][inside] = yuv420_to_rgb(*self.region_planes(i420))[inside]
        return out

    def region_planes(self, i420: np.ndarray) -> tuple[np.ndarray, ...]:
        """Views of the region in an I420 frame (H * W * 3 // 2,): Y (h, w), U and V
        (h/2, w/2)."""
        planes = i420_planes(i420, self.image.shape[:2])
        return tuple(p[part.rows, part.cols] for p, part in zip(planes, self.parts, strict=True))

    def crop_planes(self, frames: np.ndarray) -> Tensor:
        """Rendered crops (n, S, S, 3) uint8 -> colour-matched Y, U and V at the crop's
        resolution, (n, 3, S, S) float32 on the 0-255 scale, not rounded. The first crop
        ever seen fixes the colour matching."""
        assert frames.ndim == 4 and frames.shape[1:] == self.reference.shape, frames.shape
        if self.gain is None and len(frames):
            self.match_colours(frames[0])
        pixels = torch.from_numpy(frames if frames.flags.writeable else frames.copy())
        rgb = pixels.permute(0, 3, 1, 2).float()
        gain, bias = (torch.from_numpy(v)[:, None, None] for v in (self.gain, self.bias))
        rgb = rgb.mul_(gain).add_(bias).clamp_(0, 255)
        weight = torch.from_numpy(YUV_ROWS)[:, :, None, None]
        return F.conv2d(rgb, weight, torch.tensor(YUV_OFFSETS))


class PlaneBlend:
    """One plane's share of the paste: the rows and columns of the plane that the region
    covers (`step`: 1 for Y, 2 for the half-size U and V), and the 8-bit blend of warped
    pixels there with the picture's plane.

    plane: the picture's plane; region: the (y, x) slices in full-resolution pixels, even
    bounds; mask: (h, w) float32 over the region. The mask of a half-size plane is the
    mean of each 2 x 2 block, so it is 0 wherever the four pixels' masks are: there, as
    wherever the mask is 0, the result is the picture's own plane, exactly.
    """

    def __init__(
        self, plane: np.ndarray, region: tuple[slice, slice], mask: np.ndarray, step: int
    ) -> None:
        y, x = region
        self.rows = slice(y.start // step, y.stop // step)
        self.cols = slice(x.start // step, x.stop // step)
        height, width = mask.shape[0] // step, mask.shape[1] // step
        mask = mask.reshape(height, step, width, step).mean(axis=(1, 3))
        self.mask = np.round(mask * 255).astype(np.uint16)
        # the picture's share, rounded: (pixels * m + below * (255 - m) + 127) // 255
        self.below = plane[self.rows, self.cols] * (255 - self.mask) + 127

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Warped pixels (n, h, w) uint8 -> blended with the picture (n, h, w) uint8."""
        mixed = pixels * self.mask
        mixed += self.below
        mixed //= 255
        return mixed.astype(np.uint8)


class RegionWarp:
    """The similarity warp of the crop's planes onto the region (or onto the region at
    half resolution, `step` 2, for U and V), in two fast resamplings instead of one slow
    one: (1) the rotation, a bicubic `grid_sample` into an upright grid `oversample` times
    denser than the crop (small), then (2) the scale, a separable bicubic resize of that
    grid onto the region, edge to edge (torch's uint8 kernel: Pillow's filter). When the
    region is not larger than the grid would be, it is one `grid_sample` at the region's
    size. Outside the crop the edge pixels repeat (the mask is 0 there anyway).

    alignment: the map from region pixels (pixel centres at integers) to crop pixels;
    shape: the (h, w) of the output at `step` region pixels per pixel.
    """

    def __init__(
        self, alignment: Alignment, shape: tuple[int, int], oversample: int, step: int = 1
    ) -> None:
        height, width = self.shape = (int(shape[0]), int(shape[1]))
        scale = alignment.scale * step  # crop pixels per output pixel
        grid = (round(oversample * scale * height), round(oversample * scale * width))
        split = min(grid) >= 2 and grid[1] < width
        self.grid_shape = grid if split else self.shape
        # grid pixel g spans output pixels edge to edge: (g + 0.5) / steps = p + 0.5, and
        # output pixel p is region pixel step * p + (step - 1) / 2
        steps = np.array(self.grid_shape[::-1], np.float64) / np.array(self.shape[::-1])
        xs, ys = (
            ((np.arange(n) + 0.5) / s - 0.5) * step + (step - 1) / 2
            for n, s in zip(self.grid_shape[::-1], steps, strict=True)
        )
        points = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None]), axis=-1)
        crop = points @ alignment.matrix[:, :2].T + alignment.matrix[:, 2]
        # grid_sample's coordinates: -1 and 1 are the crop's outer edges
        normalised = (crop + 0.5) / alignment.size * 2 - 1
        self.grid = torch.from_numpy(normalised.astype(np.float32))[None]

    def __call__(self, planes: Tensor) -> Tensor:
        """Planes of the crop (n, c, S, S) float32 (0-255) -> warped (n, c, h, w) uint8."""
        grid = self.grid.expand(len(planes), -1, -1, -1)
        sampled = F.grid_sample(
            planes, grid, mode="bicubic", padding_mode="border", align_corners=False
        )
        pixels = sampled.add_(0.5).clamp_(0, 255).to(torch.uint8)  # rounded
        return pixels if self.grid_shape == self.shape else resize(pixels, self.shape)


def resize(pixels: Tensor, shape: tuple[int, int]) -> Tensor:
    """Planes uint8 (n, c, h, w) -> (n, c, H, W), bicubic (Pillow's filter: torch's uint8
    kernel, which antialias=True selects; nothing is shrunk here). The planes go through
    four at a time, as the channels of one image: torch's fast path is for 3 and 4
    channels, 2x faster than one plane at a time."""
    n, c, height, width = pixels.shape
    planes = pixels.reshape(n * c, height, width)
    spare = -len(planes) % 4
    if spare:
        planes = torch.cat([planes, planes.new_zeros(spare, height, width)])
    out = F.interpolate(
        planes.view(-1, 4, height, width), size=shape, mode="bicubic", antialias=True
    )
    return out.view(-1, *shape)[: n * c].view(n, c, *shape)


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


def yuv420_to_rgb(luma: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The planes Y (H, W), U and V (H/2, W/2) uint8 -> RGB uint8 (H, W, 3): the inverse of
    `rgb_to_yuv420`, each chroma sample repeated over its 2 x 2 block."""
    assert luma.shape == (2 * u.shape[0], 2 * u.shape[1]) and u.shape == v.shape, luma.shape
    chroma = [np.repeat(np.repeat(c, 2, axis=0), 2, axis=1).astype(np.float32) for c in (u, v)]
    planes = [luma.astype(np.float32) - 16.0, chroma[0] - 128.0, chroma[1] - 128.0]
    rgb = [_mix(row, *planes) + 0.5 for row in np.linalg.inv(YUV_ROWS)]
    return np.clip(np.stack(rgb, axis=2), 0, 255).astype(np.uint8)


def _mix(weights: np.ndarray, red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> np.ndarray:
    """weights (3,) . (red, green, blue), planes of one shape (float32)."""
    return red * weights[0] + green * weights[1] + blue * weights[2]


def i420_planes(frames: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Views Y (..., H, W), U and V (..., H/2, W/2) of I420 frames (..., H * W * 3 // 2)
    of `shape` (one frame or a block)."""
    height, width = shape
    luma, quarter = height * width, height * width // 4
    lead = frames.shape[:-1]
    return (
        frames[..., :luma].reshape(*lead, height, width),
        frames[..., luma : luma + quarter].reshape(*lead, height // 2, width // 2),
        frames[..., luma + quarter :].reshape(*lead, height // 2, width // 2),
    )


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
