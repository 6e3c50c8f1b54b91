"""SVTRRecAug: the augmentation of PaddleOCR's SVTR configs (ppocr/data/imaug/rec_img_aug.py
SVTRRecAug, built from ppocr/data/imaug/abinet_aug.py, after ABINet). All randomness from `rng`.

Three stages, each with its own probability:
- geometry (p 0.5): one of rotation (+-45 degrees, canvas grown to fit), affine (rotation,
  scale 0.5-2, shear 45 / 15 degrees) or perspective (corners pulled in by up to half the
  distortion), with `aug_type: 1` a random 1-3 of them in random order; edges replicated, the
  interpolation drawn from nearest / linear / cubic / area;
- deterioration (p 0.25): Gaussian noise, motion blur and a pyramid rescale, in random order;
- colour jitter (p 0.25): brightness, contrast, saturation (0.5) and hue (0.1), in random order,
  as paddle.vision's ColorJitter computes them on arrays (contrast pivots at 74).

One difference: PaddleOCR draws the noise variance, blur length and angle and the rescale depth
once, when a data-loader worker builds the op, and keeps them for the whole run; here they are
drawn per image, as ABINet intends.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from jaxocr.data.transforms.common import augment_image

INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)


def _asym(rng, magnitude):
    return rng.beta(1, 4) * magnitude


def _sym(rng, magnitude):
    return (rng.beta(4, 4) - 0.5) * 2 * magnitude


def _interpolation(rng):
    return INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))]


def rotate(img, rng, degrees):
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), _sym(rng, degrees), 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    dst_w, dst_h = int(h * sin + w * cos), int(h * cos + w * sin)
    m[0, 2] += (dst_w - w) / 2
    m[1, 2] += (dst_h - h) / 2
    return cv2.warpAffine(img, m, (dst_w, dst_h), flags=_interpolation(rng),
                          borderMode=cv2.BORDER_REPLICATE)


def _inverse_affine(center, angle, scale, shear):
    """torchvision's inverse affine matrix (translation 0), as ABINet uses it."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = np.array([[d, -b, 0.0], [-c, a, 0.0]]) / scale
    cx, cy = center
    m[:, 2] = m[:, 0] * -cx + m[:, 1] * -cy + np.array([cx, cy])
    return m


def affine(img, rng, degrees, scale, shear):
    h, w = img.shape[:2]
    angle = _sym(rng, degrees)
    factor = rng.uniform(*scale)
    m = _inverse_affine((w / 2, h / 2), angle, factor, (_sym(rng, shear[0]), _sym(rng, shear[1])))
    corners = np.array([(0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1)], np.float64)
    ends = (corners @ m[:, :2].T + m[:, 2]).astype(np.int32)  # int() truncation, as ABINet
    box = cv2.boxPoints(cv2.minAreaRect(ends)).astype(np.int32)
    dst_w, dst_h = int(np.ptp(box[:, 0])), int(np.ptp(box[:, 1]))
    if dst_w < 1 or dst_h < 1:
        return img
    m[0, 2] += (dst_w - w) / 2
    m[1, 2] += (dst_h - h) / 2
    return cv2.warpAffine(img, m, (dst_w, dst_h), flags=_interpolation(rng),
                          borderMode=cv2.BORDER_REPLICATE)


def perspective(img, rng, distortion):
    h, w = img.shape[:2]
    dy = (rng.beta(1, 4, 4) * distortion * h / 2).astype(np.int32)
    dx = (rng.beta(1, 4, 4) * distortion * w / 2).astype(np.int32)
    start = np.float32([(0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1)])
    end = np.float32([(dx[0], dy[0]), (w - 1 - dx[1], dy[1]), (w - 1 - dx[2], h - 1 - dy[2]),
                      (dx[3], h - 1 - dy[3])])
    m = cv2.getPerspectiveTransform(start, end)
    box = cv2.boxPoints(cv2.minAreaRect(end)).astype(np.int32)
    max_x, max_y = box[:, 0].max(), box[:, 1].max()
    min_x, min_y = max(box[:, 0].min(), 0), max(box[:, 1].min(), 0)
    if max_x <= min_x or max_y <= min_y:
        return img
    out = cv2.warpPerspective(img, m, (int(max_x), int(max_y)), flags=_interpolation(rng),
                              borderMode=cv2.BORDER_REPLICATE)
    return out[min_y:, min_x:]


def gaussian_noise(img, rng, var):
    var = max(int(_asym(rng, var)), 1)
    return np.clip(img + rng.normal(0, var ** 0.5, img.shape), 0, 255).astype(np.uint8)


def motion_blur(img, rng, degrees, angle=90):
    length = max(int(_asym(rng, degrees)), 1)
    m = cv2.getRotationMatrix2D((length // 2, length // 2), rng.uniform(-angle, angle), 1)
    kernel = np.zeros((length, length))
    kernel[length // 2, :] = 1
    kernel = cv2.warpAffine(kernel, m, (length, length)) / length
    return np.clip(cv2.filter2D(img, -1, kernel), 0, 255).astype(np.uint8)


def rescale(img, rng, factor, base=(128, 512)):
    """Down a Gaussian pyramid `round(U(0, factor))` levels from a 128 x 512 copy, and back."""
    levels = round(rng.uniform(0, factor))
    if levels == 0:
        return img
    h, w = img.shape[:2]
    small = cv2.resize(img, (base[1], base[0]), interpolation=_interpolation(rng))
    for _ in range(levels):
        small = cv2.pyrDown(small)
    return cv2.resize(small, (w, h), interpolation=_interpolation(rng))


def _lut(img, table):
    return cv2.LUT(img, np.clip(table, 0, 255).astype(np.uint8))


def color_jitter(img, rng, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1):
    def adjust_brightness(x):
        return _lut(x, np.arange(256) * rng.uniform(max(0, 1 - brightness), 1 + brightness))

    def adjust_contrast(x):
        f = rng.uniform(max(0, 1 - contrast), 1 + contrast)
        return _lut(x, (np.arange(256) - 74) * f + 74)

    def adjust_saturation(x):
        f = rng.uniform(max(0, 1 - saturation), 1 + saturation)
        alpha = rng.uniform(max(0, 1 - f), 1 + f)  # paddle.vision draws twice, so do we
        gray = cv2.cvtColor(x, cv2.COLOR_BGR2GRAY)[..., None].astype(np.float32)
        return np.clip(x * alpha + gray * (1 - alpha), 0, 255).astype(np.uint8)

    def adjust_hue(x):
        hsv = cv2.cvtColor(x, cv2.COLOR_BGR2HSV_FULL)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(rng.uniform(-hue, hue) * 255))
                       % 256).astype(np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR_FULL)

    for op in rng.permutation([adjust_brightness, adjust_contrast, adjust_saturation,
                               adjust_hue]):
        img = op(img)
    return img


class SVTRRecAug:
    random = True  # draws from the per-sample rng

    def __init__(self, aug_type: int = 0, geometry_p: float = 0.5,
                 deterioration_p: float = 0.25, colorjitter_p: float = 0.25):
        self.aug_type = int(aug_type)
        self.geometry_p, self.deterioration_p = float(geometry_p), float(deterioration_p)
        self.colorjitter_p = float(colorjitter_p)

    def augment(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < self.geometry_p:
            warps = [lambda x: rotate(x, rng, 45),
                     lambda x: affine(x, rng, 45, (0.5, 2.0), (45, 15)),
                     lambda x: perspective(x, rng, 0.5)]
            if self.aug_type:
                chosen = rng.permutation(3)[:rng.integers(1, 4)]
            else:
                chosen = [rng.integers(3)]
            for i in chosen:
                img = warps[i](img)
        if rng.random() < self.deterioration_p:
            for i in rng.permutation(3):
                img = (lambda x: gaussian_noise(x, rng, 20), lambda x: motion_blur(x, rng, 6),
                       lambda x: rescale(x, rng, 4))[i](img)
        if rng.random() < self.colorjitter_p:
            img = color_jitter(img, rng)
        return img

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        return augment_image(data, self.augment, rng, "SVTRRecAug")
