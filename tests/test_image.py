"""The one image reader: every PIL mode, every file format PIL writes them in, EXIF, bad files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from workbench.data import image as image_module
from workbench.data.image import read_image

WHITE, BLACK = (255, 255, 255), (0, 0, 0)

# mode -> (fill pixel, expected RGB, pixel at (0, 0), expected RGB, tolerance). The 3x2 test image
# is the fill with one different pixel in its top-left corner.
KNOWN_PIXELS = {
    "1": (1, WHITE, 0, BLACK, 0),
    "L": (200, (200,) * 3, 50, (50,) * 3, 0),
    "LA": ((200, 255), (200,) * 3, (200, 128), (100,) * 3, 0),  # alpha composited on black
    "La": ((200, 255), (200,) * 3, (100, 128), (100,) * 3, 0),  # already premultiplied
    "P": (1, (200, 100, 50), 2, (10, 20, 30), 0),
    "PA": ((1, 255), (200, 100, 50), (1, 128), (100, 50, 25), 0),
    "RGB": ((200, 100, 50), (200, 100, 50), (10, 20, 30), (10, 20, 30), 0),
    "RGBA": ((200, 100, 50, 255), (200, 100, 50), (200, 100, 50, 128), (100, 50, 25), 0),
    "RGBa": ((200, 100, 50, 255), (200, 100, 50), (100, 50, 25, 128), (100, 50, 25), 0),
    "RGBX": ((200, 100, 50, 0), (200, 100, 50), (10, 20, 30, 0), (10, 20, 30), 0),
    "CMYK": ((0, 0, 0, 0), WHITE, (255, 0, 0, 0), (0, 255, 255), 0),
    "YCbCr": ((255, 128, 128), WHITE, (0, 128, 128), BLACK, 1),
    "LAB": ((255, 128, 128), WHITE, (0, 128, 128), BLACK, 1),  # lcms's D50 white is (254, 255, 254)
    "HSV": ((0, 255, 255), (255, 0, 0), (85, 255, 255), (0, 255, 0), 0),
    "I": (65535, WHITE, 32768, (128,) * 3, 0),
    "I;16": (65535, WHITE, 32768, (128,) * 3, 0),  # scaled by the 16-bit range, not clipped
    "I;16B": (65535, WHITE, 32768, (128,) * 3, 0),
    "I;16L": (65535, WHITE, 32768, (128,) * 3, 0),
    "I;16N": (65535, WHITE, 32768, (128,) * 3, 0),
    "F": (1.0, WHITE, 0.5, (128,) * 3, 0),
}
PALETTE = [0, 0, 0, 200, 100, 50, 10, 20, 30]


def known_image(mode: str) -> Image.Image:
    fill, _, corner, _, _ = KNOWN_PIXELS[mode]
    image = Image.new(mode, (3, 2), fill)
    if mode in ("P", "PA"):
        image.putpalette(PALETTE)
    image.putpixel((0, 0), corner)
    return image


def assert_known_pixels(rgb: np.ndarray, mode: str, extra_tolerance: int = 0) -> None:
    _, fill_rgb, _, corner_rgb, tolerance = KNOWN_PIXELS[mode]
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    expected = np.broadcast_to(np.array(fill_rgb, np.int16), (2, 3, 3)).copy()
    expected[0, 0] = corner_rgb
    assert np.abs(rgb.astype(np.int16) - expected).max() <= tolerance + extra_tolerance, (mode, rgb)


def test_every_pil_mode_has_known_pixels():
    assert set(KNOWN_PIXELS) == set(Image.MODES)


@pytest.mark.parametrize("mode", sorted(KNOWN_PIXELS))
def test_every_mode_as_a_pil_image(mode):
    assert_known_pixels(read_image(known_image(mode)), mode)


def test_every_mode_png_tiff_and_jpeg_write(tmp_path):
    """Each (format, mode) PIL can save, written to a file and read back from the path."""
    written = set()
    for mode in sorted(KNOWN_PIXELS):
        for fmt, options in (("PNG", {}), ("TIFF", {}), ("JPEG", {"quality": 100, "subsampling": 0})):
            path = tmp_path / f"{mode.replace(';', '_')}.{fmt.lower()}"
            try:
                known_image(mode).save(path, fmt, **options)
                with Image.open(path) as written_back:
                    written_back.load()
            except (OSError, ValueError, KeyError):
                continue  # PIL cannot write this mode in this format (Pillow 12.3 writes truncated YCbCr TIFFs)
            written.add((fmt, mode))
            assert_known_pixels(read_image(path), mode, extra_tolerance=2 if fmt == "JPEG" else 0)
    expected_at_least = {("PNG", m) for m in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B")}
    expected_at_least |= {("TIFF", m) for m in ("CMYK", "F", "I", "I;16B", "LAB", "PA")}
    expected_at_least |= {("JPEG", m) for m in ("L", "RGB", "CMYK")}
    assert expected_at_least <= written


def test_palette_transparency_is_composited_on_black(tmp_path):
    image = known_image("P")
    image.info["transparency"] = 2
    image.save(tmp_path / "p.png")
    rgb = read_image(tmp_path / "p.png")
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[1, 2].tolist() == [200, 100, 50]


def test_exif_orientation_6_is_read_as_displayed():
    """Orientation 6: the camera was turned, the viewer rotates the stored image 90° clockwise."""
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:8, :8] = (255, 0, 0)  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", quality=100, subsampling=0, exif=exif)
    buffer.seek(0)
    rgb = read_image(buffer)
    assert rgb.shape == (32, 16, 3)
    assert np.abs(rgb.astype(int) - np.rot90(stored, k=-1)).max() <= 8
    assert rgb[:8, -8:, 0].min() > 240  # the red block is now at the top right


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"junk") + chunk(b"IEND", b"")


def test_a_header_claiming_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 30000))
    with pytest.raises(ValueError) as error:
        read_image(path)
    message = str(error.value)
    assert str(path) in message and "900000000 pixels" in message and "\n" not in message
    # Our own limit, whatever PIL's global is: also checked from the header, before the junk IDAT.
    monkeypatch.setattr(image_module, "MAX_PIXELS", 100)
    path.write_bytes(_png_header_only(20, 10))
    with pytest.raises(ValueError, match=r"bomb.png: 20x10 pixels .* more than"):
        read_image(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"name,value\n1,2\n", b"\x89PNG\r\n\x1a\n", "truncated"],
    ids=["empty", "text", "png-signature-only", "truncated"],
)
def test_unreadable_files_are_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "photo.png"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
        content = path.read_bytes()[:-200]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"^cannot read image .*photo\.png: [^\n]+$"):
        read_image(path)


def test_arrays_are_scaled_by_their_dtype_range():
    grey = np.array([[0, 65535], [32768, 257]], np.uint16)
    assert read_image(grey)[..., 0].tolist() == [[0, 255], [128, 1]]
    assert read_image(grey).shape == (2, 2, 3)
    assert read_image(np.array([[0.0, 1.0]], np.float32))[0, :, 1].tolist() == [0, 255]
    rgba = np.array([[[200, 100, 50, 128]]], np.uint8)
    assert read_image(rgba)[0, 0].tolist() == [100, 50, 25]
    rgb = np.zeros((2, 2, 3), np.uint8)
    assert read_image(rgb) is rgb


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.zeros((0, 0, 3), np.uint8), "no pixels"),
        (np.zeros((4, 4, 2), np.uint8), r"expected an \(H, W\), \(H, W, 1\|3\|4\) image"),
        (np.full((2, 2), 2.0, np.float32), r"float image values must lie in 0\.\.1"),
        (np.zeros((2, 2), np.int64), "got dtype int64"),
    ],
)
def test_bad_arrays_are_one_line_errors(array, expected):
    with pytest.raises(ValueError, match=expected):
        read_image(array)


def test_32_bit_values_beyond_16_bits_are_refused_not_clipped():
    with pytest.raises(ValueError, match=r"values span 0\.\.70000; expected 16-bit"):
        read_image(Image.fromarray(np.array([[0, 70000]], np.int32)))


def test_data_sets_read_through_the_one_reader():
    from workbench.data import datasets

    assert datasets.read_image is read_image


# ------------------------------------------------------------------ open_image: limits and notes


def _file(tmp_path, name: str, image: Image.Image, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_open_image_says_what_it_converted(tmp_path):
    rgba = Image.fromarray(np.full((6, 8, 4), 200, np.uint8))
    grey16 = Image.fromarray(np.full((6, 8), 65535, np.uint16))
    frames = [Image.fromarray(np.full((6, 8, 3), value, np.uint8)) for value in (10, 200, 90)]
    gif = tmp_path / "animated.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    cases = {
        _file(tmp_path, "plain.png", Image.fromarray(np.zeros((6, 8, 3), np.uint8))): (),
        _file(tmp_path, "rgba.png", rgba): ("RGBA: transparency composited on black",),
        _file(tmp_path, "grey16.png", grey16): ("16-bit (I;16) scaled to 8 bits",),
        _file(tmp_path, "cmyk.jpg", rgba.convert("RGB").convert("CMYK")): ("CMYK converted to RGB",),
        gif: ("first frame of 3", "palette (P) colours looked up"),
    }
    for path, notes in cases.items():
        decoded = image_module.open_image(path)
        assert decoded.notes == notes, path.name
        assert decoded.pixels.shape == (6, 8, 3) and decoded.size == (6, 8)
    assert image_module.open_image(gif).pixels[0, 0].tolist() == [10, 10, 10]  # the first frame's pixels
    assert (image_module.open_image(tmp_path / "grey16.png").pixels == 255).all()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_open_image_downscales_over_the_pixel_budget(tmp_path, fmt):
    """A 1200x900 image with a 0.1 MP budget: aspect kept, under the budget, a note; a JPEG decoded at a
    reduced scale first gives the same picture (to JPEG noise) as decoding in full then resizing."""
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (9, 12, 3), np.uint8), np.ones((100, 100, 1), np.uint8))
    path = _file(tmp_path, f"big.{fmt.lower()}", Image.fromarray(smooth), format=fmt, quality=95)
    decoded = image_module.open_image(path, pixel_budget=100_000)
    height, width = decoded.pixels.shape[:2]
    assert height * width <= 100_000 and (height, width) == (273, 365)
    assert decoded.size == (900, 1200)
    assert decoded.notes == ("downscaled from 1200x900 to 365x273 (pixel budget 0.1 MP)",)
    full = image_module.fit_pixel_budget(read_image(path), 100_000)
    assert np.abs(decoded.pixels.astype(int) - full.astype(int)).mean() < 3
    assert image_module.open_image(path, pixel_budget=2_000_000).pixels.shape == (900, 1200, 3)


def test_open_image_refuses_over_max_pixels_and_under_min_side(tmp_path):
    path = _file(tmp_path, "wide.png", Image.new("RGB", (400, 3)))
    with pytest.raises(ValueError, match=r"wide.png: 400x3 pixels \(0 MP\) is more than"):
        image_module.open_image(path, max_pixels=1000)
    with pytest.raises(ValueError, match=r"wide.png: the image is 400x3 pixels; expected at least 8x8"):
        image_module.open_image(path, min_side=8)
    assert image_module.open_image(path, min_side=3).size == (3, 400)


def test_an_empty_file_and_text_say_what_was_expected(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ValueError, match=r"empty.png: the file is empty \(0 bytes\); expected an image file"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(
        ValueError, match=r"notes.png: not a format PIL decodes; expected an image file \(PNG"
    ):
        read_image(tmp_path / "notes.png")
