"""RecResizeImg / SVTRRecResizeImg: PaddleOCR's ppocr/data/imaug/rec_img_aug.py
(resize_norm_img and the ops that call it).

Unlike PaddleOCR, images leave RecResizeImg as uint8 HWC zero-padded on the right with their
`valid_width` (JAX is NHWC; jaxocr/data/device_norm.py normalises them to PaddleOCR's floats on
the device); `resize_norm_img` is the numpy reference of those floats.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from jaxocr.data.transforms.common import BadSample, _log_once


def _resized(img: np.ndarray, image_shape, padding: bool = True):
    """cv2-resized image (uint8 HxWxC, C from image_shape) and its width: PaddleOCR's
    resize_norm_img geometry, width min(ceil(H*w/h), W) (W without padding)."""
    c, H, W = (int(v) for v in image_shape)
    h, w = img.shape[:2]
    if padding:
        resized_w = max(1, min(W, int(math.ceil(H * w / float(h)))))
    else:
        resized_w = W
    resized = cv2.resize(img, (resized_w, H))  # bilinear, like PaddleOCR
    if c == 1:
        if resized.ndim == 3:
            resized = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)
        resized = resized[:, :, None]
    elif resized.ndim == 2:
        resized = cv2.cvtColor(resized, cv2.COLOR_GRAY2BGR)
    return resized, resized_w


def resize_norm_img(img: np.ndarray, image_shape, padding: bool = True):
    """PaddleOCR resize_norm_img, HWC out: keep aspect ratio with width
    min(ceil(H*w/h), W), scale to [-1, 1], zero-pad on the right. Returns (img, valid_ratio).

    The reference for the device-side normalisation (jaxocr/data/device_norm.py); the
    pipeline itself ships `resize_img`'s uint8 images."""
    c, H, W = (int(v) for v in image_shape)
    resized, resized_w = _resized(img, image_shape, padding)
    out = np.zeros((H, W, c), np.float32)
    resized = resized.astype(np.float32) / 255.0  # PaddleOCR's exact arithmetic
    resized -= 0.5
    resized /= 0.5
    out[:, :resized_w] = resized
    return out, np.float32(min(1.0, resized_w / W))


def resize_img(img: np.ndarray, image_shape, padding: bool = True):
    """resize_norm_img without the normalisation: uint8 HxWxC zero-padded on the right, and the
    resized width. `normalize_rec_images(image, valid_width)` on the device gives
    resize_norm_img's floats (a quarter of the bytes to ship)."""
    c, H, W = (int(v) for v in image_shape)
    resized, resized_w = _resized(img, image_shape, padding)
    if resized_w == W:
        return np.ascontiguousarray(resized), resized_w
    out = np.zeros((H, W, c), np.uint8)
    out[:, :resized_w] = resized
    return out, resized_w


class RecResizeImg:
    """image -> uint8 HxWxC (image_shape [C, H, W]) zero-padded on the right, `valid_width`
    (int32, the resized width) and `valid_ratio` (float32, valid_width / W).

    `eval_mode` / `infer_mode` (PaddleOCR 2.7: resize_norm_img_chinese) equal the padded resize
    for images up to W/H wide and widen the canvas past W for wider ones; batches here have one
    width, so they are the fixed-width resize (said once in the log)."""

    def __init__(self, image_shape, padding: bool = True, infer_mode: bool = False,
                 character_dict_path=None, eval_mode: bool = False):
        if len(image_shape) != 3:
            raise ValueError(f"RecResizeImg: image_shape must be [C, H, W], got {image_shape}")
        self.image_shape = [int(v) for v in image_shape]
        if self.image_shape[0] not in (1, 3):
            raise ValueError(f"RecResizeImg: C must be 1 or 3, got {self.image_shape[0]}")
        self.padding = bool(padding)
        for name, value in (("eval_mode", eval_mode), ("infer_mode", infer_mode)):
            if value:
                _log_once("%s: %s=true (PaddleOCR's resize_norm_img_chinese) is the fixed-width "
                          "resize to %s here: batches have one width, images wider than W/H "
                          "are squeezed to W", type(self).__name__, name, self.image_shape)

    def __call__(self, data: dict, rng=None) -> dict:
        img = data["image"]
        if not (isinstance(img, np.ndarray) and img.ndim in (2, 3) and img.shape[0] > 0
                and img.shape[1] > 0):
            raise BadSample(f"RecResizeImg needs a decoded HxWxC image, got "
                            f"{getattr(img, 'shape', type(img))}")
        image, width = resize_img(img, self.image_shape, self.padding)
        data["image"] = image
        data["valid_width"] = np.int32(width)
        data["valid_ratio"] = np.float32(min(1.0, width / self.image_shape[2]))
        return data

    def blank(self, data: dict) -> dict:
        """The keys this op adds, for a masked row: a zero image of the configured shape."""
        c, h, w = self.image_shape
        data["image"] = np.zeros((h, w, c), np.uint8)
        data["valid_width"] = np.int32(0)
        data["valid_ratio"] = np.float32(0)
        return data


class SVTRRecResizeImg(RecResizeImg):
    """PaddleOCR's SVTRRecResizeImg: the same resize (rec_svtrnet.yml: padding False)."""
