"""Ops and helpers both tasks use (PaddleOCR: ppocr/data/imaug/operators.py's DecodeImage,
KeepKeys, NormalizeImage, ToCHWImage).

Every op is a class, `op(data: dict, rng: np.random.Generator) -> dict`. A sample that cannot be
used raises `BadSample` (the pipeline substitutes another and counts it) where PaddleOCR's op
returns None and its SimpleDataSet draws another.

NormalizeImage keeps the image uint8 (it is normalised on the device, like the rec images) and
records mean/std/scale in `data["norm"]`; `normalize()` is the numpy reference of PaddleOCR's
arithmetic. ToCHWImage is a no-op: JAX is NHWC.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np

from jaxocr.config import ConfigError


class BadSample(Exception):
    """A sample that cannot be used (unreadable image, unencodable label, ...)."""


def _check_options(op: str, kwargs: dict, known: set[str]):
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"transform {op}: unknown option(s) {unknown}; known: {sorted(known)}")


def _image(data: dict, op: str) -> np.ndarray:
    img = data.get("image")
    if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[0] > 0
            and img.shape[1] > 0):
        raise BadSample(f"{op} needs a decoded HxWxC image (DecodeImage first, "
                        f"channel_first: false), got {getattr(img, 'shape', type(img))}")
    return img


_LOGGED: set = set()


def _log_once(msg: str, *args):
    """One info line per process for each distinct message."""
    key = msg % args
    if key not in _LOGGED:
        _LOGGED.add(key)
        logging.getLogger("jaxocr").info(msg, *args)


def op_entries(ops_cfg):
    """(name, options dict) of each entry of a `transforms:` list (`- Op: {...}` or `- Op`)."""
    for entry in ops_cfg or []:
        if isinstance(entry, str):
            entry = {entry: None}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(f"transforms: each entry must be {{OpName: {{options}}}}, "
                             f"got {entry!r}")
        (name, kwargs), = entry.items()
        yield name, dict(kwargs or {})


def decode_image(data: dict, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """The sample's image as uint8 HxWx3 BGR: `image_bytes` (or bytes in `image`) decoded, or
    an `image` array (grey / BGRA made BGR); BadSample, naming `img_path`, for anything else."""
    where = f" ({data['img_path']})" if "img_path" in data else ""
    raw = data.pop("image_bytes", None)
    if raw is None and isinstance(data.get("image"), (bytes, bytearray, memoryview)):
        raw = data["image"]
    if raw is not None:
        if len(raw) == 0:
            raise BadSample(f"empty image file{where}")
        img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), flags)
        if img is None:
            raise BadSample(f"image could not be decoded ({len(raw)} bytes){where}")
    else:
        img = data.get("image")
        if not isinstance(img, np.ndarray):
            raise BadSample(f"sample has no image{where}")
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif img.ndim != 3 or img.shape[2] not in (3, 4):
            raise BadSample(f"image has shape {img.shape}, expected HxWx3{where}")
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        if img.dtype != np.uint8:
            raise BadSample(f"image dtype {img.dtype}, expected uint8{where}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise BadSample(f"image is empty ({img.shape}){where}")
    return img


class DecodeImage:
    """`image_bytes` (or PaddleOCR-style bytes in `image`) -> uint8 HWC image; an `image` array
    passes through (converted to `img_mode`)."""

    def __init__(self, img_mode: str = "BGR", channel_first: bool = False,
                 ignore_orientation: bool = False):
        self.img_mode = str(img_mode).upper()
        if self.img_mode not in ("BGR", "RGB", "GRAY"):
            raise ValueError(f"DecodeImage: img_mode must be BGR, RGB or GRAY, got {img_mode!r}")
        self.channel_first = bool(channel_first)
        self.flags = cv2.IMREAD_COLOR | (cv2.IMREAD_IGNORE_ORIENTATION if ignore_orientation else 0)

    def __call__(self, data: dict, rng=None) -> dict:
        img = decode_image(data, self.flags)
        if self.img_mode == "RGB":
            img = img[:, :, ::-1]
        elif self.img_mode == "GRAY":
            img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        if self.channel_first:
            img = img.transpose(2, 0, 1)
        data["image"] = np.ascontiguousarray(img)
        return data


# what the label ops produce (rec: CTCLabelEncode; det: DetLabelEncode), dropped at inference
LABEL_KEYS = ("label", "length", "polys", "ignore_tags", "texts")


def _is_label_key(key: str) -> bool:
    return key in LABEL_KEYS or key.startswith("label_")


# Keys the pipeline needs whatever a config's KeepKeys lists (PaddleOCR's configs list only
# image/label/length): the device normalisation's valid width, the pipeline's row mask and count
# of unreadable samples.
INTERNAL_KEYS = ("valid_width", "mask", "bad")


class KeepKeys:
    """Keeps `keep_keys`, and always the pipeline's INTERNAL_KEYS that are present."""

    def __init__(self, keep_keys):
        if not keep_keys:
            raise ValueError("KeepKeys: keep_keys must be a non-empty list")
        self.keep_keys = list(keep_keys)

    def __call__(self, data: dict, rng=None) -> dict:
        missing = [k for k in self.keep_keys if k not in data]
        if missing:
            raise KeyError(f"KeepKeys: keys {missing} not produced by the transforms before it "
                           f"(have {sorted(data)})")
        out = {k: data[k] for k in self.keep_keys}
        for k in INTERNAL_KEYS:
            if k in data and k not in out:
                out[k] = data[k]
        return out

    def blank(self, data: dict) -> dict:
        return {k: data[k] for k in (*self.keep_keys, *INTERNAL_KEYS) if k in data}


# ----------------------------------------------------------------------------------------------
# NormalizeImage / ToCHWImage

def _norm_params(scale, mean, std):
    if isinstance(scale, str):  # PaddleOCR eval()s "1./255."; only plain arithmetic here
        if not all(c in "0123456789./ +-*e" for c in scale):
            raise ValueError(f"NormalizeImage: scale {scale!r} is not a number expression")
        scale = eval(scale, {"__builtins__": {}}, {})  # noqa: S307 (digits and operators only)
    scale = np.float32(scale if scale is not None else 1.0 / 255.0)
    mean = np.array(mean if mean is not None else [0.485, 0.456, 0.406]).astype(np.float32)
    std = np.array(std if std is not None else [0.229, 0.224, 0.225]).astype(np.float32)
    return scale, mean.reshape(-1), std.reshape(-1)


def normalize(image_u8: np.ndarray, mean, std, scale=1.0 / 255.0) -> np.ndarray:
    """PaddleOCR NormalizeImage (order hwc): (img.astype(float32) * float32(scale) - mean) /
    std, all float32. The reference for the device-side normalisation of NHWC batches (works
    on (..., H, W, C))."""
    s, m, d = _norm_params(scale, mean, std)
    return (np.asarray(image_u8).astype(np.float32) * s - m) / d


class NormalizeImage:
    """Identity on the image (uint8 HWC stays uint8: it is normalised on the device with
    `normalize`'s arithmetic); records `norm` = float32 (3, C) [mean, std, scale] in the sample
    and `mean` / `std` / `scale` on the op. `order` is accepted (PaddleOCR's det configs use
    hwc); images stay HWC either way."""

    def __init__(self, scale=None, mean=None, std=None, order="chw", **kwargs):
        self.scale, self.mean, self.std = _norm_params(scale, mean, std)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"NormalizeImage: mean {self.mean} and std {self.std} differ in "
                             f"length")
        self.order = order
        self.norm = np.stack([self.mean, self.std, np.full_like(self.mean, self.scale)])

    def __call__(self, data: dict, rng=None) -> dict:
        img = _image(data, "NormalizeImage")
        if img.shape[2] != self.mean.shape[0]:
            raise BadSample(f"NormalizeImage: image has {img.shape[2]} channels, mean/std "
                            f"{self.mean.shape[0]}")
        data["norm"] = self.norm
        return data


class ToCHWImage:
    """No-op: JAX convolutions here are NHWC, so images stay HWC (PaddleOCR transposes)."""

    def __init__(self, **kwargs):
        pass

    def __call__(self, data: dict, rng=None) -> dict:
        return data


def augment_image(data: dict, augment, rng, name: str) -> dict:
    """`data["image"]` (a decoded HxWx3 array) replaced by `augment(image, rng)`."""
    img = data["image"]
    if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3):
        raise BadSample(f"{name} needs a decoded HxWx3 image (put DecodeImage first, "
                        "channel_first: false)")
    data["image"] = np.ascontiguousarray(augment(img, rng))
    return data
