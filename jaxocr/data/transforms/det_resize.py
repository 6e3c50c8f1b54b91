"""DetResizeForTest: PaddleOCR 2.7's ppocr/data/imaug/operators.py DetResizeForTest, and the
fixed-shape eval padding that is jaxocr's (shape_buckets, pad_to_bucket, the DetPadToBucket op:
eval batches padded to a bounded set of shapes compile a bounded number of programs)."""
from __future__ import annotations

import math

import cv2
import numpy as np

from jaxocr.data.transforms.common import BadSample, _image


class DetResizeForTest:
    """PaddleOCR 2.7 DetResizeForTest. `image` -> the resized image, `shape` float64
    [src_h, src_w, ratio_h, ratio_w]. Modes, as PaddleOCR picks them from the options:
    - image_shape [H, W] (type 1): resized to W x H; keep_ratio: W = ceil(w * H / h / 32) * 32.
    - limit_side_len (type 0, default 736 / min): limit_type max scales the longer side down to
      the limit, min the shorter side up to it, resize_long the longer side to it; then each side
      int(side * ratio) rounded to a multiple of 32 (at least 32).
    - resize_long (type 2): longer side to resize_long, then sides rounded up to multiples of
      128.
    Images with h + w < 64 are first zero-padded to at least 32 x 32 (bottom / right)."""

    def __init__(self, **kwargs):
        self.resize_type, self.keep_ratio = 0, False
        if "image_shape" in kwargs:
            self.image_shape = [int(v) for v in kwargs["image_shape"]]
            self.resize_type = 1
            self.keep_ratio = bool(kwargs.get("keep_ratio", False))
        elif "limit_side_len" in kwargs:
            self.limit_side_len = kwargs["limit_side_len"]
            self.limit_type = kwargs.get("limit_type", "min")
        elif "resize_long" in kwargs:
            self.resize_type = 2
            self.resize_long = kwargs.get("resize_long", 960)
        else:
            self.limit_side_len, self.limit_type = 736, "min"
        if self.resize_type == 0 and self.limit_type not in ("min", "max", "resize_long"):
            raise ValueError(f"DetResizeForTest: limit_type must be min, max or resize_long, "
                             f"got {self.limit_type!r}")

    def __call__(self, data: dict, rng=None) -> dict:
        img = _image(data, "DetResizeForTest")
        src_h, src_w = img.shape[:2]
        if src_h + src_w < 64:
            pad = np.zeros((max(32, src_h), max(32, src_w), img.shape[2]), np.uint8)
            pad[:src_h, :src_w] = img
            img = pad
        resize = (self.resize_image_type0, self.resize_image_type1,
                  self.resize_image_type2)[self.resize_type]
        img, (ratio_h, ratio_w) = resize(img)
        data["image"] = img
        data["shape"] = np.array([src_h, src_w, ratio_h, ratio_w])
        return data

    def target_size(self, h: int, w: int):
        """(resize_h, resize_w) for an h x w image (after the small-image padding)."""
        if self.resize_type == 1:
            rh, rw = self.image_shape
            if self.keep_ratio:
                rw = math.ceil(w * rh / h / 32) * 32
            return int(rh), int(rw)
        if self.resize_type == 2:
            ratio = float(self.resize_long) / (h if h > w else w)
            rh, rw = int(h * ratio), int(w * ratio)
            return (rh + 127) // 128 * 128, (rw + 127) // 128 * 128
        limit = self.limit_side_len
        if self.limit_type == "max":
            ratio = (float(limit) / (h if h > w else w)) if max(h, w) > limit else 1.0
        elif self.limit_type == "min":
            ratio = (float(limit) / (h if h < w else w)) if min(h, w) < limit else 1.0
        else:
            ratio = float(limit) / max(h, w)
        rh, rw = int(h * ratio), int(w * ratio)
        return max(int(round(rh / 32) * 32), 32), max(int(round(rw / 32) * 32), 32)

    def _resize(self, img):
        h, w = img.shape[:2]
        rh, rw = self.target_size(h, w)
        out = cv2.resize(img, (int(rw), int(rh)))
        if out.ndim == 2:
            out = out[:, :, None]
        return out, rh, rw, h, w

    def resize_image_type0(self, img):
        out, rh, rw, h, w = self._resize(img)
        return out, [rh / float(h), rw / float(w)]

    def resize_image_type1(self, img):
        out, rh, rw, h, w = self._resize(img)
        return out, [float(rh) / h, float(rw) / w]

    def resize_image_type2(self, img):
        out, rh, rw, h, w = self._resize(img)
        return out, [rh / float(h), rw / float(w)]


def shape_buckets(max_h: int, max_w: int, step: int = 128, multiple: int = 32) -> list:
    """A bounded set of (H, W) pad targets: every multiple of `step` (itself a multiple of
    `multiple`) up to max_h / max_w rounded up, sorted by area. Eval batches padded to them
    compile at most len(result) shapes."""
    if step % multiple:
        raise ValueError(f"shape_buckets: step {step} is not a multiple of {multiple}")
    hs = range(step, -(-max_h // step) * step + 1, step)
    ws = range(step, -(-max_w // step) * step + 1, step)
    return sorted(((h, w) for h in hs for w in ws), key=lambda s: (s[0] * s[1], s))


def pad_to_bucket(image: np.ndarray, buckets, value=0):
    """Zero-pad (bottom / right) an HxWxC image to the smallest-area bucket (H', W') with
    H' >= H and W' >= W. Returns (padded, np.int32 [H, W] valid size). A bucket list that no
    bucket of fits raises ValueError."""
    h, w = image.shape[:2]
    fits = [tuple(int(v) for v in b) for b in buckets if b[0] >= h and b[1] >= w]
    if not fits:
        raise ValueError(f"pad_to_bucket: no bucket holds a {h}x{w} image (largest "
                         f"{max(buckets, key=lambda b: b[0] * b[1]) if buckets else None})")
    bh, bw = min(fits, key=lambda b: (b[0] * b[1], b))
    if (bh, bw) == (h, w):
        return image, np.array([h, w], np.int32)
    out = np.full((bh, bw) + image.shape[2:], value, image.dtype)
    out[:h, :w] = image
    return out, np.array([h, w], np.int32)


class DetPadToBucket:
    """jaxocr op (not PaddleOCR's): pads `image` with pad_to_bucket to one of `buckets`
    ([[H, W], ...], multiples of 32) and adds `valid_shape` int32 [h, w]. Put it after
    DetResizeForTest in eval configs that batch more than one image."""

    def __init__(self, buckets):
        self.buckets = [tuple(int(v) for v in b) for b in buckets]
        bad = [b for b in self.buckets if len(b) != 2 or b[0] % 32 or b[1] % 32]
        if not self.buckets or bad:
            raise ValueError(f"DetPadToBucket: buckets must be [H, W] multiples of 32, got "
                             f"{buckets!r}")

    def __call__(self, data: dict, rng=None) -> dict:
        img = _image(data, "DetPadToBucket")
        try:
            data["image"], data["valid_shape"] = pad_to_bucket(img, self.buckets)
        except ValueError as e:
            raise BadSample(str(e)) from None
        return data
