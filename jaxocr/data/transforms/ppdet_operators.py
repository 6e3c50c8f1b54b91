"""PaddleDetection release/2.7.1 reader transforms with Paddle's option names and defaults: the
sample ops of ppdet/data/transform/operators.py here, the batch ops of batch_operators.py in
ppdet_batch_operators.py. PP-YOLOE's reader
(configs/ppyoloe/_base_/ppyoloe_reader.yml):

    sample: Decode -> RandomDistort -> RandomExpand(fill_value [123.675, 116.28, 103.53])
            -> RandomCrop -> RandomFlip
    batch:  BatchRandomResize(target_size [320..768 step 32], random_size, random_interp,
            keep_ratio False) -> NormalizeImage -> Permute -> PadGT
    eval:   Decode -> Resize(target_size [640, 640], keep_ratio False, interp 2)
            -> NormalizeImage -> Permute

Sample ops follow the package's convention: `op(sample: dict, rng) -> dict`, every random
draw from the `rng` passed in (the pipeline seeds it per sample; ops that draw have
`random = True`), `BadSample` for an unusable sample. Batch ops act on a list of samples:
`op(samples, step, seed=None) -> samples`; BatchRandomResize draws its size and interpolation
from `np.random.default_rng([seed, step, BATCH_RESIZE_STREAM])`, so every process picks the
same for the same step with no communication (Paddle draws them per worker from the global
numpy state). The per-sample ops (NormalizeImage, Permute, Resize) may stand in a batch list
too; `BatchCompose` maps them over the samples.

Differences from Paddle, on purpose:
- Images stay uint8 HWC throughout (the project ships uint8 and normalises on the device,
  jaxocr/data/device_norm.py): NormalizeImage records `norm` = float32 (3, C) [mean, std,
  scale] and leaves the pixels alone; Permute is a no-op (JAX is NHWC). Paddle turns images
  float32 after RandomDistort / Pad / Resize, so here RandomExpand's fill is rounded to the
  nearest integer and Resize's cubic / Lanczos overshoot saturates at 0 / 255.
- Decode takes 'image_bytes' (or bytes in 'image') or a decoded BGR array (cv2's order, what
  the synthetic sources give) and yields RGB, as Paddle's Decode does.
- RandomExpand and RandomCrop also update `im_shape` to the new image size (Paddle leaves it
  until Resize sets it).
- RandomCrop never raises on a crop as tall or wide as the image (np.random.randint(0, 0) in
  Paddle); the offset is 0 there. Without `gt_bbox` (Paddle's semi-supervised fake-box path)
  the sample passes through.
- PadGT pads to a fixed `num_max_boxes` (default 100; Paddle pads to the largest count in the
  batch, at least `minimum_gtnum`) so every batch has one shape; boxes past the cap are cut
  (counted in `op.truncated`, logged once). Shapes: gt_bbox (M, 4) float32, gt_class (M,)
  int32, pad_gt_mask (M,) float32 (Paddle keeps a trailing 1: (M, 1)).

Boxes are x1y1x2y2 in pixel-edge coordinates throughout (Paddle's convention): a flip maps
[x1, x2] to [w - x2, w - x1], a resize scales by new / old size and clips to the new image.
"""
from __future__ import annotations

import logging
import math
from numbers import Integral, Number
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from jaxocr.data.transforms.common import (BadSample, _check_options, _image, decode_image,
                                           op_entries)

log = logging.getLogger("jaxocr")


INTERPS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC,
           cv2.INTER_LANCZOS4)  # BatchRandomResize's random_interp choices, Paddle's order
BOX_KEYS = ("gt_class", "is_crowd", "gt_score", "difficult")  # per-box arrays kept with boxes


def _boxes(sample: dict) -> np.ndarray | None:
    b = sample.get("gt_bbox")
    if b is None:
        return None
    b = np.asarray(b, np.float32)
    return b.reshape(-1, 4)


def _set_shape(sample: dict, img: np.ndarray):
    sample["image"] = np.ascontiguousarray(img)
    sample["im_shape"] = np.array(img.shape[:2], np.float32)


# ----------------------------------------------------------------------------------------------
class Decode:
    """Paddle's Decode: image bytes -> uint8 HWC RGB; sets `im_shape` [h, w] (float32), `h`,
    `w` and `scale_factor` [1, 1]. A decoded array is taken as BGR (cv2's order) and turned
    RGB. `rtn_im_file` is accepted (the path is kept in `img_path` anyway)."""

    def __init__(self, rtn_im_file: bool = False):
        self.rtn_im_file = bool(rtn_im_file)

    def __call__(self, sample: dict, rng=None) -> dict:
        img = decode_image(sample)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        _set_shape(sample, img)
        sample["h"], sample["w"] = img.shape[0], img.shape[1]
        sample["scale_factor"] = np.array([1.0, 1.0], np.float32)
        return sample


# ----------------------------------------------------------------------------------------------
class RandomDistort:
    """Random colour distortion (PIL ImageEnhance, as Paddle). Each of hue / saturation /
    contrast / brightness is [low, high, prob]: Paddle *skips* the distortion when a uniform
    draw is below prob, so it is applied with probability 1 - prob (0.5 by default). With
    random_apply (default) the four run in a random order, the first `count` of a permutation;
    otherwise the SSD order (brightness, contrast before or after saturation+hue at random),
    then, with random_channel, a random channel permutation half the time. The whole op runs
    when a uniform draw is at most `prob`. Hue adds delta to PIL's 8-bit H channel, wrapping as
    Paddle's uint8 store does."""

    random = True

    def __init__(self, hue=(-18, 18, 0.5), saturation=(0.5, 1.5, 0.5),
                 contrast=(0.5, 1.5, 0.5), brightness=(0.5, 1.5, 0.5), random_apply=True,
                 count=4, random_channel=False, prob=1.0):
        self.hue, self.saturation = self._spec(hue, "hue"), self._spec(saturation, "saturation")
        self.contrast = self._spec(contrast, "contrast")
        self.brightness = self._spec(brightness, "brightness")
        self.random_apply = bool(random_apply)
        self.count = int(count)
        self.random_channel = bool(random_channel)
        self.prob = float(prob)

    @staticmethod
    def _spec(v, name):
        if len(v) != 3:
            raise ValueError(f"RandomDistort: {name} must be [low, high, prob], got {v!r}")
        return tuple(float(x) for x in v)

    def _hue(self, img, rng):
        low, high, prob = self.hue
        if rng.uniform(0.0, 1.0) < prob:
            return img
        delta = rng.uniform(low, high)
        hsv = np.array(img.convert("HSV"))
        h = np.trunc(hsv[:, :, 0].astype(np.float64) + delta).astype(np.int64)
        hsv[:, :, 0] = (h % 256).astype(np.uint8)
        return Image.fromarray(hsv, mode="HSV").convert("RGB")

    def _enhance(self, spec, enhancer):
        def f(img, rng):
            low, high, prob = spec
            if rng.uniform(0.0, 1.0) < prob:
                return img
            return enhancer(img).enhance(rng.uniform(low, high))
        return f

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() > self.prob:
            return sample
        arr = _image(sample, "RandomDistort")
        img = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))
        bright = self._enhance(self.brightness, ImageEnhance.Brightness)
        contrast = self._enhance(self.contrast, ImageEnhance.Contrast)
        sat = self._enhance(self.saturation, ImageEnhance.Color)
        if self.random_apply:
            funcs = [bright, contrast, sat, self._hue]
            for k in rng.permutation(len(funcs))[:self.count]:
                img = funcs[k](img, rng)
            sample["image"] = np.asarray(img).copy()
            return sample
        img = bright(img, rng)
        mode = int(rng.integers(0, 2))
        if mode:
            img = contrast(img, rng)
        img = sat(img, rng)
        img = self._hue(img, rng)
        if not mode:
            img = contrast(img, rng)
        out = np.asarray(img).copy()
        if self.random_channel and rng.integers(0, 2):
            out = np.ascontiguousarray(out[..., rng.permutation(3)])
        sample["image"] = out
        return sample


# ----------------------------------------------------------------------------------------------
class RandomExpand:
    """Paddle's RandomExpand: with probability 1 - prob (Paddle returns early when a uniform
    draw is below prob), a canvas of int(h * r) x int(w * r), r ~ U(1, ratio), filled with
    `fill_value` (RGB, rounded: images are uint8 here), the image at a random offset
    (randint(0, H - h), randint(0, W - w), exclusive high), boxes shifted by it."""

    random = True

    def __init__(self, ratio=4.0, prob=0.5, fill_value=(127.5, 127.5, 127.5)):
        if not float(ratio) > 1.01:
            raise ValueError("RandomExpand: expand ratio must be larger than 1.01")
        self.ratio = float(ratio)
        self.prob = float(prob)
        if isinstance(fill_value, Number):
            fill_value = (fill_value,) * 3
        self.fill_value = tuple(float(v) for v in fill_value)
        self._fill = np.clip(np.round(self.fill_value), 0, 255).astype(np.uint8)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.uniform(0.0, 1.0) < self.prob:
            return sample
        img = _image(sample, "RandomExpand")
        height, width = img.shape[:2]
        ratio = rng.uniform(1.0, self.ratio)
        h, w = int(height * ratio), int(width * ratio)
        if not h > height or not w > width:
            return sample
        y = int(rng.integers(0, h - height))
        x = int(rng.integers(0, w - width))
        fill = self._fill if img.shape[2] == len(self._fill) else \
            np.full(img.shape[2], self._fill[0], np.uint8)
        canvas = np.empty((h, w, img.shape[2]), np.uint8)
        canvas[:] = fill
        canvas[y:y + height, x:x + width] = img
        _set_shape(sample, canvas)
        boxes = _boxes(sample)
        if boxes is not None and len(boxes):
            sample["gt_bbox"] = boxes + np.array([x, y, x, y], np.float32)
        return sample


# ----------------------------------------------------------------------------------------------
def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tl = np.maximum(a[:, None, :2], b[:, :2])
    br = np.minimum(a[:, None, 2:], b[:, 2:])
    inter = np.prod(br - tl, axis=2) * (tl < br).all(axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b - inter + 1e-10)


def _iof_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tl = np.maximum(a[:, None, :2], b[:, :2])
    br = np.minimum(a[:, None, 2:], b[:, 2:])
    inter = np.prod(br - tl, axis=2) * (tl < br).all(axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    return inter / (area_a[:, None] + 1e-10)


def crop_boxes_center(boxes: np.ndarray, crop: np.ndarray):
    """Paddle's _crop_box_with_center_constraint: boxes clipped to the crop and shifted to its
    origin; kept (indices returned) when the centre lies in [crop x1, x2) x [y1, y2) and the
    clipped box is non-degenerate."""
    out = boxes.copy()
    out[:, :2] = np.maximum(boxes[:, :2], crop[:2])
    out[:, 2:] = np.minimum(boxes[:, 2:], crop[2:])
    out[:, :2] -= crop[:2]
    out[:, 2:] -= crop[:2]
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    valid = np.logical_and(crop[:2] <= centers, centers < crop[2:]).all(axis=1)
    valid &= (out[:, :2] < out[:, 2:]).all(axis=1)
    return out, np.flatnonzero(valid)


class RandomCrop:
    """Paddle's RandomCrop (SSD-style, the short-circuit variant): the thresholds, plus
    'no_crop' when allow_no_crop, are shuffled and tried in turn; 'no_crop' returns the sample
    unchanged; for a threshold, up to num_attempts crops: scale ~ U(scaling), aspect ~
    U(max(ar_min, scale^2), min(ar_max, scale^-2)), crop h = int(h * scale / sqrt(ar)),
    w = int(w * scale * sqrt(ar)), offset randint(0, h - crop_h) (exclusive high); accepted
    when the best IoU (ioumode 'iou'; 'iof' = intersection over the box) with a box reaches the
    threshold (all boxes with cover_all_box) and some box centre is inside. Boxes are clipped
    to the crop and kept by centre. The op runs when a uniform draw is at most `prob`; a sample
    without boxes passes through. `is_mask_crop` is accepted (no masks here)."""

    random = True

    def __init__(self, aspect_ratio=(0.5, 2.0), thresholds=(0.0, 0.1, 0.3, 0.5, 0.7, 0.9),
                 scaling=(0.3, 1.0), num_attempts=50, allow_no_crop=True, cover_all_box=False,
                 is_mask_crop=False, ioumode="iou", prob=1.0):
        self.aspect_ratio = None if aspect_ratio is None else tuple(float(v) for v in aspect_ratio)
        self.thresholds = [float(t) for t in thresholds]
        self.scaling = tuple(float(v) for v in scaling)
        self.num_attempts = int(num_attempts)
        self.allow_no_crop = bool(allow_no_crop)
        self.cover_all_box = bool(cover_all_box)
        self.is_mask_crop = bool(is_mask_crop)
        if ioumode not in ("iou", "iof"):
            raise ValueError(f"RandomCrop: ioumode must be 'iou' or 'iof', got {ioumode!r}")
        self.ioumode = ioumode
        self.prob = float(prob)

    def _offset(self, rng, span: int) -> int:
        return int(rng.integers(0, span)) if span > 0 else 0

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() > self.prob:
            return sample
        boxes = _boxes(sample)
        if boxes is None or len(boxes) == 0:
            return sample
        img = _image(sample, "RandomCrop")
        h, w = img.shape[:2]
        choices = list(self.thresholds) + (["no_crop"] if self.allow_no_crop else [])
        order = rng.permutation(len(choices))
        for k in order:
            thresh = choices[k]
            if thresh == "no_crop":
                return sample
            for _ in range(self.num_attempts):
                scale = rng.uniform(*self.scaling)
                if self.aspect_ratio is not None:
                    lo, hi = self.aspect_ratio
                    ar = rng.uniform(max(lo, scale ** 2), min(hi, scale ** -2))
                    h_scale, w_scale = scale / math.sqrt(ar), scale * math.sqrt(ar)
                else:
                    h_scale, w_scale = rng.uniform(*self.scaling), rng.uniform(*self.scaling)
                crop_h, crop_w = h * h_scale, w * w_scale
                if self.aspect_ratio is None and not 0.5 <= crop_h / crop_w <= 2.0:
                    continue
                crop_h, crop_w = int(crop_h), int(crop_w)
                crop_y = self._offset(rng, h - crop_h)
                crop_x = self._offset(rng, w - crop_w)
                crop = np.array([crop_x, crop_y, crop_x + crop_w, crop_y + crop_h], np.float32)
                iou = (_iou_matrix if self.ioumode == "iou" else _iof_matrix)(boxes, crop[None])
                if iou.max() < thresh:
                    continue
                if self.cover_all_box and iou.min() < thresh:
                    continue
                cropped, keep = crop_boxes_center(boxes, crop)
                if keep.size > 0:
                    return self._apply(sample, img, (crop_x, crop_y, crop_w, crop_h),
                                       cropped, keep)
        return sample

    @staticmethod
    def _apply(sample, img, crop, cropped, keep):
        x, y, cw, ch = crop
        _set_shape(sample, img[y:y + ch, x:x + cw])
        n = len(cropped)
        sample["gt_bbox"] = np.take(cropped, keep, axis=0)
        for key in BOX_KEYS:
            v = sample.get(key)
            if v is not None and len(v) == n:
                sample[key] = np.take(np.asarray(v), keep, axis=0)
        return sample


# ----------------------------------------------------------------------------------------------
class RandomFlip:
    """Paddle's RandomFlip: horizontal flip with probability `prob` (a float, as Paddle
    requires); boxes [x1, x2] -> [w - x2, w - x1]; sets `flipped`."""

    random = True

    def __init__(self, prob=0.5):
        if not isinstance(prob, float):
            raise TypeError(f"RandomFlip: prob must be a float, got {prob!r}")
        self.prob = prob

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.uniform(0.0, 1.0) < self.prob:
            img = _image(sample, "RandomFlip")
            width = img.shape[1]
            sample["image"] = np.ascontiguousarray(img[:, ::-1])
            boxes = _boxes(sample)
            if boxes is not None and len(boxes):
                out = boxes.copy()
                out[:, 0] = width - boxes[:, 2]
                out[:, 2] = width - boxes[:, 0]
                sample["gt_bbox"] = out
            sample["flipped"] = True
        return sample


# ----------------------------------------------------------------------------------------------
def _target_hw(target_size) -> list[int]:
    if isinstance(target_size, Integral):
        return [int(target_size), int(target_size)]
    if not isinstance(target_size, (list, tuple)) or len(target_size) != 2:
        raise TypeError(f"Resize: target_size must be an int or [h, w], got {target_size!r}")
    return [int(v) for v in target_size]


def resize_sample(sample: dict, target_size, keep_ratio: bool, interp: int) -> dict:
    """Paddle's Resize.apply (see Resize)."""
    img = _image(sample, "Resize")
    h, w = img.shape[:2]
    target = _target_hw(target_size)
    if keep_ratio:
        scale = min(min(target) / min(h, w), max(target) / max(h, w))
        rh, rw = int(scale * float(h) + 0.5), int(scale * float(w) + 0.5)
    else:
        rh, rw = target
    sy, sx = rh / h, rw / w
    out = cv2.resize(img, (rw, rh), interpolation=int(interp))
    if out.ndim == 2:
        out = out[:, :, None]
    sample["image"] = np.ascontiguousarray(out)
    sample["im_shape"] = np.array([rh, rw], np.float32)
    sf = sample.get("scale_factor")
    if sf is not None:
        sf = np.asarray(sf, np.float32)
        sample["scale_factor"] = np.array([sf[0] * sy, sf[1] * sx], np.float32)
    else:
        sample["scale_factor"] = np.array([sy, sx], np.float32)
    boxes = _boxes(sample)
    if boxes is not None and len(boxes):
        b = boxes.copy()
        b[:, 0::2] = np.clip(b[:, 0::2] * np.float32(sx), 0, rw)
        b[:, 1::2] = np.clip(b[:, 1::2] * np.float32(sy), 0, rh)
        sample["gt_bbox"] = b
    if "gt_areas" in sample:
        sample["gt_areas"] = np.asarray(sample["gt_areas"], np.float32) * np.float32(sx * sy)
    return sample


class Resize:
    """Paddle's Resize(target_size, keep_ratio, interp=cv2.INTER_LINEAR): keep_ratio scales
    by min(min(target) / short side, max(target) / long side) and rounds each side
    int(s * side + 0.5); otherwise the image becomes target [h, w] (an int: square). Boxes are
    scaled and clipped to the new image; `im_shape` = new [h, w]; `scale_factor` [sy, sx] is
    multiplied in (Paddle's order). `interp` is an OpenCV code (0 nearest, 1 linear, 2 cubic,
    3 area, 4 Lanczos)."""

    def __init__(self, target_size, keep_ratio, interp=cv2.INTER_LINEAR):
        self.target_size = _target_hw(target_size)
        self.keep_ratio = bool(keep_ratio)
        self.interp = int(interp)

    def __call__(self, sample: dict, rng=None) -> dict:
        return resize_sample(sample, self.target_size, self.keep_ratio, self.interp)


# ----------------------------------------------------------------------------------------------
class NormalizeImage:
    """Paddle's NormalizeImage(mean, std, is_scale=True, norm_type='mean_std'): x * (1/255 if
    is_scale) - mean) / std. Here the image stays uint8 and `norm` = float32 (3, C) [mean, std,
    scale] is recorded for the device normalisation (device_norm.normalize_det_images with
    mean, std, scale); norm_type 'none' records mean 0, std 1. `normalize_image` is the numpy
    reference."""

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), is_scale=True,
                 norm_type="mean_std"):
        if not isinstance(is_scale, bool) or norm_type not in ("mean_std", "none"):
            raise TypeError(f"NormalizeImage: is_scale must be a bool and norm_type "
                            f"'mean_std' or 'none', got {is_scale!r}, {norm_type!r}")
        mean = np.asarray(mean, np.float32).reshape(-1)
        std = np.asarray(std, np.float32).reshape(-1)
        if mean.shape != std.shape:
            raise ValueError(f"NormalizeImage: mean {mean} and std {std} differ in length")
        if np.prod(std) == 0:
            raise ValueError("NormalizeImage: std is invalid (a zero)")
        if norm_type == "none":
            mean, std = np.zeros_like(mean), np.ones_like(std)
        self.mean, self.std = mean, std
        self.is_scale, self.norm_type = is_scale, norm_type
        self.scale = np.float32(1.0 / 255.0 if is_scale else 1.0)
        self.norm = np.stack([mean, std, np.full_like(mean, self.scale)])

    def __call__(self, sample: dict, rng=None) -> dict:
        img = _image(sample, "NormalizeImage")
        if img.shape[2] != self.mean.shape[0]:
            raise BadSample(f"NormalizeImage: image has {img.shape[2]} channels, mean/std "
                            f"{self.mean.shape[0]}")
        sample["norm"] = self.norm
        return sample


def normalize_image(image, norm) -> np.ndarray:
    """Paddle's NormalizeImage arithmetic in float32 on an HWC (or NHWC) array, from a `norm`
    [mean, std, scale] record."""
    norm = np.asarray(norm, np.float32)
    x = np.asarray(image).astype(np.float32) * norm[2, 0]
    return (x - norm[0]) / norm[1]


class Permute:
    """Paddle's Permute (HWC -> CHW) is a no-op here: JAX convolutions are NHWC."""

    def __init__(self):
        pass

    def __call__(self, sample: dict, rng=None) -> dict:
        return sample


# ----------------------------------------------------------------------------------------------
# registries: name -> (factory(kwargs), accepted option names), and the composers

SAMPLE_OPS: dict[str, tuple[Callable, set[str]]] = {
    "Decode": (lambda kw: Decode(**kw), {"rtn_im_file"}),
    "RandomDistort": (lambda kw: RandomDistort(**kw),
                      {"hue", "saturation", "contrast", "brightness", "random_apply", "count",
                       "random_channel", "prob"}),
    "RandomExpand": (lambda kw: RandomExpand(**kw), {"ratio", "prob", "fill_value"}),
    "RandomCrop": (lambda kw: RandomCrop(**kw),
                   {"aspect_ratio", "thresholds", "scaling", "num_attempts", "allow_no_crop",
                    "cover_all_box", "is_mask_crop", "ioumode", "prob"}),
    "RandomFlip": (lambda kw: RandomFlip(**kw), {"prob"}),
    "Resize": (lambda kw: Resize(**kw), {"target_size", "keep_ratio", "interp"}),
    "NormalizeImage": (lambda kw: NormalizeImage(**kw), {"mean", "std", "is_scale", "norm_type"}),
    "Permute": (lambda kw: Permute(), set()),
}

def _build(name, kwargs, registry):
    factory, known = registry[name]
    _check_options(name, kwargs, known)
    try:
        return factory(kwargs)
    except TypeError as e:  # a required option missing, or of the wrong type
        raise ValueError(f"transform {name}: {e}") from None


def build_sample_transforms(ops_cfg: list | None):
    """A Paddle `sample_transforms` list -> the package's Compose (fn(sample, rng))."""
    from jaxocr.data.transforms import Compose
    ops = []
    for name, kwargs in op_entries(ops_cfg):
        if name not in SAMPLE_OPS:
            raise ValueError(f"unknown sample transform {name!r}; known: {sorted(SAMPLE_OPS)}")
        ops.append(_build(name, kwargs, SAMPLE_OPS))
    return Compose(ops)


