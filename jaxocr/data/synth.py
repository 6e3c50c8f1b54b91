"""Built-in synthetic text lines: random text over the charset, rendered with real TrueType fonts.

Sample i depends only on `np.random.default_rng([seed, i])`, so it is the same in any worker,
thread or process, and the dataset needs no files. The fonts are the DejaVu (and STIX) TTFs
that matplotlib's wheel ships in `mpl-data/fonts/ttf/` (no OS font package needed for Latin
text); `fonts:` in the dataset config may name others (a file path, or a name in that
folder), e.g. a Noto CJK font for a Chinese dictionary. Characters a font has no glyph for
(read from its cmap with fontTools, a matplotlib dependency) are never drawn with it.

Image: dark text on a light background, random gray levels with a slight per-channel tint and
a horizontal background gradient, random font and size, height 32..48 px, width fitted to the
text plus small random margins, small random vertical offset. uint8 HWC, 3 channels (BGR).
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxocr.data.charset import CharacterDict

log = logging.getLogger("jaxocr")

DEFAULT_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf",
)
MAX_DEFAULT_LEN = 10


def matplotlib_font_dir() -> str:
    import matplotlib  # only for its data path; pyplot is never imported

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def resolve_font(name: str) -> str:
    if os.path.isfile(name):
        return os.path.abspath(name)
    path = os.path.join(matplotlib_font_dir(), name)
    if os.path.isfile(path):
        return path
    raise FileNotFoundError(f"SynthTextLine font not found: {name} (neither a file nor a font "
                            f"in {matplotlib_font_dir()})")


@functools.lru_cache(maxsize=None)
def font_codepoints(path: str) -> frozenset[int]:
    """Code points the font maps to a glyph (its best cmap); index 0 of a .ttc collection."""
    from fontTools.ttLib import TTFont

    with TTFont(path, fontNumber=0, lazy=True) as font:
        return frozenset(font.getBestCmap() or ())


@functools.lru_cache(maxsize=None)
def _ascent_descent_per_px(path: str) -> float:
    ascent, descent = ImageFont.truetype(path, 100).getmetrics()
    return (ascent + descent) / 100.0


class FontCache:
    """Renderers' fonts: `font_paths`, each opened once per (size, thread), never pickled (a
    worker process opens its own). Subclasses set `font_paths` and call `__init__`."""

    def __init__(self):
        self._local = threading.local()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def _font(self, f: int, size: int) -> ImageFont.FreeTypeFont:
        cache = getattr(self._local, "fonts", None)
        if cache is None:
            cache = self._local.fonts = {}
        font = cache.get((f, size))
        if font is None:
            font = cache[(f, size)] = ImageFont.truetype(self.font_paths[f], size)
        return font


class SynthTextLine(FontCache):
    """A dataset source of `num_samples` rendered text lines; `load(i)` -> {'image', 'label'}."""

    def __init__(self, charset: CharacterDict | str | Sequence[str], num_samples: int = 10000,
                 seed: int = 0, min_len: int = 1, max_len: int = MAX_DEFAULT_LEN,
                 fonts: Sequence[str] | None = None, height: tuple[int, int] = (32, 48),
                 mixed_case: bool | None = None):
        if isinstance(charset, CharacterDict):
            chars = charset.characters
            if mixed_case is None:
                mixed_case = charset.lower  # labels are lower-cased anyway: draw both cases
        else:
            chars = list(charset)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.min_len, self.max_len = int(min_len), int(max_len)
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"SynthTextLine: need 1 <= min_len <= max_len, got "
                             f"{self.min_len}..{self.max_len}")
        if self.num_samples < 0:
            raise ValueError(f"SynthTextLine: num_samples must be >= 0, got {num_samples}")
        self.height = (int(height[0]), int(height[1]))
        self.mixed_case = bool(mixed_case)
        self.font_paths = [resolve_font(f) for f in (fonts or DEFAULT_FONTS)]
        wanted = sorted({c for c in chars if len(c) == 1 and c.isprintable()})
        # Per font: the charset characters it has glyphs for (as an object array for fancy
        # indexing) and the subset usable at the ends of a line (no spaces).
        self._chars, self._end_chars, self._block = [], [], []
        covered: set[str] = set()
        usable_paths = []
        for path in self.font_paths:
            cps = font_codepoints(path)
            have = [c for c in wanted if c == " " or ord(c) in cps]
            ends = [c for c in have if not c.isspace()]
            if not ends:
                log.warning("SynthTextLine: font %s has no glyph for any dictionary character; "
                            "not used", path)
                continue
            usable_paths.append(path)
            covered.update(have)
            self._chars.append(np.array(have, dtype=object))
            self._end_chars.append(np.array(ends, dtype=object))
            self._block.append(_ascent_descent_per_px(path))
        if not usable_paths:
            raise ValueError(
                f"SynthTextLine: the fonts {[os.path.basename(p) for p in self.font_paths]} "
                f"have glyphs for none of the {len(wanted)} dictionary characters; name a font "
                f"that covers them in the dataset's `fonts:` (e.g. a Noto CJK .ttc/.otf path)")
        missing = [c for c in wanted if c not in covered]
        if missing:
            log.warning("SynthTextLine: %d of %d dictionary characters have no glyph in any font "
                        "and are never drawn (e.g. %r)", len(missing), len(wanted),
                        "".join(missing[:20]))
        self.font_paths = usable_paths
        self.characters = sorted(covered)
        self.dropped: dict[str, int] = {}
        FontCache.__init__(self)

    def __len__(self) -> int:
        return self.num_samples

    def text(self, rng: np.random.Generator, f: int) -> str:
        n = int(rng.integers(self.min_len, self.max_len + 1))
        chars, ends = self._chars[f], self._end_chars[f]
        picked = chars[rng.integers(len(chars), size=n)]
        picked[0] = ends[rng.integers(len(ends))]
        picked[-1] = ends[rng.integers(len(ends))]
        text = "".join(picked)
        if self.mixed_case:
            style = rng.random()
            if style < 0.25:
                text = text.upper()
            elif style < 0.45:
                text = text.capitalize()
            elif style < 0.55:
                flip = rng.random(len(text)) < 0.5
                text = "".join(c.upper() if u else c for c, u in zip(text, flip))
            if len(text) != n:  # a character whose upper case is longer (e.g. German sharp s)
                text = "".join(picked)
        return text

    def render(self, i: int) -> tuple[np.ndarray, str]:
        """(uint8 HxWx3 BGR image, label) of sample i."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"SynthTextLine index {i} out of range 0..{self.num_samples - 1}")
        rng = np.random.default_rng([self.seed, int(i)])
        f = int(rng.integers(len(self.font_paths)))
        text = self.text(rng, f)
        h = int(rng.integers(self.height[0], self.height[1] + 1))
        size = max(8, round(h * rng.uniform(0.6, 0.88) / self._block[f]))
        font = self._font(f, size)
        ascent, descent = font.getmetrics()
        left, _, right, _ = font.getbbox(text)
        left = min(left, 0)
        pad_l = int(rng.integers(1, max(2, h // 4)))
        pad_r = int(rng.integers(1, max(2, h // 4)))
        w = pad_l + (right - left) + pad_r
        slack = h - (ascent + descent)
        jitter = max(0, slack // 3)
        y = slack // 2 + int(rng.integers(-jitter, jitter + 1))

        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).text((pad_l - left, y), text, fill=255, font=font)
        alpha = np.asarray(mask, dtype=np.float32) * (1.0 / 255.0)

        bg_gray = rng.integers(165, 256, size=2)  # left and right end of the gradient
        fg_gray = int(rng.integers(0, min(bg_gray) - 90))
        tint = rng.integers(-12, 13, size=3)
        bg = np.clip(np.linspace(bg_gray[0], bg_gray[1], w, dtype=np.float32)[:, None] + tint,
                     0, 255)  # (w, 3)
        fg = np.clip(fg_gray + rng.integers(-20, 21, size=3), 0, 255).astype(np.float32)
        img = bg[None] + alpha[..., None] * (fg - bg[None])
        return (img + 0.5).astype(np.uint8), text

    def load(self, i: int) -> dict:
        image, label = self.render(i)
        return {"image": image, "label": label}

    def __repr__(self) -> str:
        return (f"SynthTextLine({self.num_samples} lines, seed {self.seed}, len "
                f"{self.min_len}..{self.max_len}, {len(self.font_paths)} fonts, "
                f"{len(self.characters)} chars)")
