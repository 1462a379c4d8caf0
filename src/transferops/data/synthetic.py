"""Synthetic printed digits: the embedded source domain.

Digits 0-9 are rendered with random rotation, shear, scale, stroke width, blur and noise. Printed glyphs are
wider and more regular than handwriting, so a model trained here and scored on scikit-learn's handwritten
digits meets a real shape-and-style shift, with no download.

The faces come from pinned packages, not from the machine: the DejaVu, STIX and Computer Modern faces that
matplotlib's wheel ships, plus Pillow's built-in font. Both wheels are pinned in requirements.lock, so the
same seed renders the same bytes on a laptop, in CI and in the Kubeflow image, and the dataset version (a
hash of the shards) is the same everywhere. ``fonts_dir`` opts into a folder of fonts instead (machine-
dependent by nature). Each image is rendered from its own seeded generator, so images can be rendered in
any order, in parallel.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from transferops.errors import DataError

log = logging.getLogger(__name__)

DIGITS = [str(d) for d in range(10)]
_CANVAS = 128
_FONT_SIZE = 64
BUNDLED_FACES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmti10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
)
"""Text faces of matplotlib's wheel that draw the ten digits (its symbol and size-variant faces do not)."""


def bundled_fonts() -> list[Path]:
    """The faces of :data:`BUNDLED_FACES` inside the installed matplotlib wheel."""
    import matplotlib

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    missing = [f for f in BUNDLED_FACES if not (root / f).is_file()]
    if missing:
        raise DataError(f"{root}: matplotlib's bundled fonts {missing} are missing (reinstall requirements.lock)")
    return [root / f for f in BUNDLED_FACES]


def find_fonts(fonts_dir: str) -> list[Path]:
    """Every .ttf/.otf file under ``fonts_dir`` that can render all ten digits, sorted (determinism)."""
    root = Path(fonts_dir)
    if not root.is_dir():
        raise DataError(f"ingest.source.fonts_dir: {root} is not a folder of .ttf/.otf fonts")
    fonts = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf")):
        try:
            font = ImageFont.truetype(str(path), _FONT_SIZE)
        except OSError:
            continue
        if all(font.getbbox(d)[2] > font.getbbox(d)[0] for d in DIGITS):
            fonts.append(path)
    return fonts


@cache
def load_fonts(fonts_dir: str = "") -> tuple[ImageFont.FreeTypeFont, ...]:
    """The faces to render with: matplotlib's bundled ones (``fonts_dir`` empty) or those under ``fonts_dir``,
    plus Pillow's built-in font."""
    paths = find_fonts(fonts_dir) if fonts_dir else bundled_fonts()
    fonts = [ImageFont.truetype(str(p), _FONT_SIZE) for p in paths]
    fonts.append(ImageFont.load_default(size=_FONT_SIZE))
    return tuple(fonts)


def render_one(text: str, font, rng: np.random.Generator, size: int) -> np.ndarray:
    """One glyph, white on black, (size, size) uint8, with random geometry, stroke, blur and noise."""
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = int(rng.integers(0, 4))
    draw.text((_CANVAS / 2, _CANVAS / 2), text, fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255)
    angle = float(rng.uniform(-15, 15))
    shear = float(rng.uniform(-0.3, 0.3))
    canvas = canvas.rotate(angle, resample=Image.Resampling.BILINEAR, center=(_CANVAS / 2, _CANVAS / 2))
    c = _CANVAS / 2
    canvas = canvas.transform(
        canvas.size, Image.Transform.AFFINE, (1, shear, -shear * c, 0, 1, 0), resample=Image.Resampling.BILINEAR
    )
    box = canvas.getbbox()
    if box is None:
        raise DataError(f"font {getattr(font, 'path', 'default')}: rendered an empty image for {text!r}")
    glyph = canvas.crop(box)
    # scale so the glyph height fills 75-100 % of the frame, keeping its aspect ratio
    target_h = size * float(rng.uniform(0.75, 1.0))
    scale = target_h / glyph.height
    w = max(1, min(size, round(glyph.width * scale)))
    h = max(1, min(size, round(glyph.height * scale)))
    glyph = glyph.resize((w, h), Image.Resampling.LANCZOS)
    out = Image.new("L", (size, size), 0)
    out.paste(glyph, (int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))))
    radius = float(rng.uniform(0.0, 2.0))
    if radius > 0.1:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(out, dtype=np.float32)
    arr = arr + rng.normal(0.0, float(rng.uniform(0, 12)), arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def render_digit(index: int, label: int, size: int, seed: int, fonts_dir: str = "") -> np.ndarray:
    """Image ``index`` of the synthetic set: a pure function of (seed, index), whatever else is rendered."""
    fonts = load_fonts(fonts_dir)
    rng = np.random.default_rng([seed, 0x5EED, index])
    font = fonts[int(rng.integers(0, len(fonts)))]
    return render_one(DIGITS[label], font, rng, size)


def render_digits(samples_per_class: int, size: int, seed: int, fonts_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
    """All images at once (N, 1, size, size) and their labels; small sets and tests."""
    labels = np.repeat(np.arange(10, dtype=np.int64), samples_per_class)
    images = np.stack([render_digit(i, int(y), size, seed, fonts_dir)[None] for i, y in enumerate(labels)])
    return images, labels
