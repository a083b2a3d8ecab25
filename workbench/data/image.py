"""The one image reader: every entry point (data sets, ``workbench predict``, the Predictor, the app)
turns its input into (H, W, 3) uint8 RGB here, so a photo is read the same way everywhere.

Decisions, each tested in ``tests/test_image.py``:

- A photo is read as displayed: the EXIF orientation tag is applied (``ImageOps.exif_transpose``).
- High bit depths are scaled by their mode's range, never clipped: 16-bit (``I;16``, ``I;16B``,
  ``I;16L``, ``I;16N``) maps 0..65535 to 0..255 (65535 -> 255, 32768 -> 128). PIL's 32-bit ``I``
  mode is how it decodes some 16-bit files, so it is read as 16-bit and refused when its values
  leave 0..65535; float ``F`` images are read as 0..1 and refused outside it (there is no range to
  guess a scale from).
- Transparency (``RGBA``, ``LA``, ``PA``, palette transparency) is composited on **black**: a colour
  is multiplied by its alpha, which is also what premultiplied ``RGBa`` / ``La`` already store.
- Colour spaces (``CMYK``, ``YCbCr``, ``LAB``, ``HSV``) convert through PIL's own conversions;
  grey (``1``, ``L``) is repeated over the three channels. Embedded ICC profiles are not applied.
- Pixel counts are checked from the header before decoding: more than ``MAX_PIXELS`` (or the
  caller's ``max_pixels``) is refused, so a file claiming 30000x30000 costs nothing. Unreadable,
  truncated and empty images raise a one-line ``ValueError`` naming the file.
- A multi-frame file (animated GIF, multi-page TIFF) is read as its first frame.
- ``open_image`` (what the app calls) also says what it converted, in ``DecodedImage.notes``, refuses
  images with a side under ``min_side``, and downscales an image over a ``pixel_budget`` (aspect kept,
  antialiased; a JPEG is decoded at a reduced scale first, so a 12 MP photo costs a fraction of a full
  decode). ``read_image`` is ``open_image`` with no budget: the pixels alone.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

# PIL's own decompression-bomb error threshold (twice its warning threshold), stated here so the
# limit does not depend on a global a user may have changed.
MAX_PIXELS = 178_956_970

ImageSource = str | os.PathLike | IO[bytes] | Image.Image | np.ndarray

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_WITH_ALPHA = ("RGBA", "LA", "PA")
_PREMULTIPLIED = ("RGBa", "La")  # colours already multiplied by alpha: their composite on black


@dataclass(frozen=True)
class DecodedImage:
    """An image as ``open_image`` read it: ``pixels`` (H, W, 3) uint8, the ``size`` (H, W) it had
    before any downscaling (after EXIF rotation), and ``notes`` on what was converted ("16-bit (I;16)
    scaled to 8 bits", "first frame of 3", "downscaled from ..."), empty for a plain RGB image."""

    pixels: np.ndarray
    size: tuple[int, int]
    notes: tuple[str, ...] = ()


def read_image(source: ImageSource) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a path, a binary file object, a PIL image or an array.

    Arrays may be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (RGBA), of dtype uint8, uint16
    (0..65535), bool, or float (0..1); a uint8 RGB array is returned as is, without a copy.
    Raises a one-line ``ValueError`` naming the source when it cannot be read.
    """
    return open_image(source).pixels


def open_image(
    source: ImageSource,
    *,
    max_pixels: int | None = None,
    pixel_budget: int | None = None,
    min_side: int = 1,
) -> DecodedImage:
    """``read_image`` with limits, for front ends that take images from anyone.

    Args:
        source: as ``read_image``.
        max_pixels: refuse images with more pixels (checked from the header, before decoding);
            default and ceiling ``MAX_PIXELS``.
        pixel_budget: downscale images with more pixels to at most this many (aspect kept); a note
            says so. None: never downscale.
        min_side: refuse images narrower or lower than this.
    """
    limit = MAX_PIXELS if max_pixels is None else min(int(max_pixels), MAX_PIXELS)
    if pixel_budget is not None and pixel_budget < 1:
        raise ValueError(f"pixel_budget must be a positive pixel count, got {pixel_budget}")
    if isinstance(source, np.ndarray):
        decoded = _decoded(_from_array(source, "array"), _array_note(source), "array", limit)
    elif isinstance(source, Image.Image):
        decoded = _open_pil(source, _name_of(source), limit, pixel_budget)
    else:
        name = _name_of(source)
        with _decoding(name), warnings.catch_warnings():
            # Sizes between PIL's warning and error thresholds are allowed: MAX_PIXELS is the limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(source)  # reads the header only
        with opened:
            decoded = _open_pil(opened, name, limit, pixel_budget)
    height, width = decoded.size
    if min(height, width) < min_side:
        raise ValueError(
            f"{_name_of(source)}: the image is {width}x{height} pixels; expected at least "
            f"{min_side}x{min_side}"
        )
    if pixel_budget is None or height * width <= pixel_budget:
        return decoded
    pixels = fit_pixel_budget(decoded.pixels, pixel_budget)
    note = (
        f"downscaled from {width}x{height} to {pixels.shape[1]}x{pixels.shape[0]} "
        f"(pixel budget {pixel_budget / 1e6:g} MP)"
    )
    return DecodedImage(pixels, decoded.size, (*decoded.notes, note))


def fit_pixel_budget(pixels: np.ndarray, pixel_budget: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the image downscaled (antialiased, aspect kept) to at most ``pixel_budget``
    pixels; an image within the budget is returned as is."""
    height, width = pixels.shape[:2]
    if height * width <= pixel_budget:
        return pixels
    scale = math.sqrt(pixel_budget / (height * width))
    size = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def _decoded(pixels: np.ndarray, notes: list[str], name: str, limit: int) -> DecodedImage:
    height, width = pixels.shape[:2]
    _check_pixels(width, height, name, limit)
    return DecodedImage(pixels, (height, width), tuple(notes))


def _check_pixels(width: int, height: int, name: str, limit: int) -> None:
    if width * height > limit:
        raise ValueError(
            f"{name}: {width}x{height} pixels ({width * height / 1e6:.0f} MP) is more than the "
            f"{limit / 1e6:.0f} MP that read_image accepts"
        )


def _array_note(array: np.ndarray) -> list[str]:
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        return []
    return [f"{array.dtype} array of shape {array.shape} converted to 8-bit RGB"]


@contextmanager
def _decoding(name: str) -> Iterator[None]:
    """Decoder errors (not an image, truncated, corrupt) -> one line naming the file."""
    try:
        yield
    except Image.DecompressionBombError as error:
        raise ValueError(f"{name}: {_first_line(error)}") from error
    except Image.UnidentifiedImageError as error:
        raise ValueError(f"cannot read image {name}: {_unidentified(name)}") from error
    except (OSError, SyntaxError, EOFError, ValueError, struct.error) as error:
        raise ValueError(f"cannot read image {name}: {_first_line(error)}") from error


def _unidentified(name: str) -> str:
    empty = os.path.isfile(name) and os.path.getsize(name) == 0
    what = "the file is empty (0 bytes)" if empty else "not a format PIL decodes"
    return f"{what}; expected an image file (PNG, JPEG, GIF, BMP, TIFF, WebP...)"


def _name_of(source: Any) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return str(getattr(source, "filename", "") or getattr(source, "name", "") or type(source).__name__)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _open_pil(image: Image.Image, name: str, limit: int, pixel_budget: int | None) -> DecodedImage:
    """A PIL image (header read, pixels maybe not yet) -> its pixels and what was converted."""
    width, height = image.size
    _check_pixels(width, height, name, limit)
    notes = []
    if pixel_budget is not None and image.format == "JPEG" and width * height > pixel_budget:
        # The JPEG decoder scales by 1/2, 1/4 or 1/8 for free; the exact size is reached afterwards.
        scale = math.sqrt(pixel_budget / (width * height))
        image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
    note = _mode_note(image)
    if note:
        notes.append(note)
    pixels = _from_pil(image, name)
    # After decoding: reading a TIFF's tags or counting frames moves through the file.
    with _decoding(name):
        orientation = image.getexif().get(0x0112, 1)
    if orientation != 1:
        notes.insert(0, f"EXIF orientation {orientation} applied")
    frames = _frame_count(image)
    if frames > 1:
        notes.insert(0, f"first frame of {frames}")
    if image.size != (width, height):  # decoded at a reduced scale: the size before downscaling
        height, width = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
        return DecodedImage(pixels, (height, width), tuple(notes))
    return DecodedImage(pixels, pixels.shape[:2], tuple(notes))


def _frame_count(image: Image.Image) -> int:
    """Frames in an animated GIF / multi-page file; 1 when later frames cannot even be counted."""
    try:
        return int(getattr(image, "n_frames", 1))
    except (OSError, SyntaxError, EOFError, ValueError, struct.error):
        return 1


def _mode_note(image: Image.Image) -> str | None:
    """What reading ``image``'s mode does to it, in a few words; None for plain RGB."""
    mode = image.mode
    if mode == "RGB":
        return None
    if mode in _SIXTEEN_BIT or mode == "I":
        return f"16-bit ({mode}) scaled to 8 bits"
    if mode in _WITH_ALPHA or mode in _PREMULTIPLIED or (mode == "P" and "transparency" in image.info):
        return f"{mode}: transparency composited on black"
    return {
        "1": "1-bit image read as black and white",
        "L": "greyscale (L) repeated over R, G, B",
        "P": "palette (P) colours looked up",
        "F": "float (F) image read as 0..1",
    }.get(mode, f"{mode} converted to RGB")


def _from_pil(image: Image.Image, name: str) -> np.ndarray:
    with _decoding(name):
        image = ImageOps.exif_transpose(image)  # decodes the pixels
    if image.mode in _SIXTEEN_BIT:
        return _from_array(np.asarray(image).astype(np.uint16), name)
    if image.mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"{name}: 32-bit image values span {values.min()}..{values.max()}; "
                "expected 16-bit data (0..65535)"
            )
        return _from_array(values.astype(np.uint16), name)
    if image.mode == "F":
        return _from_array(np.asarray(image), name)
    if image.mode in _PREMULTIPLIED:
        channels = np.asarray(image)[..., :-1]
        return _from_array(channels, name)
    if image.mode in _WITH_ALPHA or (image.mode == "P" and "transparency" in image.info):
        return _from_array(np.asarray(image.convert("RGBA")), name)
    return _from_array(np.asarray(image.convert("RGB")), name)


def _from_array(array: np.ndarray, name: str) -> np.ndarray:
    """Any accepted array layout and dtype -> (H, W, 3) uint8."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected an (H, W), (H, W, 1|3|4) image, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: the image has no pixels ({array.shape[1]}x{array.shape[0]})")
    array = _to_uint8(array, name)
    if array.shape[2] == 4:  # composite on black: colour times alpha
        alpha = array[..., 3:].astype(np.uint32)
        array = ((array[..., :3] * alpha + 127) // 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Scale by the dtype's range: uint16 0..65535, float 0..1, bool 0..1 -> uint8 0..255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:
        return np.round(array * (255 / 65535)).astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.all((array >= 0) & (array <= 1)):  # NaN fails too
            raise ValueError(
                f"{name}: float image values must lie in 0..1 (got {array.min()}..{array.max()})"
            )
        return np.round(array * 255).astype(np.uint8)
    raise ValueError(f"{name}: expected a uint8, uint16, bool or float (0..1) image, got dtype {array.dtype}")


def label_png_array(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """A label map (H, W) as the array a label PNG stores: 8-bit up to 256 classes, 16-bit above
    (PIL writes uint16 as a 16-bit grey PNG), so no class index wraps."""
    if num_classes > 65536:
        raise ValueError(f"a label PNG holds at most 65536 classes, got {num_classes}")
    return labels.astype(np.uint8 if num_classes <= 256 else np.uint16)
