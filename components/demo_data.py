"""Procedurally drawn image classes: the small data the project makes for demos and tests.

Each class is a shape family; colour, scale, rotation, position, background, clutter and
noise vary per image, so no single pixel statistic separates the classes and a model has
to learn shape. The *source* task uses other shape families, disjoint from the target
task, so a base pretrained on it transfers without having seen the target classes.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "generate",
]

Draw = Callable[[ImageDraw.ImageDraw, random.Random, float, float, float, float, tuple], None]


def _poly(cx, cy, r, rot, n, inner=None):
    pts = []
    for i in range(n * (2 if inner else 1)):
        rr = (inner if inner and i % 2 else 1.0) * r
        a = rot + i * math.pi / (n if inner else n / 2)
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _circle(d, rng, cx, cy, r, rot, col):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)


def _square(d, rng, cx, cy, r, rot, col):
    d.polygon(_poly(cx, cy, r, rot, 4), fill=col)


def _triangle(d, rng, cx, cy, r, rot, col):
    d.polygon(_poly(cx, cy, r, rot, 3), fill=col)


def _cross(d, rng, cx, cy, r, rot, col):
    w = max(2, int(r / 3))
    for a in (rot, rot + math.pi / 2):
        dx, dy = r * math.cos(a), r * math.sin(a)
        d.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=col, width=w)


def _ring(d, rng, cx, cy, r, rot, col):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=col, width=max(2, int(r / 4)))


def _star(d, rng, cx, cy, r, rot, col):
    d.polygon(_poly(cx, cy, r, rot, 5, inner=0.45), fill=col)


def _stripes(d, rng, cx, cy, r, rot, col):
    w = max(1, int(r / 5))
    for k in range(-2, 3):
        ox, oy = k * 2 * w * math.cos(rot + math.pi / 2), k * 2 * w * math.sin(rot + math.pi / 2)
        dx, dy = r * math.cos(rot), r * math.sin(rot)
        d.line([cx + ox - dx, cy + oy - dy, cx + ox + dx, cy + oy + dy], fill=col, width=w)


def _hexagon(d, rng, cx, cy, r, rot, col):
    d.polygon(_poly(cx, cy, r, rot, 6), fill=col)


def _dots(d, rng, cx, cy, r, rot, col):
    s = max(1.5, r / 5)
    for i in range(3):
        for j in range(3):
            x = cx + (i - 1) * r * 0.7
            y = cy + (j - 1) * r * 0.7
            d.ellipse([x - s, y - s, x + s, y + s], fill=col)


def _chevron(d, rng, cx, cy, r, rot, col):
    w = max(2, int(r / 4))
    a1, a2 = rot + 2.4, rot - 2.4
    tip = (cx + r * math.cos(rot), cy + r * math.sin(rot))
    d.line([(cx + r * math.cos(a1), cy + r * math.sin(a1)), tip], fill=col, width=w)
    d.line([tip, (cx + r * math.cos(a2), cy + r * math.sin(a2))], fill=col, width=w)


def _crescent(d, rng, cx, cy, r, rot, col, bg=None):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    ox, oy = 0.45 * r * math.cos(rot), 0.45 * r * math.sin(rot)
    d.ellipse([cx + ox - r * 0.8, cy + oy - r * 0.8, cx + ox + r * 0.8, cy + oy + r * 0.8], fill=bg)


def _arrow(d, rng, cx, cy, r, rot, col):
    w = max(2, int(r / 5))
    dx, dy = r * math.cos(rot), r * math.sin(rot)
    d.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=col, width=w)
    d.polygon(_poly(cx + dx * 0.8, cy + dy * 0.8, r * 0.45, rot, 3), fill=col)


TARGET_CLASSES: dict[str, Draw] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "star": _star,
}
SOURCE_CLASSES: dict[str, Draw] = {
    "stripes": _stripes,
    "hexagon": _hexagon,
    "dots": _dots,
    "chevron": _chevron,
    "crescent": _crescent,
    "arrow": _arrow,
}


def _color(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(0, 255) for _ in range(3))  # type: ignore[return-value]


def _far_color(rng: random.Random, other: tuple) -> tuple[int, int, int]:
    for _ in range(20):
        c = _color(rng)
        if sum(abs(a - b) for a, b in zip(c, other, strict=True)) > 180:
            return c
    return tuple(255 - v for v in other)  # type: ignore[return-value]


def draw_image(draw_fn: Draw, size: int, rng: random.Random) -> Image.Image:
    """One image: gradient background, clutter, the class shape, blur/noise."""
    bg1, bg2 = _color(rng), _color(rng)
    img = Image.new("RGB", (size, size), bg1)
    d = ImageDraw.Draw(img)
    for y in range(size):  # vertical gradient
        t = y / max(1, size - 1)
        d.line(
            [(0, y), (size, y)],
            fill=tuple(int(a + (b - a) * t) for a, b in zip(bg1, bg2, strict=True)),
        )
    for _ in range(rng.randint(2, 6)):  # clutter: thin random strokes and specks
        c = _color(rng)
        x0, y0 = rng.uniform(0, size), rng.uniform(0, size)
        if rng.random() < 0.5:
            d.line(
                [
                    x0,
                    y0,
                    x0 + rng.uniform(-size / 3, size / 3),
                    y0 + rng.uniform(-size / 3, size / 3),
                ],
                fill=c,
                width=1,
            )
        else:
            s = rng.uniform(1, size / 16)
            d.rectangle([x0, y0, x0 + s, y0 + s], fill=c)
    col = _far_color(rng, bg1)
    r = rng.uniform(0.2, 0.38) * size
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    rot = rng.uniform(0, 2 * math.pi)
    if draw_fn is _crescent:
        _crescent(d, rng, cx, cy, r, rot, col, bg=bg1)
    else:
        draw_fn(d, rng, cx, cy, r, rot, col)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    sigma = rng.uniform(5, 25)  # seeded noise: PIL's effect_noise uses a global C generator
    grain = np.random.default_rng(rng.getrandbits(32)).normal(128, sigma, (size, size))
    noise = Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8), "L").convert("RGB")
    return Image.blend(img, noise, rng.uniform(0.03, 0.12))


def generate(
    out: str | Path,
    classes: int = 5,
    per_class: int = 200,
    size: int = 64,
    seed: int = 0,
    task: str = "target",
    quality: int = 90,
) -> dict[str, int]:
    """Write `out/<class>/<class>_NNNN.jpg`; same arguments give byte-identical files.

    Args:
        out: the folder to write into (created).
        classes: how many classes, from the task's table.
        per_class: images per class.
        size: the side of each square image, in pixels.
        seed: which images: another seed, other images.
        task: "target" (the demo's classes) or "source" (the disjoint ones the demo base
            is pretrained on).
        quality: JPEG quality.

    Returns:
        Images written per class name.

    Raises:
        ValueError: classes is outside 2..the size of the task's table.
    """
    table = TARGET_CLASSES if task == "target" else SOURCE_CLASSES
    if not 2 <= classes <= len(table):
        raise ValueError(f"--classes must be 2..{len(table)} for the {task} task, got {classes}")
    out = Path(out)
    counts = {}
    for name in list(table)[:classes]:
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            key = hashlib.sha256(f"{task}/{name}/{seed}/{i}".encode()).digest()
            rng = random.Random(int.from_bytes(key[:8], "big"))
            draw_image(table[name], size, rng).save(
                out / name / f"{name}_{i:04d}.jpg", quality=quality
            )
        counts[name] = per_class
    return counts
