"""Decode any input image once, normalise it to 8-bit RGB, or say exactly why not.

Used by ingest (Beam workers) so every file is judged by the same code. What ingest stores is
what serving will see: training and the SavedModel both decode the stored bytes with
`components/data.py:decode_and_resize` (TensorFlow's decode_image, channels=3), which is also
what the served model runs on a client's original file. So ingest

- passes a JPEG or PNG through byte for byte unless it must be downscaled: the trained pixels
  are then the served ones by construction (grayscale, CMYK, progressive, 16-bit, alpha);
- converts what it must re-encode (GIF's first frame, BMP, downscaled images) as TensorFlow's
  decoder does: alpha dropped (not composited), 16-bit truncated to its high byte, EXIF
  orientation not applied (as TF Serving's decoders do);
- quarantines what TensorFlow decodes differently or not at all (1-bit and palette BMPs: TF
  reads 1-bit ones as 0 channels and palette indices as gray levels), and images over
  data.max_pixels, judged from the header before any pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "BadImage",
    "NormalisedImage",
    "normalise",
    "sha256",
    "to_rgb",
]

SUPPORTED_FORMATS = {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "BMP": "bmp"}


class BadImage(ValueError):
    """The file is not a usable image; the message is the quarantine reason."""


@dataclass
class NormalisedImage:
    """An image as ingest writes it: re-encoded RGB bytes, its size, and how it came."""

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
    """Difference hash: survives re-encoding, resizing and small edits.

    Not imagehash.dhash: it resizes with LANCZOS, so its bits differ (0 of 226 demo images
    alike) and hashes in manifests written before would no longer compare."""
    small = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def colour_grid(img: Image.Image) -> str:
    """Mean colour of 4x4 blocks. dHash alone calls different periodic textures identical;
    their block colours differ (benchmarks/README.md, near-duplicates)."""
    return np.asarray(img.resize((4, 4), Image.Resampling.BOX), dtype=np.uint8).tobytes().hex()


def sha256(data: bytes) -> str:
    """The hex sha256 of an image's bytes: the id the manifest and validation files use.

    Args:
        data: the file's bytes.

    Returns:
        64 hex digits.
    """
    return hashlib.sha256(data).hexdigest()


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as TensorFlow's decode_image(channels=3) gives it (serving's decoder).

    Args:
        img: a Pillow image in any mode (palette, 16-bit, CMYK, with alpha...).

    Returns:
        The image in mode RGB.
    """
    mode = img.mode
    if mode.startswith("I;16"):  # libpng's strip_16 in TF: the high byte
        arr = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")  # alpha dropped as TF does; L, 1, P, CMYK, YCbCr, LAB, HSV


PASS_THROUGH = ("JPEG", "PNG")  # stored as given unless downscaled: TF decodes every mode


def _refuse_before_decoding(img: Image.Image, fmt: str, max_pixels: int) -> None:
    """Quarantine reasons that the header alone gives: no pixel decoded yet."""
    if fmt not in SUPPORTED_FORMATS:
        raise BadImage(f"unsupported image format {fmt} (supported: JPEG, PNG, GIF, BMP)")
    width, height = img.size
    if width * height > max_pixels:
        raise BadImage(
            f"{width}x{height} = {width * height / 1e6:.1f} Mpx is over data.max_pixels "
            f"({max_pixels / 1e6:.1f} Mpx); not decoded"
        )
    if fmt == "BMP" and img.mode in ("1", "P"):
        what = "1-bit" if img.mode == "1" else "palette"
        raise BadImage(
            f"{what} BMP: TensorFlow's decoder, which the served model uses, cannot decode it "
            "as Pillow does (it reads 1-bit BMPs as 0 channels and palette indices as gray "
            "levels); convert it to PNG to use it"
        )


def normalise(data: bytes, max_side: int, max_pixels: int = 50_000_000) -> NormalisedImage:
    """Decode fully (catching truncation), convert to RGB, downscale past max_side.

    Args:
        data: the file's bytes, any format Pillow reads.
        max_side: the longest side kept; larger images are downscaled to it.
        max_pixels: images with more pixels are refused (a decompression bomb).

    Returns:
        The re-encoded image with its size, source format and near-duplicate hashes.

    Raises:
        BadImage: the bytes are empty, not an image, truncated or too large.
    """
    if not data:
        raise BadImage("zero-byte file")
    fmt = "image"
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format or "?"
        _refuse_before_decoding(img, fmt, max_pixels)
        img.load()
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (no known image header)") from None
    except Image.DecompressionBombError as e:  # Image.open's own check, past 2x its limit
        raise BadImage(
            f"over data.max_pixels ({max_pixels / 1e6:.1f} Mpx) and Pillow's decompression-bomb "
            f"limit: {e}; not decoded"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"corrupt or truncated {fmt} data: {e}") from None
    source_mode = img.mode
    try:
        rgb = to_rgb(img)
    except Exception as e:  # noqa: BLE001 - any conversion failure is a quarantine reason
        raise BadImage(f"cannot convert mode {source_mode} to RGB: {e}") from None
    resized = False
    if max(rgb.size) > max_side:
        # in place: the decoded image is ours alone (a defensive copy cost ingest CPU)
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        resized = True
    if fmt in PASS_THROUGH and not resized:
        encoded, out_fmt = data, fmt.lower()  # the original bytes: decoded as serving will
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
