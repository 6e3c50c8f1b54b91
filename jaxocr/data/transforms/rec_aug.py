"""RecAug: PaddleOCR's ppocr/data/imaug/rec_img_aug.py (RecAug + BaseDataAugmentation), with the
TIA warps of ppocr/data/imaug/text_image_aug/augment.py. All randomness from `rng`.

`tia_distort` / `tia_stretch` / `tia_perspective` are computed with vectorised `cv2.remap` /
`cv2.warpPerspective` from the same random control points, not with PaddleOCR's
moving-least-squares warp.
"""
from __future__ import annotations

import cv2
import numpy as np

from jaxocr.data.transforms.common import augment_image


def tia_perspective(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Top corners moved down and bottom corners up by up to h/2 each: a perspective squeeze."""
    h, w = img.shape[:2]
    thresh = max(1, h // 2)
    d = rng.integers(thresh, size=4)
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[0, d[0]], [w, d[1]], [w, h - d[2]], [0, h - d[3]]])
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(img, m, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)


def _remap(img, map_x, map_y):
    return cv2.remap(img, map_x, map_y, interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def tia_stretch(img: np.ndarray, rng: np.random.Generator, segment: int) -> np.ndarray:
    """The w/segment cut lines each shifted horizontally by up to 0.4 of a cut: piecewise-linear
    local stretching/compression of the text along x."""
    h, w = img.shape[:2]
    cut = w // segment
    thresh = cut * 4 // 5
    if thresh < 1:
        return img
    move = rng.integers(thresh, size=segment - 1) - thresh * 0.5
    src_x = np.concatenate([[0], cut * np.arange(1, segment), [w]]).astype(np.float64)
    dst_x = src_x.copy()
    dst_x[1:-1] += move
    # inverse map: output column x samples the source at the piecewise-linear preimage of x
    xs = np.interp(np.arange(w, dtype=np.float64), dst_x, src_x).astype(np.float32)
    map_x = np.broadcast_to(xs, (h, w))
    map_y = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    return _remap(img, np.ascontiguousarray(map_x), np.ascontiguousarray(map_y))


def tia_distort(img: np.ndarray, rng: np.random.Generator, segment: int) -> np.ndarray:
    """Corners and the top/bottom ends of each cut line moved by up to a third of a cut, the
    displacement interpolated bilinearly between them (a smooth local distortion)."""
    h, w = img.shape[:2]
    cut = w // segment
    thresh = cut // 3
    if thresh < 1:
        return img
    half = thresh * 0.5
    # control points at x = 0, cut, 2cut, ..., w on the top (row 0) and bottom (row 1) edges;
    # displacement (dst - src) of each, following augment.py's ranges
    n = segment + 1
    dx = rng.integers(thresh, size=(2, n)) - half
    dy = rng.integers(thresh, size=(2, n)) - half
    dx[:, 0] = rng.integers(thresh, size=2)          # left corners move inwards
    dx[:, -1] = -rng.integers(thresh, size=2)        # right corners move inwards
    dy[0, [0, -1]] = rng.integers(thresh, size=2)    # top corners move down
    dy[1, [0, -1]] = -rng.integers(thresh, size=2)   # bottom corners move up
    ctrl_x = np.concatenate([[0], cut * np.arange(1, segment), [w]]).astype(np.float64)
    cols = np.arange(w, dtype=np.float64)
    t = (np.arange(h, dtype=np.float64) / max(1, h - 1))[:, None]
    # bilinear: along x between control columns, along y between the top and bottom rows
    disp_x = [np.interp(cols, ctrl_x, dx[r]) for r in (0, 1)]
    disp_y = [np.interp(cols, ctrl_x, dy[r]) for r in (0, 1)]
    map_x = np.arange(w)[None, :] - ((1 - t) * disp_x[0] + t * disp_x[1])
    map_y = np.arange(h)[:, None] - ((1 - t) * disp_y[0] + t * disp_y[1])
    return _remap(img, map_x.astype(np.float32), map_y.astype(np.float32))


def get_crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut 1..8 rows off the top or the bottom."""
    h = img.shape[0]
    top_crop = min(int(rng.integers(1, 9)), h - 1)
    return img[top_crop:] if rng.integers(2) else img[:h - top_crop]


def blur(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.GaussianBlur(img, (5, 5), 1) if h > 10 and w > 10 else img


def hsv_aug(img: np.ndarray, rng: np.random.Generator, max_delta: float) -> np.ndarray:
    """Scale the HSV value channel by 1 +- max_delta*u (PaddleOCR: max_delta 0.001)."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    delta = max_delta * rng.random() * (1 if rng.random() > 0.5000001 else -1)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] * (1 + delta), 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PaddleOCR's 'jitter': smear the image diagonally by up to 1% of its smaller side."""
    h, w = img.shape[:2]
    if h <= 10 or w <= 10:
        return img
    s = int(rng.random() * min(h, w) * 0.01)
    if s <= 1:
        return img
    # PaddleOCR loops `img[i:, i:] = src[:h-i, :w-i]` for i < s; the last write wins, so pixel
    # (y, x) ends up as src[y - k, x - k] with k = min(y, x, s - 1).
    k = s - 1
    out = img.copy()
    out[k:, k:] = img[:h - k, :w - k]
    for i in range(1, k):  # the thin L-shaped borders where min(y, x) < k (s-2 slices)
        out[i, i:] = img[0, :w - i]
        out[i:, i] = img[:h - i, 0]
    return out


def add_gauss_noise(img: np.ndarray, rng: np.random.Generator, mean: float = 0.0,
                    var: float = 0.1) -> np.ndarray:
    """PaddleOCR's add_gasuss_noise: img + 0.5 * N(mean, var), clipped, truncated to uint8."""
    noise = rng.normal(mean, var ** 0.5, img.shape).astype(np.float32)
    return np.clip(img + 0.5 * noise, 0, 255).astype(np.uint8)


class RecAug:
    """PaddleOCR RecAug: with probability tia_prob the TIA warps (distort + stretch when the
    image is at least 20x20, then perspective), then BaseDataAugmentation: crop, blur, hsv,
    jitter, noise, reverse, each with its own probability (0.4 by default).

    `hsv_delta` and `noise_var` default to PaddleOCR's values (0.001, 0.1), which are nearly
    invisible; raise them for stronger photometric augmentation.
    """

    random = True  # draws from the per-sample rng

    def __init__(self, tia_prob: float = 0.4, crop_prob: float = 0.4, reverse_prob: float = 0.4,
                 noise_prob: float = 0.4, jitter_prob: float = 0.4, blur_prob: float = 0.4,
                 hsv_aug_prob: float = 0.4, use_tia: bool = True, aug_prob: float | None = None,
                 hsv_delta: float = 0.001, noise_var: float = 0.1):
        if aug_prob is not None:  # older PaddleOCR RecAug(use_tia, aug_prob)
            tia_prob = crop_prob = reverse_prob = noise_prob = jitter_prob = blur_prob = \
                hsv_aug_prob = float(aug_prob)
        self.tia_prob = float(tia_prob) if use_tia else 0.0
        self.crop_prob, self.reverse_prob = float(crop_prob), float(reverse_prob)
        self.noise_prob, self.jitter_prob = float(noise_prob), float(jitter_prob)
        self.blur_prob, self.hsv_aug_prob = float(blur_prob), float(hsv_aug_prob)
        self.hsv_delta, self.noise_var = float(hsv_delta), float(noise_var)

    def augment(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        if rng.random() <= self.tia_prob:
            if h >= 20 and w >= 20:
                img = tia_distort(img, rng, int(rng.integers(3, 7)))
                img = tia_stretch(img, rng, int(rng.integers(3, 7)))
            img = tia_perspective(img, rng)
        h, w = img.shape[:2]
        if rng.random() <= self.crop_prob and h >= 20 and w >= 20:
            img = get_crop(img, rng)
        if rng.random() <= self.blur_prob:
            img = blur(img)
        if rng.random() <= self.hsv_aug_prob:
            img = hsv_aug(img, rng, self.hsv_delta)
        if rng.random() <= self.jitter_prob:
            img = jitter(img, rng)
        if rng.random() <= self.noise_prob:
            img = add_gauss_noise(img, rng, var=self.noise_var)
        if rng.random() <= self.reverse_prob:
            img = 255 - img
        return img

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        return augment_image(data, self.augment, rng, "RecAug")
