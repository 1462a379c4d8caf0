"""Synthetic printed digits: the embedded source domain.

Digits 0-9 are rendered from every TrueType face found on the machine (the DejaVu family on Debian) plus
Pillow's built-in font, with random rotation, shear, scale, stroke width, blur and noise. Printed glyphs are
wider and more regular than handwriting, so a model trained here and scored on scikit-learn's handwritten
digits meets a real shape-and-style shift, with no download.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from transferops.errors import DataError

log = logging.getLogger(__name__)

DIGITS = [str(d) for d in range(10)]
_CANVAS = 128
_FONT_SIZE = 64


def find_fonts(fonts_dir: str) -> list[Path]:
    """Every .ttf/.otf file under ``fonts_dir`` that can render all ten digits, sorted (determinism)."""
    root = Path(fonts_dir)
    if not root.is_dir():
        return []
    fonts = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf")):
        try:
            font = ImageFont.truetype(str(path), _FONT_SIZE)
        except OSError:
            continue
        if all(font.getbbox(d)[2] > font.getbbox(d)[0] for d in DIGITS):
            fonts.append(path)
    return fonts


def _load_fonts(fonts_dir: str) -> list[ImageFont.FreeTypeFont | ImageFont.ImageFont]:
    fonts: list = [ImageFont.truetype(str(p), _FONT_SIZE) for p in find_fonts(fonts_dir)]
    try:
        fonts.append(ImageFont.load_default(size=_FONT_SIZE))
    except TypeError:  # Pillow without FreeType has only the fixed bitmap font
        pass
    if not fonts:
        raise DataError(f"{fonts_dir}: no usable font found to render synthetic digits (expected .ttf files)")
    return fonts


def _render_one(text: str, font, rng: np.random.Generator, size: int) -> np.ndarray:
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = int(rng.integers(0, 4))
    draw.text((_CANVAS / 2, _CANVAS / 2), text, fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255)
    # random rotation and shear around the centre
    angle = float(rng.uniform(-15, 15))
    shear = float(rng.uniform(-0.3, 0.3))
    canvas = canvas.rotate(angle, resample=Image.Resampling.BILINEAR, center=(_CANVAS / 2, _CANVAS / 2))
    c = _CANVAS / 2
    canvas = canvas.transform(
        canvas.size, Image.Transform.AFFINE, (1, shear, -shear * c, 0, 1, 0), resample=Image.Resampling.BILINEAR
    )
    box = canvas.getbbox()
    if box is None:  # nothing drawn: cannot happen with fonts that passed find_fonts
        raise DataError(f"font {getattr(font, 'path', 'default')}: rendered an empty image for {text!r}")
    glyph = canvas.crop(box)
    # scale so the glyph height fills 75-100 % of the frame, keeping its aspect ratio
    target_h = size * float(rng.uniform(0.75, 1.0))
    scale = target_h / glyph.height
    w = max(1, min(size, round(glyph.width * scale)))
    h = max(1, min(size, round(glyph.height * scale)))
    glyph = glyph.resize((w, h), Image.Resampling.LANCZOS)
    out = Image.new("L", (size, size), 0)
    x0 = int(rng.integers(0, size - w + 1))
    y0 = int(rng.integers(0, size - h + 1))
    out.paste(glyph, (x0, y0))
    radius = float(rng.uniform(0.0, 2.0))
    if radius > 0.1:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(out, dtype=np.float32)
    arr = arr + rng.normal(0.0, float(rng.uniform(0, 12)), arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def render_digits(
    samples_per_class: int, image_size: int, fonts_dir: str, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Render ``samples_per_class`` images of each digit.

    Returns ``(images, labels, classes)`` with images uint8 of shape (N, 1, size, size), white ink on black
    like the handwritten target. Deterministic for a given seed and set of fonts.
    """
    fonts = _load_fonts(fonts_dir)
    log.info("rendering %d synthetic digits per class from %d fonts", samples_per_class, len(fonts))
    rng = np.random.default_rng([seed, 0x5EED])
    images = np.empty((10 * samples_per_class, 1, image_size, image_size), dtype=np.uint8)
    labels = np.repeat(np.arange(10, dtype=np.int64), samples_per_class)
    for i, label in enumerate(labels):
        font = fonts[int(rng.integers(0, len(fonts)))]
        images[i, 0] = _render_one(DIGITS[label], font, rng, image_size)
    return images, labels, list(DIGITS)
