"""Built-in synthetic scenes for DB text detection: words on textured backgrounds, exact boxes.

    src = SynthTextScene(num_samples=1000, seed=0)          # 640x640 scenes, 4..12 words each
    sample = src.load(i)  # {'image': HxWx3 uint8 BGR, 'label': PaddleOCR det JSON, 'img_path'}

Scene i depends only on `np.random.default_rng([seed, i])` (PIL and OpenCV drawing are
deterministic), so it is the same in any worker, thread or process; the source pickles small
(parameters and font paths; font objects are opened lazily, per process and thread).

Scene: a background of layered textures drawn from the sample's rng alone (a linear colour
gradient, always; smooth value noise, sine stripes, blurred random shapes, each sometimes),
then `words_per_image` random strings (several styles over the charset; DejaVu / STIX fonts
from matplotlib's wheel by default, random size), each rotated (about half nearly horizontal,
the others up to `max_angle` degrees) and some perspective-warped, at random non-overlapping
positions (at least `gap` px apart), in a colour contrasting with the background under it; a
last, optional, per-pixel noise. `dont_care_prob` of the words are illegible on purpose
(blurred, faint or tiny) and labelled `###`, as ICDAR's don't-care regions.

Labels: the box of each word is its *ink box* -- the tight pixel-edge rectangle of the rendered
glyphs' nonzero pixels in the word's own canvas -- mapped by the word's exact affine or
perspective transform, so it is a 4-point quadrilateral in scene pixel coordinates (pixel
centres at integers, as cv2.fillPoly and PaddleOCR's label makers read them), ordered clockwise
on screen from the word's top-left corner (its reading order: TL, TR, BR, BL, as ICDAR 2015),
floats rounded to 0.01 px. The warped ink is clipped to that quadrilateral (only pixels whose
centre lies outside it, which bilinear interpolation gives less than half the edge's ink), so
every ink pixel of a word lies inside its label polygon. The JSON is PaddleOCR's det label:
`[{"transcription": "text", "points": [[x1, y1], ..., [x4, y4]]}, ...]`, UTF-8.
"""
from __future__ import annotations

import json
import logging
import math
import string
from collections import Counter
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from jaxocr.data.source_api import EveryEntryEachEpoch
from jaxocr.data.synth import DEFAULT_FONTS, FontCache, font_codepoints, resolve_font

log = logging.getLogger("jaxocr")

DONT_CARE = "###"
IGNORED_TRANSCRIPTIONS = ("###", "*")  # PaddleOCR's DetLabelEncode marks both as ignore
DEFAULT_CHARSET = string.ascii_letters + string.digits + "!?.,:;-'&%$@()/+"
MIN_SIDE = 64
MARGIN = 2          # px between a label polygon and the image border
PAD = 4             # px of empty canvas around a word's glyphs before blur
SHIFT = 4           # fractional bits for cv2.fillConvexPoly
PLACE_TRIES = 6     # positions tried per word size
SHRINKS = 2         # smaller sizes tried when no position fits
EMPTY_RETRIES = 8   # more words tried when none of a scene's fit


def _range(v, name: str, lo: int = 1) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        a = b = int(v)
    else:
        a, b = (int(x) for x in v)
    if not lo <= a <= b:
        raise ValueError(f"SynthTextScene: {name} must satisfy {lo} <= min <= max, got {v!r}")
    return a, b


def _size_spec(image_size) -> tuple[tuple[int, int], tuple[int, int]]:
    """int S -> S x S; (H, W); or ((h_min, h_max), (w_min, w_max)) drawn per scene."""
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    if len(image_size) != 2:
        raise ValueError(f"SynthTextScene: image_size must be S, (H, W) or "
                         f"((h_min, h_max), (w_min, w_max)), got {image_size!r}")
    return (_range(image_size[0], "image_size height", MIN_SIDE),
            _range(image_size[1], "image_size width", MIN_SIDE))


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """3x3 projective matrix applied to (N, 2) points."""
    p = pts @ m[:, :2].T + m[:, 2]
    return p[:, :2] / p[:, 2:3]


def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _is_clockwise_convex(q: np.ndarray) -> bool:
    """True if the quad turns the same way at every vertex, clockwise on screen (y down)."""
    d = np.roll(q, -1, axis=0) - q
    cross = d[:, 0] * np.roll(d, -1, axis=0)[:, 1] - d[:, 1] * np.roll(d, -1, axis=0)[:, 0]
    return bool(np.all(cross > 1e-6))


def polygon_inside(quad: np.ndarray, x0: int, y0: int, w: int, h: int,
                   tol: float = 0.0) -> np.ndarray:
    """bool[h, w]: pixel centres (x0 + j, y0 + i) within distance `tol` of the convex, clockwise
    (on screen) quad -- its closed interior for tol 0 (a mitred dilation for tol > 0)."""
    xs = np.arange(x0, x0 + w, dtype=np.float64)[None, :]
    ys = np.arange(y0, y0 + h, dtype=np.float64)[:, None]
    inside = np.ones((h, w), bool)
    for k in range(4):
        (ax, ay), (bx, by) = quad[k], quad[(k + 1) % 4]
        ex, ey = bx - ax, by - ay
        norm = math.hypot(ex, ey)
        inside &= (ex * (ys - ay) - ey * (xs - ax)) >= -tol * norm
    return inside


class SynthTextScene(EveryEntryEachEpoch, FontCache):
    """A detection source of `num_samples` synthetic scenes; `load(i)` -> {'image', 'label',
    'img_path'} with the label in PaddleOCR's det JSON (see the module docstring)."""

    def __init__(self, num_samples: int = 1000, seed: int = 0, image_size=(640, 640),
                 words_per_image=(4, 12), fonts: Sequence[str] | None = None,
                 dont_care_prob: float = 0.1, charset: str | Sequence[str] | None = None,
                 word_len=(2, 10), font_size=(16, 72), max_angle: float = 30.0,
                 horizontal_prob: float = 0.5, perspective_prob: float = 0.15,
                 noise_prob: float = 0.5, gap: int = 3):
        self.num_samples = int(num_samples)
        if self.num_samples < 0:
            raise ValueError(f"SynthTextScene: num_samples must be >= 0, got {num_samples}")
        self.seed = int(seed)
        self.image_size = _size_spec(image_size)
        self.words_per_image = _range(words_per_image, "words_per_image", 1)
        self.word_len = _range(word_len, "word_len", 1)
        self.font_size = _range(font_size, "font_size", 6)
        for name, p in (("dont_care_prob", dont_care_prob), ("horizontal_prob", horizontal_prob),
                        ("perspective_prob", perspective_prob), ("noise_prob", noise_prob)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"SynthTextScene: {name} must be in [0, 1], got {p}")
        self.dont_care_prob = float(dont_care_prob)
        self.horizontal_prob = float(horizontal_prob)
        self.perspective_prob = float(perspective_prob)
        self.noise_prob = float(noise_prob)
        self.max_angle = float(max_angle)
        if not 0.0 <= self.max_angle <= 45.0:
            raise ValueError(f"SynthTextScene: max_angle must be in [0, 45] degrees (the first "
                             f"point stays the word's top-left), got {max_angle}")
        self.gap = int(gap)
        if not 0 <= self.gap <= MARGIN + 8:
            raise ValueError(f"SynthTextScene: gap must be in 0..{MARGIN + 8}, got {gap}")
        self.styled = charset is None
        chars = DEFAULT_CHARSET if charset is None else charset
        wanted = sorted({c for c in chars if len(c) == 1 and c.isprintable() and not c.isspace()})
        if not wanted:
            raise ValueError("SynthTextScene: the charset has no printable, non-space character")
        self.font_paths, self._chars = [], []
        for path in (resolve_font(f) for f in (fonts or DEFAULT_FONTS)):
            cps = font_codepoints(path)
            have = "".join(c for c in wanted if ord(c) in cps)
            if have:
                self.font_paths.append(path)
                self._chars.append(have)
            else:
                log.warning("SynthTextScene: font %s has no glyph for any charset character; "
                            "not used", path)
        if not self.font_paths:
            raise ValueError("SynthTextScene: no font has glyphs for the charset")
        self.dropped: dict[str, int] = {}
        self.chars_removed = 0
        self.removed_chars: Counter = Counter()
        FontCache.__init__(self)

    # -- source API ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_samples

    def load(self, i: int) -> dict:
        s = self.scene(i)
        return {"image": s["image"], "label": self.label_json(s["words"]),
                "img_path": f"synth://{int(i)}"}

    def __repr__(self) -> str:
        (h0, h1), (w0, w1) = self.image_size
        size = f"{h0}x{w0}" if (h0, w0) == (h1, w1) else f"{h0}..{h1}x{w0}..{w1}"
        return (f"SynthTextScene({self.num_samples} scenes, seed {self.seed}, {size}, "
                f"{self.words_per_image[0]}..{self.words_per_image[1]} words, "
                f"{len(self.font_paths)} fonts, dont_care {self.dont_care_prob})")

    @staticmethod
    def label_json(words) -> str:
        return json.dumps([{"transcription": w["transcription"],
                            "points": [[float(x), float(y)] for x, y in w["points"]]}
                           for w in words], ensure_ascii=False)

    # -- rendering ----------------------------------------------------------------------------
    def _text(self, rng: np.random.Generator, f: int) -> str:
        chars = self._chars[f]
        n = int(rng.integers(self.word_len[0], self.word_len[1] + 1))
        pool = chars
        if self.styled:
            style = rng.random()
            lower = "".join(c for c in chars if c in string.ascii_lowercase)
            digits = "".join(c for c in chars if c in string.digits)
            if style < 0.6 and lower:
                pool = lower
            elif style < 0.75 and digits:
                pool = digits + ".,:-/%$"
        text = "".join(pool[k] for k in rng.integers(len(pool), size=n))
        if self.styled and pool is not chars and text.isalpha():
            if style < 0.25:
                text = text.capitalize()
            elif style < 0.35:
                text = text.upper()
        if text in IGNORED_TRANSCRIPTIONS:
            text = chars[0] * n
        return text

    def _word_alpha(self, f: int, size: int, text: str, blur: float):
        """(uint8 alpha canvas, (x0, y0, x1, y1) its nonzero box, exclusive ends) or None."""
        font = self._font(f, size)
        left, top, right, bottom = font.getbbox(text)
        pad = PAD + (int(math.ceil(3.5 * blur)) if blur else 0)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        canvas = Image.new("L", (w, h), 0)
        ImageDraw.Draw(canvas).text((pad - left, pad - top), text, fill=255, font=font)
        alpha = np.asarray(canvas)
        if blur:
            alpha = cv2.GaussianBlur(alpha, (0, 0), blur)
        rows = np.flatnonzero(alpha.any(axis=1))
        cols = np.flatnonzero(alpha.any(axis=0))
        if rows.size == 0:
            return None
        return alpha, (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)

    def _background(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        """float32 HxWx3 BGR texture in [0, 255]: the smooth layers (gradient, value noise,
        blurred shapes) are composed at half resolution and upsampled once; stripes are added
        at full resolution."""
        sh, sw = (h + 1) // 2, (w + 1) // 2
        c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        theta = rng.uniform(0, 2 * math.pi)
        gx = np.linspace(0, math.cos(theta), sw, dtype=np.float32)[None, :]
        gy = np.linspace(0, math.sin(theta), sh, dtype=np.float32)[:, None]
        g = gx + gy
        g -= g.min()
        g *= 1.0 / max(float(g.max()), 1e-6)
        bg = c1.astype(np.float32) + g[..., None] * (c2 - c1).astype(np.float32)
        if rng.random() < 0.6:  # smooth value noise
            cells = int(rng.integers(3, 24))
            small = rng.standard_normal((cells, max(2, cells * w // h), 3)).astype(np.float32)
            bg += cv2.resize(small, (sw, sh), interpolation=cv2.INTER_CUBIC) * \
                np.float32(rng.uniform(8, 40))
        if rng.random() < 0.5:  # blurred random shapes
            layer = np.zeros((sh, sw, 3), np.float32)
            cover = np.zeros((sh, sw), np.float32)
            for _ in range(int(rng.integers(2, 9))):
                color = tuple(float(v) for v in rng.uniform(0, 255, 3))
                kind = rng.integers(4)
                cx, cy = int(rng.integers(sw)), int(rng.integers(sh))
                r = int(rng.integers(4, max(5, min(sh, sw) // 3)))
                if kind == 0:
                    cv2.circle(layer, (cx, cy), r, color, -1)
                    cv2.circle(cover, (cx, cy), r, 1.0, -1)
                elif kind == 1:
                    p2 = (cx + int(rng.integers(-r, r + 1)), cy + int(rng.integers(-r, r + 1)))
                    cv2.rectangle(layer, (cx, cy), p2, color, -1)
                    cv2.rectangle(cover, (cx, cy), p2, 1.0, -1)
                elif kind == 2:
                    axes, ang = (r, max(2, r // 2)), float(rng.uniform(0, 180))
                    cv2.ellipse(layer, (cx, cy), axes, ang, 0, 360, color, -1)
                    cv2.ellipse(cover, (cx, cy), axes, ang, 0, 360, 1.0, -1)
                else:
                    p2 = (int(rng.integers(sw)), int(rng.integers(sh)))
                    t = int(rng.integers(1, 4))
                    cv2.line(layer, (cx, cy), p2, color, t)
                    cv2.line(cover, (cx, cy), p2, 1.0, t)
            sigma = float(rng.uniform(1.0, 6.0))
            layer = cv2.GaussianBlur(layer, (0, 0), sigma)
            cover = cv2.GaussianBlur(cover, (0, 0), sigma)
            # layer holds colour * coverage (premultiplied): blend it over the base
            opacity = np.float32(rng.uniform(0.3, 0.9))
            bg += opacity * (layer - cover[..., None] * bg)
        bg = cv2.resize(bg, (w, h), interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.3:  # stripes: sin(kx cos + ky sin + phase) as a sum of outer products
            phi = rng.uniform(0, math.pi)
            period = rng.uniform(6, max(8.0, min(h, w) / 3))
            k = 2 * math.pi / period
            ax = np.arange(w, dtype=np.float64) * (k * math.cos(phi)) + rng.uniform(0, 2 * math.pi)
            ay = np.arange(h, dtype=np.float64) * (k * math.sin(phi))
            wave = (np.sin(ax)[None, :] * np.cos(ay)[:, None]
                    + np.cos(ax)[None, :] * np.sin(ay)[:, None]).astype(np.float32)
            bg += wave[..., None] * rng.uniform(-30, 30, 3).astype(np.float32)
        return np.clip(bg, 0, 255, out=bg)

    def _transform(self, rng: np.random.Generator, src: np.ndarray, perspective: bool):
        """3x3 matrix taking the ink box `src` (4x2, centre at the origin after it) to a
        rotated (and perhaps perspective-warped) quad centred near the origin."""
        c = src.mean(axis=0)
        m = _translate(-c[0], -c[1])
        if perspective:
            bw, bh = src[1, 0] - src[0, 0], src[3, 1] - src[0, 1]
            jitter = rng.uniform(-1, 1, (4, 2)) * [min(0.12 * bw, 0.15 * bh), 0.2 * bh]
            p = cv2.getPerspectiveTransform(src.astype(np.float32),
                                            (src + jitter).astype(np.float32))
            m = m @ p
        if rng.random() < self.horizontal_prob:
            angle = rng.normal(0.0, 1.5)
        else:
            angle = rng.uniform(-self.max_angle, self.max_angle)
        angle = math.radians(float(np.clip(angle, -self.max_angle, self.max_angle)))
        cos, sin = math.cos(angle), math.sin(angle)
        return np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]]) @ m

    def _place(self, rng, occ: np.ndarray, q: np.ndarray):
        """A translation putting quad q inside the image, >= gap px from occupied pixels;
        marks it occupied. (tx, ty, rounded quad) or None; 'big' when it cannot fit at all."""
        h, w = occ.shape
        lo, hi = q.min(axis=0), q.max(axis=0)
        x_rng = (MARGIN + self.gap - lo[0], w - 1 - MARGIN - self.gap - hi[0])
        y_rng = (MARGIN + self.gap - lo[1], h - 1 - MARGIN - self.gap - hi[1])
        if x_rng[0] > x_rng[1] or y_rng[0] > y_rng[1]:
            return "big"
        for _ in range(PLACE_TRIES):
            tx, ty = rng.uniform(*x_rng), rng.uniform(*y_rng)
            quad = np.round(q + (tx, ty), 2)
            x0 = int(math.floor(quad[:, 0].min())) - self.gap
            y0 = int(math.floor(quad[:, 1].min())) - self.gap
            x1 = int(math.ceil(quad[:, 0].max())) + self.gap + 1
            y1 = int(math.ceil(quad[:, 1].max())) + self.gap + 1
            stamp = np.zeros((y1 - y0, x1 - x0), np.uint8)
            pts = np.round((quad - (x0, y0)) * (1 << SHIFT)).astype(np.int32)
            cv2.fillConvexPoly(stamp, pts, 1, lineType=cv2.LINE_8, shift=SHIFT)
            if self.gap:
                cv2.polylines(stamp, [pts], True, 1, thickness=2 * self.gap + 1,
                              lineType=cv2.LINE_8, shift=SHIFT)
            region = occ[y0:y1, x0:x1]
            if np.any(region & stamp):
                continue
            region |= stamp
            return tx, ty, quad
        return None

    def _word(self, rng, img: np.ndarray, occ: np.ndarray, debug: bool):
        """Draws one word into img (float32) and returns its entry, or None if it fit nowhere."""
        h, w = occ.shape
        f = int(rng.integers(len(self.font_paths)))
        text = self._text(rng, f)
        dont_care = rng.random() < self.dont_care_prob
        lo, hi = self.font_size
        hi = max(lo, min(hi, min(h, w) // 4))
        size = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))
        blur, opacity = 0.0, float(rng.uniform(0.85, 1.0))
        if dont_care:
            kind = rng.integers(3)
            if kind == 0:
                blur = float(rng.uniform(1.8, 3.5))
            elif kind == 1:
                opacity = float(rng.uniform(0.15, 0.35))
            else:
                size = int(rng.integers(6, 11))
        perspective = rng.random() < self.perspective_prob
        placed = None
        for _ in range(SHRINKS + 1):
            rendered = self._word_alpha(f, size, text, blur)
            if rendered is None:
                return None
            alpha, (x0, y0, x1, y1) = rendered
            src = np.array([[x0 - 0.5, y0 - 0.5], [x1 - 0.5, y0 - 0.5],
                            [x1 - 0.5, y1 - 0.5], [x0 - 0.5, y1 - 0.5]])
            m = self._transform(rng, src, perspective)
            q = _apply(m, src)
            if perspective and not _is_clockwise_convex(q):
                perspective = False
                m = self._transform(rng, src, False)
                q = _apply(m, src)
            placed = self._place(rng, occ, q)
            if placed is not None and placed != "big":
                break
            extent = q.max(axis=0) - q.min(axis=0)
            room = np.array([w, h]) - 2 * (MARGIN + self.gap) - 2
            shrink = min(0.7, float(np.min(room / np.maximum(extent, 1.0))) * 0.95)
            new_size = int(size * shrink)
            if new_size < 6 or new_size == size:
                return None
            size = new_size
            placed = None
        if placed is None or placed == "big":
            return None
        tx, ty, quad = placed
        m = _translate(tx, ty) @ m
        # warp into the quad's bounding box (pixel centres x0..x1-1, y0..y1-1)
        bx0, by0 = int(math.floor(quad[:, 0].min())), int(math.floor(quad[:, 1].min()))
        bx1, by1 = int(math.ceil(quad[:, 0].max())) + 1, int(math.ceil(quad[:, 1].max())) + 1
        local = _translate(-bx0, -by0) @ m
        size_wh = (bx1 - bx0, by1 - by0)
        if perspective:
            warped = cv2.warpPerspective(alpha, local, size_wh, flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        else:
            warped = cv2.warpAffine(alpha, local[:2], size_wh, flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        inside = polygon_inside(quad, bx0, by0, *size_wh)
        a = warped.astype(np.float32) * np.float32(1.0 / 255.0)
        clipped = np.where(inside, a, np.float32(0.0))
        roi = img[by0:by1, bx0:bx1]
        mean = roi[inside].mean(axis=0) if inside.any() else roi.reshape(-1, 3).mean(axis=0)
        lum = float(mean.mean())
        if lum > 128:
            base = rng.uniform(0, max(1.0, lum - 100))
        else:
            base = rng.uniform(min(254.0, lum + 100), 255)
        color = np.clip(base + rng.uniform(-40, 40, 3), 0, 255).astype(np.float32)
        k = (clipped * np.float32(opacity))[..., None]
        roi += k * (color - roi)
        entry = {"transcription": DONT_CARE if dont_care else text, "points": quad.tolist(),
                 "text": text, "perspective": perspective}
        if debug:
            entry.update(alpha=clipped, origin=(bx0, by0), font=self.font_paths[f], size=size,
                         clipped_max=float(np.max(a[~inside], initial=0.0)),
                         clipped_sum=float(a[~inside].sum()), ink_sum=float(a.sum()))
        return entry

    def scene(self, i: int, debug: bool = False) -> dict:
        """{'image': uint8 HxWx3 BGR, 'words': [{'transcription', 'points' (4 [x, y], clockwise
        from the word's top-left), 'text' (the drawn string, also for ###), 'perspective'}]}.
        With debug, each word also has 'alpha' (its clipped ink coverage, float32, top-left at
        'origin' (x, y)) and the coverage the clip removed ('clipped_max', 'clipped_sum', of
        'ink_sum'), and the scene has 'background' and 'clean' (before the final noise)."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"SynthTextScene index {i} out of range 0..{self.num_samples - 1}")
        rng = np.random.default_rng([self.seed, int(i)])
        (h0, h1), (w0, w1) = self.image_size
        h, w = int(rng.integers(h0, h1 + 1)), int(rng.integers(w0, w1 + 1))
        img = self._background(rng, h, w)
        out = {"background": img.copy()} if debug else {}
        occ = np.zeros((h, w), np.uint8)
        words = []
        for _ in range(int(rng.integers(self.words_per_image[0], self.words_per_image[1] + 1))):
            entry = self._word(rng, img, occ, debug)
            if entry is not None:
                words.append(entry)
        for _ in range(EMPTY_RETRIES):  # PaddleOCR's DetLabelEncode drops a scene with no box
            if words:
                break
            entry = self._word(rng, img, occ, debug)
            if entry is not None:
                words.append(entry)
        if debug:
            out["clean"] = img.copy()
        if rng.random() < self.noise_prob:  # grey grain (one channel, broadcast: 3x cheaper)
            sigma = np.float32(rng.uniform(2, 8))
            img += rng.standard_normal((h, w, 1), dtype=np.float32) * sigma
        np.clip(img, 0, 255, out=img)
        img += np.float32(0.5)
        out.update(image=img.astype(np.uint8), words=words)
        return out
