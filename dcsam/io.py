"""Reading images and masks the way users hand them to us, and writing results atomically.

Images come back as ``uint8`` RGB arrays ``(H, W, 3)``; masks as ``bool`` arrays ``(H, W)``.
Mask convention (shared by the CLI, the evaluation and the backend):
palette or greyscale masks: value > 0 is foreground; RGB(A) masks: channel 0 > 127.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

ImageSource = str | os.PathLike | bytes | BinaryIO | np.ndarray | Image.Image

# Refuse decompression bombs but allow large scans (e.g. 20k x 20k slides are 400 MP).
Image.MAX_IMAGE_PIXELS = 400_000_000


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def _open(source: str | os.PathLike | bytes | BinaryIO | Image.Image) -> Image.Image:  # arrays need no decoding
    if isinstance(source, Image.Image):
        return source
    try:
        if isinstance(source, (bytes, bytearray)):
            img = Image.open(io.BytesIO(source))
        elif isinstance(source, (str, os.PathLike)):
            if not Path(source).is_file():
                raise InputError(f"{source}: no such file")
            img = Image.open(source)
        else:
            img = Image.open(source)
        img.load()
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{_describe(source)}: not a readable image ({exc})") from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - needs a huge file
        raise InputError(f"{_describe(source)}: image too large ({exc})") from exc
    return img


def _high_bit_depth_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 10/12/14/16-bit data to 8 bits by its nominal bit depth (stable across images)."""
    arr = arr.astype(np.float64)
    top = float(arr.max()) if arr.size else 0.0
    for bits in (8, 10, 12, 14, 16, 32):
        if top <= 2**bits - 1:
            break
    return np.clip(arr / (2**bits - 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def read_image(source: ImageSource) -> np.ndarray:
    """Decode an image to ``uint8`` RGB ``(H, W, 3)``.

    Accepts paths, bytes, file objects, PIL images and arrays; handles greyscale, palette,
    RGBA (alpha dropped), 16-bit data and EXIF orientation (as browsers display it).
    """
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise InputError(f"image array has shape {source.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
        if arr.dtype != np.uint8:
            arr = (
                _high_bit_depth_to_uint8(arr)
                if np.issubdtype(arr.dtype, np.integer)
                else (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
            )
        arr = arr[..., :3]
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr)
    img = _open(source)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img)
        arr = _high_bit_depth_to_uint8(arr) if img.mode != "F" else (np.clip(arr, 0, 1) * 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
    return np.asarray(img.convert("RGB")).copy()


def read_mask(source: ImageSource) -> np.ndarray:
    """Decode a mask to ``bool (H, W)``: palette/greyscale value > 0, RGB(A) channel 0 > 127."""
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 3:
            arr = arr[..., 0] > (127 if arr.dtype == np.uint8 else 0.5)
        if arr.ndim != 2:
            raise InputError(f"mask array has shape {source.shape}; expected (H, W)")
        return arr.astype(bool)
    img = _open(source)
    if img.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"))[..., 0] > 127
    if img.mode in ("LA", "PA"):
        return np.asarray(img)[..., 0] > 0
    return np.asarray(img) > 0  # P, L, 1, I, I;16, F: raw value > 0


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Save a boolean mask as an 8-bit PNG with values {0, 255}, atomically."""
    atomic_write_bytes(path, encode_png(mask.astype(np.uint8) * 255))
