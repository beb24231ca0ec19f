"""Image input: PNG, JPEG, WebP and BMP in any pixel mode become upright RGB uint8 at the
requested size, scaled to cover and centre-cropped (or cut by an explicit crop box)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tmrender.errors import UserInputError
from tmrender.media.image import NEUTRAL_BACKGROUND, CropBox, load_image, open_rgb

RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)
EXIF_ORIENTATION = 0x0112


def pixels(path) -> np.ndarray:
    """The whole image as open_rgb gives it: RGB uint8, shape (H, W, 3)."""
    return np.asarray(open_rgb(path))


def halves(width: int, height: int, left=RED, right=BLUE) -> Image.Image:
    """An RGB image whose left half is `left` and right half is `right`."""
    array = np.empty((height, width, 3), np.uint8)
    array[:, : width // 2], array[:, width // 2 :] = left, right
    return Image.fromarray(array)


# --- Formats and pixel modes ----------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "tol"), [(".png", 0), (".jpg", 12), (".webp", 12), (".bmp", 0)])
def test_formats_load_as_rgb_uint8(tmp_path, suffix, tol):
    path = tmp_path / f"halves{suffix}"
    halves(64, 48).save(path)
    image = load_image(path, size=(32, 32))
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    # 64x48 -> cover 32x32 = 43x32, centre-cropped: red on the left, blue on the right.
    assert np.abs(image[:, :8].astype(int) - RED).max() <= tol
    assert np.abs(image[:, -8:].astype(int) - BLUE).max() <= tol


@pytest.mark.parametrize("suffix", [".png", ".webp"])
def test_rgba_is_composited_on_neutral_grey(tmp_path, suffix):
    array = np.zeros((8, 8, 4), np.uint8)
    array[:, :4] = (0, 0, 0, 0)  # fully transparent black
    array[:, 4:] = (255, 0, 0, 255)  # opaque red
    array[0, 7] = (255, 0, 0, 128)  # half-transparent red
    path = tmp_path / f"rgba{suffix}"
    Image.fromarray(array, "RGBA").save(path, lossless=True)
    rgb = pixels(path)
    assert rgb.shape == (8, 8, 3)
    assert tuple(rgb[4, 1]) == NEUTRAL_BACKGROUND == (128, 128, 128)
    assert tuple(rgb[4, 6]) == RED
    assert np.abs(rgb[0, 7].astype(int) - (191, 64, 64)).max() <= 2


def test_grey_with_alpha_is_composited(tmp_path):
    image = Image.new("LA", (4, 4), (255, 0))  # white, fully transparent
    image.putpixel((0, 0), (0, 255))  # opaque black
    image.save(tmp_path / "la.png")
    rgb = pixels(tmp_path / "la.png")
    assert tuple(rgb[3, 3]) == NEUTRAL_BACKGROUND and tuple(rgb[0, 0]) == (0, 0, 0)


def test_grayscale_becomes_equal_channels(tmp_path):
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))
    Image.fromarray(ramp, "L").save(tmp_path / "grey.png")
    rgb = pixels(tmp_path / "grey.png")
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], ramp)


def test_16_bit_grayscale_is_scaled_not_saturated(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (4, 1))
    ramp[0, 0] = 32768  # mid-grey
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    rgb = pixels(tmp_path / "grey16.png")
    assert abs(int(rgb[0, 0, 0]) - 128) <= 1
    np.testing.assert_allclose(rgb[1, :, 0], ramp[1] / 257.0, atol=1)
    assert rgb[1, 0, 0] == 0 and rgb[1, -1, 0] == 255


def test_palette_without_transparency(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([*GREEN, *BLUE] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.save(tmp_path / "pal.png")
    rgb = pixels(tmp_path / "pal.png")
    assert tuple(rgb[0, 0]) == BLUE and tuple(rgb[3, 3]) == GREEN


def test_palette_transparency_becomes_grey(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([*GREEN, *RED] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.save(tmp_path / "pal-t.png", transparency=0)
    rgb = pixels(tmp_path / "pal-t.png")
    assert tuple(rgb[0, 0]) == RED and tuple(rgb[3, 3]) == NEUTRAL_BACKGROUND


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    rgb = pixels(tmp_path / "cmyk.jpg")
    assert np.abs(rgb.astype(int) - RED).max() <= 8


CORNERS = {
    "top-left": (slice(0, 3), slice(0, 3)),
    "top-right": (slice(0, 3), slice(-3, None)),
    "bottom-left": (slice(-3, None), slice(0, 3)),
    "bottom-right": (slice(-3, None), slice(-3, None)),
}


@pytest.mark.parametrize(
    ("orientation", "shape", "red_corner"),
    [
        (1, (20, 40), "top-left"),  # as stored
        (3, (20, 40), "bottom-right"),  # rotate 180 degrees
        (6, (40, 20), "top-right"),  # rotate 90 degrees clockwise
        (8, (40, 20), "bottom-left"),  # rotate 90 degrees anticlockwise
    ],
)
def test_exif_orientation_is_honoured(tmp_path, orientation, shape, red_corner):
    array = np.zeros((20, 40, 3), np.uint8)  # landscape, red square in the top-left corner
    array[:6, :6] = RED
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(array).save(tmp_path / "o.jpg", exif=exif, quality=95)
    rgb = pixels(tmp_path / "o.jpg").astype(int)
    assert rgb.shape == (*shape, 3)
    for name, corner in CORNERS.items():
        if name == red_corner:
            assert np.abs(rgb[corner] - RED).max() <= 16, name
        else:
            assert rgb[corner].max() <= 16, name


def test_first_frame_of_an_animation(tmp_path):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    assert tuple(pixels(tmp_path / "anim.webp")[4, 4]) == RED


# --- Size and crop --------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(200, 100), (100, 200)])
def test_non_square_input_keeps_its_aspect(tmp_path, width, height):
    # A white centre square with green bands on the long sides: covering a square target and
    # centre-cropping shows only white; squashing the image would bring the green in.
    array = np.zeros((height, width, 3), np.uint8)
    array[:] = GREEN
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    array[top : top + side, left : left + side] = WHITE
    Image.fromarray(array).save(tmp_path / "wide.png")
    image = load_image(tmp_path / "wide.png", size=(64, 64))
    assert image.shape == (64, 64, 3)
    assert image[..., 0].min() >= 200  # squashing would bring in pure green (red = 0)


def test_output_size_is_height_by_width(tmp_path):
    halves(64, 64).save(tmp_path / "sq.png")
    assert load_image(tmp_path / "sq.png", size=(24, 40)).shape == (24, 40, 3)


def test_explicit_crop_box_is_cut_first(tmp_path):
    array = np.zeros((60, 100, 3), np.uint8)
    array[10:30, 40:60] = RED
    Image.fromarray(array).save(tmp_path / "box.png")
    image = load_image(tmp_path / "box.png", size=(16, 16), crop=CropBox(40, 10, 20, 20))
    assert np.abs(image.astype(int) - RED).max() <= 2
    # The crop box is in upright pixels and may touch the edges exactly.
    edge = load_image(tmp_path / "box.png", size=(8, 8), crop=CropBox(0, 0, 100, 60))
    assert edge.shape == (8, 8, 3)


@pytest.mark.parametrize("box", [CropBox(90, 0, 20, 20), CropBox(0, 50, 20, 20)])
def test_crop_outside_the_image(tmp_path, box):
    halves(100, 60).save(tmp_path / "small.png")
    with pytest.raises(UserInputError, match="lies outside the 100x60 image"):
        load_image(tmp_path / "small.png", size=(16, 16), crop=box)


def test_crop_box_parse():
    assert CropBox.parse("40,0,512,512") == CropBox(40, 0, 512, 512)
    assert CropBox.parse(" 1, 2, 3, 4 ") == CropBox(1, 2, 3, 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3", "x,y,w,h"),
        ("1,2,3,4,5", "x,y,w,h"),
        ("a,b,c,d", "x,y,w,h"),
        ("", "x,y,w,h"),
        ("1.5,0,8,8", "x,y,w,h"),
        ("-1,0,8,8", "x, y >= 0"),
        ("0,0,0,8", "w, h > 0"),
    ],
)
def test_crop_box_parse_errors(text, message):
    with pytest.raises(UserInputError, match=message.replace(".", r"\.")):
        CropBox.parse(text)


# --- Bad inputs -----------------------------------------------------------------------------


def test_missing_image(tmp_path):
    with pytest.raises(UserInputError, match="image file not found"):
        load_image(tmp_path / "face.png", size=(8, 8))


def test_text_file_as_image(text_file):
    with pytest.raises(UserInputError, match="not an image"):
        load_image(text_file, size=(8, 8))


def test_truncated_image(tmp_path):
    halves(64, 64).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="damaged or unsupported"):
        load_image(tmp_path / "cut.png", size=(8, 8))
