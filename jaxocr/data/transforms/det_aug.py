"""IaaAugment: PaddleOCR 2.7's ppocr/data/imaug/iaa_augment.py, written with OpenCV (imgaug
breaks on NumPy 2): Fliplr / Flipud, Affine (rotate, scale; imgaug's centre and rotation
convention, bilinear, constant 0 border) and Resize (imgaug's size rules, bicubic), the polygons
transformed by the same geometry. Random numbers come from `rng`, so the draws are not imgaug's
stream.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from jaxocr.data.transforms.common import _image
from jaxocr.data.transforms.det_label import _as_polys


def _param(value, name: str):
    """imgaug's number-or-range rule: a number is fixed, a 2-list/tuple is Uniform(a, b).
    -> fn(rng) -> float."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"IaaAugment: {name} must be a number or [a, b], got {value!r}")
        a, b = float(value[0]), float(value[1])
        return lambda rng: float(rng.uniform(a, b))
    v = float(value)
    return lambda rng: v


class _Flip:
    def __init__(self, p=1.0, axis=1):
        self.p, self.axis = float(p), axis

    def sample(self, rng, h, w):
        return bool(rng.random() < self.p)

    def apply(self, img, polys, flip):
        if not flip:
            return img, polys
        h, w = img.shape[:2]
        polys = polys.copy()
        if self.axis == 1:  # imgaug 0.4 flips keypoints as width - x
            img = img[:, ::-1]
            polys[..., 0] = w - polys[..., 0]
        else:
            img = img[::-1]
            polys[..., 1] = h - polys[..., 1]
        return np.ascontiguousarray(img), polys


class _Affine:
    """imgaug Affine (rotate in degrees, scale), fit_output False, order 1, cval 0, constant
    mode: the matrix of imgaug's to_matrix, centre (w/2 - 0.5, h/2 - 0.5), skimage's rotation
    (positive degrees turn clockwise on screen)."""

    def __init__(self, rotate=0.0, scale=1.0, order=1, cval=0, mode="constant"):
        self.rotate = _param(rotate, "Affine rotate")
        self.scale = _param(scale, "Affine scale")
        if order not in (0, 1, 3):
            raise ValueError(f"IaaAugment: Affine order must be 0, 1 or 3, got {order!r}")
        if mode != "constant":
            raise ValueError(f"IaaAugment: only Affine mode 'constant' is supported, got {mode!r}")
        self.flags = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}[order]
        self.cval = cval

    def sample(self, rng, h, w):
        s = self.scale(rng)
        r = self.rotate(rng)
        cx, cy = w / 2.0 - 0.5, h / 2.0 - 0.5
        t = math.radians(r)
        c, si = math.cos(t) * s, math.sin(t) * s
        # to_center @ [[c, -s], [s, c]] @ to_topleft
        return np.array([[c, -si, cx - c * cx + si * cy],
                         [si, c, cy - si * cx - c * cy]], np.float64)

    def apply(self, img, polys, m):
        h, w = img.shape[:2]
        out = cv2.warpAffine(img, m, (w, h), flags=self.flags, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(self.cval,) * 4)
        if out.ndim == 2:
            out = out[:, :, None]
        pts = polys @ m[:, :2].T + m[:, 2]
        return out, pts


class _Resize:
    """imgaug Resize: a float (or a range with a float) is a factor of both sides (one draw
    for both), an int (or int range) an absolute side; new side int(round(side * f));
    interpolation cubic by default."""

    def __init__(self, size, interpolation="cubic"):
        if isinstance(size, dict):
            raise ValueError("IaaAugment: Resize size as a dict is not supported")
        self.relative = (isinstance(size, float) or (isinstance(size, (list, tuple)) and
                         any(isinstance(v, float) for v in size)))
        if isinstance(size, (list, tuple)):
            if len(size) != 2:
                raise ValueError(f"IaaAugment: Resize size must be a number or [a, b], "
                                 f"got {size!r}")
            a, b = size
            if self.relative:
                self.draw = lambda rng: float(rng.uniform(float(a), float(b)))
            else:
                self.draw = lambda rng: int(rng.integers(int(a), int(b) + 1))
        else:
            v = float(size) if self.relative else int(size)
            self.draw = lambda rng: v
        inter = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR,
                 "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}
        if interpolation not in inter:
            raise ValueError(f"IaaAugment: Resize interpolation must be one of {sorted(inter)}")
        self.interpolation = inter[interpolation]

    def sample(self, rng, h, w):
        v = self.draw(rng)
        if self.relative:
            return max(1, int(np.round(h * v))), max(1, int(np.round(w * v)))
        return int(v), int(v)

    def apply(self, img, polys, hw):
        nh, nw = hw
        h, w = img.shape[:2]
        out = cv2.resize(img, (nw, nh), interpolation=self.interpolation)
        if out.ndim == 2:
            out = out[:, :, None]
        pts = polys * np.array([nw / w, nh / h])
        return out, pts


_AUGMENTERS = {
    "Fliplr": lambda p=1.0: _Flip(p, axis=1),
    "Flipud": lambda p=1.0: _Flip(p, axis=0),
    "Affine": _Affine,
    "Resize": _Resize,
}

DEFAULT_AUGMENTERS = [{"type": "Fliplr", "args": {"p": 0.5}},
                      {"type": "Affine", "args": {"rotate": [-10, 10]}},
                      {"type": "Resize", "args": {"size": [0.5, 3]}}]


def _build_augmenter(entry):
    if isinstance(entry, dict):
        name, args, pos = entry.get("type"), dict(entry.get("args") or {}), []
    elif isinstance(entry, (list, tuple)) and entry:
        name, args, pos = entry[0], {}, list(entry[1:])  # imgaug's ['Fliplr', 0.5] form
    else:
        raise ValueError(f"IaaAugment: unknown augmenter entry {entry!r}")
    if name not in _AUGMENTERS:
        raise ValueError(f"IaaAugment: augmenter {name!r} is not supported; supported: "
                         f"{sorted(_AUGMENTERS)}")
    try:
        return _AUGMENTERS[name](*pos, **args)
    except TypeError as e:
        raise ValueError(f"IaaAugment: {name}: {e}") from None


class IaaAugment:
    """PaddleOCR IaaAugment (`augmenter_args`: a list of {type, args} or [type, *args];
    default Fliplr 0.5, Affine rotate [-10, 10], Resize size [0.5, 3]) applied in sequence to
    the image and the same geometry to `polys` (-> float64 (N, P, 2)). An empty list is the
    identity."""

    random = True

    def __init__(self, augmenter_args=None, **kwargs):
        if augmenter_args is None:
            augmenter_args = DEFAULT_AUGMENTERS
        self.augmenters = [_build_augmenter(a) for a in augmenter_args]

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        img = _image(data, "IaaAugment")
        if not self.augmenters:
            return data
        polys = _as_polys(data.get("polys", np.zeros((0, 0, 2))))
        polys = polys.astype(np.float64)
        for aug in self.augmenters:
            h, w = img.shape[:2]
            img, polys = aug.apply(img, polys, aug.sample(rng, h, w))
        data["image"] = np.ascontiguousarray(img)
        data["polys"] = polys
        return data
