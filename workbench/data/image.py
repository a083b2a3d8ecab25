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
- Pixel counts are checked from the header before decoding: more than ``MAX_PIXELS`` is refused,
  so a file claiming 30000x30000 costs nothing. Unreadable, truncated and empty images raise a
  one-line ``ValueError`` naming the file.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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


def read_image(source: ImageSource) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a path, a binary file object, a PIL image or an array.

    Arrays may be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (RGBA), of dtype uint8, uint16
    (0..65535), bool, or float (0..1); a uint8 RGB array is returned as is, without a copy.
    Raises a one-line ``ValueError`` naming the source when it cannot be read.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, "array")
    if isinstance(source, Image.Image):
        return _from_pil(source, _name_of(source))
    name = _name_of(source)
    with _decoding(name), warnings.catch_warnings():
        # Sizes between PIL's warning and error thresholds are allowed: MAX_PIXELS is the limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        opened = Image.open(source)  # reads the header only
    with opened:
        return _from_pil(opened, name)


@contextmanager
def _decoding(name: str) -> Iterator[None]:
    """Decoder errors (not an image, truncated, corrupt) -> one line naming the file."""
    try:
        yield
    except Image.DecompressionBombError as error:
        raise ValueError(f"{name}: {_first_line(error)}") from error
    except (OSError, SyntaxError, EOFError, ValueError, struct.error) as error:
        raise ValueError(f"cannot read image {name}: {_first_line(error)}") from error


def _name_of(source: Any) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return str(getattr(source, "filename", "") or getattr(source, "name", "") or type(source).__name__)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _from_pil(image: Image.Image, name: str) -> np.ndarray:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ValueError(
            f"{name}: {width}x{height} pixels ({width * height / 1e6:.0f} MP) is more than the "
            f"{MAX_PIXELS / 1e6:.0f} MP that read_image accepts"
        )
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
