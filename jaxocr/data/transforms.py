"""PaddleOCR recognition transform ops, configured by the YAML `transforms:` list.

    build_transforms([{'DecodeImage': {'img_mode': 'BGR', 'channel_first': False}},
                      {'RecAug': None}, {'CTCLabelEncode': None},
                      {'RecResizeImg': {'image_shape': [3, 32, 100]}},
                      {'KeepKeys': {'keep_keys': ['image', 'label', 'length']}}],
                     charset, global_cfg)   ->   fn(sample: dict, rng: np.random.Generator) -> dict

Every random choice comes from the `rng` passed in (the pipeline seeds it per sample), so a
sample's augmentation is reproducible whatever the worker layout. Differences from PaddleOCR:
images leave RecResizeImg as uint8 HWC zero-padded on the right with their `valid_width` (JAX is
NHWC; jaxocr/data/device_norm.py normalises them to PaddleOCR's floats on the device), and a
sample that cannot be used
raises `BadSample` (the pipeline substitutes another and counts it) instead of returning None.
`tia_distort` / `tia_stretch` / `tia_perspective` are computed with vectorised `cv2.remap` /
`cv2.warpPerspective` from the same random control points, not with PaddleOCR's
moving-least-squares warp.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import cv2
import numpy as np

from jaxocr.data.charset import CharacterDict


class BadSample(Exception):
    """A sample that cannot be used (unreadable image, unencodable label, ...)."""


def _check_options(op: str, kwargs: dict, known: set[str]):
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"transform {op}: unknown option(s) {unknown}; known: {sorted(known)}")


# ----------------------------------------------------------------------------------------------
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
        where = f" ({data['img_path']})" if "img_path" in data else ""
        raw = data.pop("image_bytes", None)
        if raw is None and isinstance(data.get("image"), (bytes, bytearray, memoryview)):
            raw = data["image"]
        if raw is not None:
            if len(raw) == 0:
                raise BadSample(f"empty image file{where}")
            img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), self.flags)
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
        if self.img_mode == "RGB":
            img = img[:, :, ::-1]
        elif self.img_mode == "GRAY":
            img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        if self.channel_first:
            img = img.transpose(2, 0, 1)
        data["image"] = np.ascontiguousarray(img)
        return data


# ----------------------------------------------------------------------------------------------
# RecAug: PaddleOCR's ppocr/data/imaug/rec_img_aug.py (RecAug + BaseDataAugmentation), with the
# TIA warps of text_image_aug/augment.py. All randomness from `rng`.

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
        img = data["image"]
        if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3):
            raise BadSample("RecAug needs a decoded HxWx3 image (put DecodeImage first, "
                            "channel_first: false)")
        data["image"] = np.ascontiguousarray(self.augment(img, rng))
        return data


# ----------------------------------------------------------------------------------------------
class CTCLabelEncode:
    """label str -> int32 ids padded with 0 (blank) to Global.max_text_length, plus `length`.

    Encodes as PaddleOCR 2.7's CTCLabelEncode (`CharacterDict.encode_label`): characters outside
    the dictionary are skipped (`unknown_chars="drop"` rejects the label instead); an empty
    label, one longer than max_text_length as written, or one with no character left raises
    BadSample. The sources apply the same rule when they are built, so in training this only
    sees labels that pass it."""

    def __init__(self, charset: CharacterDict, max_text_length: int, unknown_chars: str = "skip"):
        self.charset = charset
        self.max_text_length = int(max_text_length)
        self.unknown_chars = unknown_chars
        charset.encode_label("", 0, unknown_chars)  # validates the mode

    def __call__(self, data: dict, rng=None) -> dict:
        text = data["label"]
        ids, problem = self.charset.encode_label(text, self.max_text_length, self.unknown_chars)
        if problem == "empty":
            raise BadSample("empty label")
        if problem == "too_long":
            raise BadSample(f"label {text!r} is longer than max_text_length "
                            f"{self.max_text_length}")
        if problem is not None:
            bad = "".join(sorted(self.charset.unknown_chars(text)))
            left = "no character is left" if self.unknown_chars == "skip" else "dropped"
            raise BadSample(f"label {text!r} has characters outside the dictionary: {bad!r} "
                            f"({left})")
        label = np.zeros(self.max_text_length, np.int32)
        label[:len(ids)] = ids
        data["label"] = label
        data["length"] = np.int32(len(ids))
        return data

    def blank(self, data: dict) -> dict:
        """A masked row's label: all blank, length 0."""
        data["label"] = np.zeros(self.max_text_length, np.int32)
        data["length"] = np.int32(0)
        return data


# ----------------------------------------------------------------------------------------------
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


_LOGGED: set = set()


def _log_once(msg: str, *args):
    """One info line per process for each distinct message."""
    key = msg % args
    if key not in _LOGGED:
        _LOGGED.add(key)
        logging.getLogger("jaxocr").info(msg, *args)


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


# ----------------------------------------------------------------------------------------------
LABEL_KEYS = ("label", "length")


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
# name -> (factory(kwargs, charset, global_cfg), accepted option names)
def _decode(kw, charset, g):
    return DecodeImage(**kw)


def _ctc(kw, charset, g):
    # PaddleOCR merges Global into every op's options; Global.max_text_length wins
    return CTCLabelEncode(charset, g.get("max_text_length", kw.get("max_text_length", 25)))


OPS: dict[str, tuple[Callable, set[str]]] = {
    "DecodeImage": (_decode, {"img_mode", "channel_first", "ignore_orientation"}),
    "RecAug": (lambda kw, c, g: RecAug(**kw),
               {"tia_prob", "crop_prob", "reverse_prob", "noise_prob", "jitter_prob",
                "blur_prob", "hsv_aug_prob", "use_tia", "aug_prob", "hsv_delta", "noise_var"}),
    "CTCLabelEncode": (_ctc, {"max_text_length", "character_dict_path", "use_space_char"}),
    "RecResizeImg": (lambda kw, c, g: RecResizeImg(**kw),
                     {"image_shape", "padding", "infer_mode", "character_dict_path",
                      "eval_mode"}),
    "SVTRRecResizeImg": (lambda kw, c, g: SVTRRecResizeImg(**kw), {"image_shape", "padding"}),
    "KeepKeys": (lambda kw, c, g: KeepKeys(**kw), {"keep_keys"}),
}


class Compose:
    """`random`: whether any op draws from the rng (the pipeline builds a generator per sample
    only then). `blank()`: the sample a masked row carries (zeros of every output key)."""

    def __init__(self, ops: list):
        self.ops = ops
        self.random = any(getattr(op, "random", False) for op in ops)

    def blank(self) -> dict:
        data: dict = {}
        for op in self.ops:
            if hasattr(op, "blank"):
                data = op.blank(data)
        return data

    def __call__(self, data: dict, rng: np.random.Generator | None = None) -> dict:
        if rng is None and self.random:
            rng = np.random.default_rng(0)
        data = dict(data)  # the source's dict is not modified
        for op in self.ops:
            data = op(data, rng)
        return data

    def __repr__(self) -> str:
        return f"Compose({[type(op).__name__ for op in self.ops]})"


def build_transforms(ops_cfg: list | None, charset: CharacterDict, global_cfg: dict | None = None,
                     infer: bool = False) -> Callable[[dict, np.random.Generator], dict]:
    """The YAML `transforms:` list -> fn(sample, rng) -> sample.

    infer=True drops the label ops (`*LabelEncode`) and label keys from KeepKeys, as
    PaddleOCR's infer_rec.py does.
    """
    g = global_cfg or {}
    ops = []
    for entry in ops_cfg or []:
        if isinstance(entry, str):
            entry = {entry: None}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(f"transforms: each entry must be {{OpName: {{options}}}}, "
                             f"got {entry!r}")
        (name, kwargs), = entry.items()
        if name not in OPS:
            raise ValueError(f"unknown transform op {name!r}; known: {sorted(OPS)}")
        kwargs = dict(kwargs or {})
        if infer and name.endswith("LabelEncode"):
            continue
        if infer and name == "KeepKeys":
            kwargs["keep_keys"] = [k for k in kwargs.get("keep_keys") or []
                                   if not _is_label_key(k)]
        factory, known = OPS[name]
        _check_options(name, kwargs, known)
        try:
            ops.append(factory(kwargs, charset, g))
        except TypeError as e:  # a required option missing
            raise ValueError(f"transform {name}: {e}") from None
    return Compose(ops)
