"""Decode any input image once, normalise it to 8-bit RGB, or say exactly why not.

Used by ingest (Beam workers) so every file is judged by the same code.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

SUPPORTED_FORMATS = {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "BMP": "bmp"}


class BadImage(ValueError):
    """The file is not a usable image; the message is the quarantine reason."""


@dataclass
class NormalisedImage:
    encoded: bytes
    format: str  # jpeg | png
    height: int
    width: int
    source_format: str
    source_mode: str
    resized: bool
    dhash: str  # 64-bit difference hash (hex): near-identical images differ in a few bits
    grid: str  # 4x4 RGB block means (hex, 48 bytes): tells apart look-alike textures


def dhash(img: Image.Image) -> str:
    """Difference hash: survives re-encoding, resizing and small edits."""
    small = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def colour_grid(img: Image.Image) -> str:
    """Mean colour of 4x4 blocks. dHash alone calls different periodic textures identical;
    their block colours differ (benchmarks/README.md, near-duplicates)."""
    return np.asarray(img.resize((4, 4), Image.Resampling.BOX), dtype=np.uint8).tobytes().hex()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def normalise(data: bytes, max_side: int) -> NormalisedImage:
    """Decode fully (catching truncation), convert to RGB, downscale past max_side."""
    if not data:
        raise BadImage("zero-byte file")
    fmt = "image"
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format or "?"
        if fmt not in SUPPORTED_FORMATS:
            raise BadImage(f"unsupported image format {fmt} (supported: JPEG, PNG, GIF, BMP)")
        img.load()
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (no known image header)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large to decode safely: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"corrupt or truncated {fmt} data: {e}") from None
    source_mode = img.mode
    try:
        rgb = _to_rgb(img)
    except Exception as e:  # noqa: BLE001 - any conversion failure is a quarantine reason
        raise BadImage(f"cannot convert mode {source_mode} to RGB: {e}") from None
    resized = False
    if max(rgb.size) > max_side:
        # in place: the decoded image is ours alone (a defensive copy cost ingest CPU)
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        resized = True
    if fmt == "JPEG" and source_mode == "RGB" and not resized:
        encoded, out_fmt = data, "jpeg"  # pass the original bytes through untouched
    else:
        buf = io.BytesIO()
        if fmt == "JPEG":
            rgb.save(buf, format="JPEG", quality=95)
            out_fmt = "jpeg"
        else:
            rgb.save(buf, format="PNG")
            out_fmt = "png"
        encoded = buf.getvalue()
    return NormalisedImage(
        encoded=encoded,
        format=out_fmt,
        height=rgb.size[1],
        width=rgb.size[0],
        source_format=fmt.lower(),
        source_mode=source_mode,
        resized=resized,
        dhash=dhash(rgb),
        grid=colour_grid(rgb),
    )
