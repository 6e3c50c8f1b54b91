"""PaddleOCR 2.7 DB text-detection transform ops (ppocr/data/imaug: label_ops.DetLabelEncode,
iaa_augment.IaaAugment, random_crop_data.EastRandomCropData, make_border_map.MakeBorderMap,
make_shrink_map.MakeShrinkMap, operators.NormalizeImage / ToCHWImage / DetResizeForTest).

Same calling convention as the recognition ops in jaxocr/data/transforms.py: each op is a class,
`op(data: dict, rng: np.random.Generator) -> dict`; every random choice is drawn from `rng`; a
sample PaddleOCR would drop (its op returns None or raises, and SimpleDataSet draws another)
raises `BadSample`. `DET_OPS` maps each name to (factory(kwargs, charset, global_cfg), accepted
option names), the layout of transforms.OPS, so the two can be merged.

The train pipeline of det_mv3_db.yml:

    DecodeImage -> DetLabelEncode -> IaaAugment -> EastRandomCropData -> MakeBorderMap
        -> MakeShrinkMap -> NormalizeImage -> ToCHWImage -> KeepKeys

Differences from PaddleOCR, all deliberate:
- IaaAugment is written with OpenCV (imgaug breaks on NumPy 2): Fliplr / Flipud, Affine
  (rotate, scale; imgaug's centre and rotation convention, bilinear, constant 0 border) and
  Resize (imgaug's size rules, bicubic), the polygons transformed by the same geometry. Random
  numbers come from `rng`, so the draws are not imgaug's stream.
- NormalizeImage keeps the image uint8 (it is normalised on the device, like the rec images)
  and records mean/std/scale in `data["norm"]`; `normalize()` is the numpy reference of
  PaddleOCR's arithmetic. ToCHWImage is a no-op: JAX is NHWC.
- MakeBorderMap computes PaddleOCR's `_distance` formula (bit-for-bit the same float64
  arithmetic) only in a window of each edge (its bounding box grown by the offset distance + 1),
  not over the whole polygon box for every edge: outside that window the clipped distance is 1
  and changes nothing, so the map is identical and several times cheaper.
- polys come out as float arrays (N, P, 2) with N possibly 0 (PaddleOCR: `np.array([])`),
  ignore_tags as bool arrays.
"""
from __future__ import annotations

import json
import math
from typing import Callable

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon

from jaxocr.data.transforms import BadSample


def _as_polys(polys) -> np.ndarray:
    """polys (list or array) -> float array (N, P, 2); an empty list -> (0, 0, 2)."""
    arr = np.asarray(polys)
    if arr.size == 0:
        return np.zeros((0, 0, 2), np.float64)
    if arr.dtype == object or arr.ndim != 3 or arr.shape[2] != 2:
        raise BadSample(f"polys must be (N, P, 2), got {arr.shape}")
    return arr if arr.dtype.kind == "f" else arr.astype(np.float64)


def _image(data: dict, op: str) -> np.ndarray:
    img = data.get("image")
    if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[0] > 0
            and img.shape[1] > 0):
        raise BadSample(f"{op} needs a decoded HxWxC image (DecodeImage first, "
                        f"channel_first: false), got {getattr(img, 'shape', type(img))}")
    return img


# ----------------------------------------------------------------------------------------------
class DetLabelEncode:
    """`label`: JSON `[{"transcription": str, "points": [[x, y], ...]}, ...]` ->
    `polys` float32 (N, P, 2) (shorter polygons repeat their last point up to the longest, as
    PaddleOCR's expand_points_num), `texts` (list of str), `ignore_tags` bool (N,) (True for
    the transcriptions `###` and `*`). An empty list raises BadSample (PaddleOCR returns None);
    so does a label that is not such JSON."""

    IGNORE = ("*", "###")

    def __call__(self, data: dict, rng=None) -> dict:
        try:
            label = json.loads(data["label"])
            boxes = [list(item["points"]) for item in label]
            texts = [item["transcription"] for item in label]
        except (KeyError, TypeError, ValueError) as e:
            raise BadSample(f"detection label is not PaddleOCR's JSON list: {e}") from None
        if not boxes:
            raise BadSample("detection label has no polygon")
        n = max(len(b) for b in boxes)
        if min(len(b) for b in boxes) == 0:
            raise BadSample("detection label has a polygon without points")
        boxes = [b + [b[-1]] * (n - len(b)) for b in boxes]
        try:
            polys = np.array(boxes, dtype=np.float32)
        except ValueError as e:
            raise BadSample(f"detection label points are not [x, y] pairs: {e}") from None
        if polys.ndim != 3 or polys.shape[2] != 2:
            raise BadSample(f"detection label points are not [x, y] pairs ({polys.shape})")
        data["polys"] = polys
        data["texts"] = texts
        data["ignore_tags"] = np.array([t in self.IGNORE for t in texts], dtype=np.bool_)
        return data


# ----------------------------------------------------------------------------------------------
# IaaAugment: imgaug's Fliplr / Flipud / Affine / Resize with OpenCV.

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


# ----------------------------------------------------------------------------------------------
# EastRandomCropData

def _split_regions(axis: np.ndarray) -> list:
    """PaddleOCR's split_regions: the runs of consecutive values, *without the last run* (its
    loop only closes a run when the next one starts)."""
    if axis.shape[0] < 2:
        return []
    breaks = np.nonzero(np.diff(axis) != 1)[0] + 1
    return np.split(axis, breaks)[:-1] if len(breaks) else []


def _random_select(axis, max_size, rng):
    xx = rng.choice(axis, size=2)
    lo = int(np.clip(xx.min(), 0, max_size - 1))
    hi = int(np.clip(xx.max(), 0, max_size - 1))
    return lo, hi


def _region_wise_random_select(regions, rng):
    picks = rng.integers(len(regions), size=2)
    vals = [int(rng.choice(regions[i])) for i in picks]
    return min(vals), max(vals)


def _outside(mins, maxs, x, y, w, h) -> np.ndarray:
    """is_poly_outside_rect for each polygon, from their (N, 2) min and max corners."""
    return ((maxs[:, 0] < x) | (mins[:, 0] > x + w) | (maxs[:, 1] < y) | (mins[:, 1] > y + h))


def crop_area(h: int, w: int, care_polys: np.ndarray, min_crop_side_ratio: float,
              max_tries: int, rng: np.random.Generator):
    """PaddleOCR's crop_area on an h x w image: (x, y, w, h) of a crop whose sides lie in rows /
    columns no (rounded) care polygon's extent covers, at least min_crop_side_ratio of each side,
    touching at least one care polygon; max_tries draws, else the whole image."""
    h_array = np.zeros(h, np.int32)
    w_array = np.zeros(w, np.int32)
    if len(care_polys):
        pts = np.round(care_polys, decimals=0).astype(np.int32)
        lo, hi = pts.min(axis=1), pts.max(axis=1)
        for (x0, y0), (x1, y1) in zip(lo.tolist(), hi.tolist()):
            w_array[x0:x1] = 1  # Python slices, negative starts included, as PaddleOCR
            h_array[y0:y1] = 1
    h_axis = np.where(h_array == 0)[0]
    w_axis = np.where(w_array == 0)[0]
    if len(h_axis) == 0 or len(w_axis) == 0:
        return 0, 0, w, h
    h_regions = _split_regions(h_axis)
    w_regions = _split_regions(w_axis)
    mins = care_polys.min(axis=1) if len(care_polys) else np.zeros((0, 2))
    maxs = care_polys.max(axis=1) if len(care_polys) else np.zeros((0, 2))
    for _ in range(max_tries):
        if len(w_regions) > 1:
            xmin, xmax = _region_wise_random_select(w_regions, rng)
        else:
            xmin, xmax = _random_select(w_axis, w, rng)
        if len(h_regions) > 1:
            ymin, ymax = _region_wise_random_select(h_regions, rng)
        else:
            ymin, ymax = _random_select(h_axis, h, rng)
        if xmax - xmin < min_crop_side_ratio * w or ymax - ymin < min_crop_side_ratio * h:
            continue
        if (~_outside(mins, maxs, xmin, ymin, xmax - xmin, ymax - ymin)).any():
            return xmin, ymin, xmax - xmin, ymax - ymin
    return 0, 0, w, h


class EastRandomCropData:
    """PaddleOCR EastRandomCropData: crop_area over the care (not ignored) polygons, then the
    crop resized by s = min(size[0]/crop_w, size[1]/crop_h) to int(crop_w*s) x int(crop_h*s)
    (bilinear) into the top-left of a zero size[1] x size[0] canvas (`size` is [w, h]);
    polygons moved and scaled by s, those entirely outside the resized crop dropped (texts and
    ignore_tags with them).

    keep_ratio false resizes the crop to `size` but, as PaddleOCR 2.7, still scales the
    polygons by s (its configs all use keep_ratio true)."""

    random = True

    def __init__(self, size=(640, 640), max_tries=10, min_crop_side_ratio=0.1,
                 keep_ratio=True, **kwargs):
        self.size = [int(v) for v in size]
        if len(self.size) != 2:
            raise ValueError(f"EastRandomCropData: size must be [w, h], got {size!r}")
        self.max_tries = int(max_tries)
        self.min_crop_side_ratio = float(min_crop_side_ratio)
        self.keep_ratio = bool(keep_ratio)

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        img = _image(data, "EastRandomCropData")
        polys = _as_polys(data["polys"])
        tags = np.asarray(data["ignore_tags"], dtype=np.bool_).reshape(-1)
        texts = list(data.get("texts", [""] * len(polys)))
        ih, iw = img.shape[:2]
        care = polys[~tags] if len(polys) else polys
        cx, cy, cw, ch = crop_area(ih, iw, care, self.min_crop_side_ratio, self.max_tries, rng)
        scale = min(self.size[0] / cw, self.size[1] / ch)
        h, w = int(ch * scale), int(cw * scale)
        crop = img[cy:cy + ch, cx:cx + cw]
        if self.keep_ratio:
            out = np.zeros((self.size[1], self.size[0], img.shape[2]), img.dtype)
            resized = cv2.resize(crop, (w, h))
            out[:h, :w] = resized.reshape(h, w, -1)
        else:
            out = cv2.resize(crop, tuple(self.size)).reshape(self.size[1], self.size[0], -1)
        if len(polys):
            moved = (polys - np.array([cx, cy], np.float64)) * scale
            keep = ~_outside(moved.min(axis=1), moved.max(axis=1), 0, 0, w, h)
            polys, tags = moved[keep], tags[keep]
            texts = [t for t, k in zip(texts, keep) if k]
        data["image"] = out
        data["polys"] = polys if len(polys) else np.zeros((0,) + polys.shape[1:], np.float64)
        data["ignore_tags"] = tags
        data["texts"] = texts
        return data


# ----------------------------------------------------------------------------------------------
# MakeBorderMap / MakeShrinkMap

def _epoch_ratio(shrink_ratio, kwargs):
    if "total_epoch" in kwargs and "epoch" in kwargs:
        return shrink_ratio + 0.2 * kwargs["epoch"] / float(kwargs["total_epoch"])
    return shrink_ratio


def _offset(polygon: np.ndarray, distance: float) -> list:
    pco = pyclipper.PyclipperOffset()
    pco.AddPath([tuple(p) for p in polygon], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return pco.Execute(distance)


def paddle_segment_distance(xs, ys, p1, p2):
    """PaddleOCR's MakeBorderMap._distance, the same float64 operations: the perpendicular
    distance to the line p1p2 where the pixel sees the segment at an obtuse angle, else the
    distance to the nearer end. xs (1, W) and ys (H, 1) broadcast to (H, W)."""
    sd1 = np.square(xs - p1[0]) + np.square(ys - p1[1])
    sd2 = np.square(xs - p2[0]) + np.square(ys - p2[1])
    sd = np.square(p1[0] - p2[0]) + np.square(p1[1] - p2[1])
    # in place, each step the same IEEE operation as PaddleOCR's expression:
    # cosin = (sd - sd1 - sd2) / (2 * sqrt(sd1 * sd2)); result = sqrt(sd1 * sd2 * sin^2 / sd)
    with np.errstate(divide="ignore", invalid="ignore"):
        prod = sd1 * sd2
        cosin = sd - sd1
        cosin -= sd2
        den = np.sqrt(prod)
        den *= 2
        cosin /= den
        sin2 = np.square(cosin, out=den)
        np.subtract(1, sin2, out=sin2)
        np.nan_to_num(sin2, copy=False)
        prod *= sin2
        prod /= sd
        result = np.sqrt(prod, out=prod)
        near = np.sqrt(np.fmin(sd1, sd2, out=sd1), out=sd1)
    np.copyto(result, near, where=cosin < 0)
    return result


class MakeBorderMap:
    """PaddleOCR MakeBorderMap: `threshold_map` float32 (H, W) = canvas * (thresh_max -
    thresh_min) + thresh_min and `threshold_mask` float32 (H, W), where for each care polygon
    (area > 0) the polygon dilated by D = area * (1 - r^2) / perimeter (pyclipper, round joins)
    is filled into the mask and 1 - min over edges of clip(distance / D, 0, 1) is max-combined
    into the canvas over the dilated polygon's box. Each edge's distance is computed only in
    its window (edge box grown by D + 1): the same map as PaddleOCR's per-box computation."""

    def __init__(self, shrink_ratio=0.4, thresh_min=0.3, thresh_max=0.7, **kwargs):
        self.shrink_ratio = _epoch_ratio(shrink_ratio, kwargs)
        self.thresh_min = thresh_min
        self.thresh_max = thresh_max

    def __call__(self, data: dict, rng=None) -> dict:
        img = _image(data, "MakeBorderMap")
        polys = _as_polys(data["polys"])
        tags = np.asarray(data["ignore_tags"], dtype=np.bool_).reshape(-1)
        canvas = np.zeros(img.shape[:2], np.float32)
        mask = np.zeros(img.shape[:2], np.float32)
        for i in range(len(polys)):
            if not tags[i]:
                self.draw_border_map(polys[i], canvas, mask)
        data["threshold_map"] = canvas * (self.thresh_max - self.thresh_min) + self.thresh_min
        data["threshold_mask"] = mask
        return data

    def draw_border_map(self, polygon, canvas, mask):
        polygon = np.array(polygon)
        shape = Polygon(polygon)
        if shape.area <= 0:
            return
        distance = shape.area * (1 - np.power(self.shrink_ratio, 2)) / shape.length
        padded = _offset(polygon, distance)
        if not padded:
            return
        padded = np.array(padded[0])
        cv2.fillPoly(mask, [padded.astype(np.int32)], 1.0)
        xmin, xmax = int(padded[:, 0].min()), int(padded[:, 0].max())
        ymin, ymax = int(padded[:, 1].min()), int(padded[:, 1].max())
        width, height = xmax - xmin + 1, ymax - ymin + 1
        local = polygon.copy()  # in its own dtype, as PaddleOCR shifts it in place
        local[:, 0] = local[:, 0] - xmin
        local[:, 1] = local[:, 1] - ymin
        dmap = np.ones((height, width), np.float32)
        margin = distance + 1.0
        n = local.shape[0]
        for i in range(n):
            p1, p2 = local[i], local[(i + 1) % n]
            x0 = max(0, int(math.floor(min(p1[0], p2[0]) - margin)))
            x1 = min(width - 1, int(math.ceil(max(p1[0], p2[0]) + margin)))
            y0 = max(0, int(math.floor(min(p1[1], p2[1]) - margin)))
            y1 = min(height - 1, int(math.ceil(max(p1[1], p2[1]) + margin)))
            if x0 > x1 or y0 > y1:
                continue
            xs = np.arange(x0, x1 + 1, dtype=np.float64)[None, :]
            ys = np.arange(y0, y1 + 1, dtype=np.float64)[:, None]
            d = np.clip(paddle_segment_distance(xs, ys, p1, p2) / distance, 0, 1)
            win = dmap[y0:y1 + 1, x0:x1 + 1]
            np.minimum(win, d.astype(np.float32), out=win)  # NaN propagates, as .min(axis=0)
        H, W = canvas.shape
        xv0, xv1 = min(max(0, xmin), W - 1), min(max(0, xmax), W - 1)
        yv0, yv1 = min(max(0, ymin), H - 1), min(max(0, ymax), H - 1)
        src = dmap[yv0 - ymin:yv1 - ymax + height, xv0 - xmin:xv1 - xmax + width]
        dst = canvas[yv0:yv1 + 1, xv0:xv1 + 1]
        if src.shape != dst.shape:  # a box off the image: PaddleOCR fails on the broadcast
            raise BadSample(f"MakeBorderMap: dilated polygon box ({xmin},{ymin})-({xmax},"
                            f"{ymax}) is outside the {W}x{H} image")
        np.fmax(1 - src, dst, out=dst)


def _polygon_area_paddle(polys: np.ndarray) -> np.ndarray:
    """MakeShrinkMap.polygon_area for each polygon: sum over points of p.x*q.y - p.y*q.x with q
    the previous point, / 2 (positive for counter-clockwise on screen), summed in order."""
    q = np.roll(polys, 1, axis=1)
    terms = polys[..., 0] * q[..., 1] - polys[..., 1] * q[..., 0]
    return np.cumsum(terms, axis=1)[:, -1] / 2.0 if polys.shape[1] else np.zeros(len(polys))


class MakeShrinkMap:
    """PaddleOCR MakeShrinkMap: polygons clipped to the image (in place: `polys` comes out
    clipped, and reversed where clockwise, as PaddleOCR's validate_polygons leaves them); area
    < 1 -> ignored. `shrink_map` float32 (H, W): each care polygon with min side >=
    min_text_size, shrunk by D = area * (1 - r^2) / perimeter with pyclipper (round joins),
    filled with 1; r runs over np.arange(shrink_ratio, 1, shrink_ratio) ([0.4, 0.8]) until the
    shrink is one polygon (the last result is used otherwise; an empty one ignores the
    polygon). `shrink_mask` float32 (H, W): 1, with ignored / too small polygons filled 0.
    `ignore_tags` comes out with those polygons set."""

    def __init__(self, min_text_size=8, shrink_ratio=0.4, **kwargs):
        self.min_text_size = min_text_size
        self.shrink_ratio = _epoch_ratio(shrink_ratio, kwargs)

    def validate_polygons(self, polys, tags, h, w):
        if len(polys) == 0:
            return polys, tags
        polys = polys.copy()
        polys[..., 0] = np.clip(polys[..., 0], 0, w - 1)
        polys[..., 1] = np.clip(polys[..., 1], 0, h - 1)
        area = _polygon_area_paddle(polys)
        tags = tags | (np.abs(area) < 1)
        flip = area > 0
        polys[flip] = polys[flip][:, ::-1]
        return polys, tags

    def __call__(self, data: dict, rng=None) -> dict:
        img = _image(data, "MakeShrinkMap")
        h, w = img.shape[:2]
        polys = _as_polys(data["polys"])
        tags = np.asarray(data["ignore_tags"], dtype=np.bool_).reshape(-1).copy()
        polys, tags = self.validate_polygons(polys, tags, h, w)
        gt = np.zeros((h, w), np.float32)
        mask = np.ones((h, w), np.float32)
        ratios = np.arange(self.shrink_ratio, 1, self.shrink_ratio)
        for i in range(len(polys)):
            polygon = polys[i]
            ph = polygon[:, 1].max() - polygon[:, 1].min()
            pw = polygon[:, 0].max() - polygon[:, 0].min()
            if tags[i] or min(ph, pw) < self.min_text_size:
                cv2.fillPoly(mask, polygon.astype(np.int32)[np.newaxis], 0)
                tags[i] = True
                continue
            shape = Polygon(polygon)
            pco = pyclipper.PyclipperOffset()
            pco.AddPath([tuple(p) for p in polygon], pyclipper.JT_ROUND,
                        pyclipper.ET_CLOSEDPOLYGON)
            shrunk = []
            for ratio in ratios:
                distance = shape.area * (1 - np.power(ratio, 2)) / shape.length
                shrunk = pco.Execute(-distance)
                if len(shrunk) == 1:
                    break
            if not shrunk:
                cv2.fillPoly(mask, polygon.astype(np.int32)[np.newaxis], 0)
                tags[i] = True
                continue
            for piece in shrunk:
                cv2.fillPoly(gt, [np.array(piece).reshape(-1, 2).astype(np.int32)], 1)
        data["polys"] = polys
        data["ignore_tags"] = tags
        data["shrink_map"] = gt
        data["shrink_mask"] = mask
        return data


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


# ----------------------------------------------------------------------------------------------
# DetResizeForTest and fixed-shape eval padding

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


def pad_polygons(polys, ignore_tags, max_polys: int, max_points: int | None = None):
    """Fixed-shape polygons for a batch: (max_polys, max_points, 2) float32 (zeros past the
    end; a polygon with fewer points repeats its last), ignore_tags bool (max_polys,) and a
    valid mask bool (max_polys,). Polygons past max_polys are dropped."""
    polys = _as_polys(polys)
    tags = np.asarray(ignore_tags, np.bool_).reshape(-1)
    n = min(len(polys), max_polys)
    p = polys.shape[1] if max_points is None else int(max_points)
    out = np.zeros((max_polys, p, 2), np.float32)
    if n and polys.shape[1]:
        src = polys[:n, :p]
        out[:n, :src.shape[1]] = src
        out[:n, src.shape[1]:] = src[:, -1:]
    tag_out = np.zeros(max_polys, np.bool_)
    tag_out[:n] = tags[:n]
    valid = np.zeros(max_polys, np.bool_)
    valid[:n] = True
    return out, tag_out, valid


# ----------------------------------------------------------------------------------------------
# name -> (factory(kwargs, charset, global_cfg), accepted option names): merge into
# transforms.OPS. The Global options PaddleOCR merges into every op are not passed here.
_RATIO_EPOCH = {"total_epoch", "epoch"}

DET_OPS: dict[str, tuple[Callable, set[str]]] = {
    "DetLabelEncode": (lambda kw, c, g: DetLabelEncode(), set()),
    "IaaAugment": (lambda kw, c, g: IaaAugment(**kw), {"augmenter_args"}),
    "EastRandomCropData": (lambda kw, c, g: EastRandomCropData(**kw),
                           {"size", "max_tries", "min_crop_side_ratio", "keep_ratio"}),
    "MakeBorderMap": (lambda kw, c, g: MakeBorderMap(**kw),
                      {"shrink_ratio", "thresh_min", "thresh_max"} | _RATIO_EPOCH),
    "MakeShrinkMap": (lambda kw, c, g: MakeShrinkMap(**kw),
                      {"shrink_ratio", "min_text_size"} | _RATIO_EPOCH),
    "NormalizeImage": (lambda kw, c, g: NormalizeImage(**kw), {"scale", "mean", "std", "order"}),
    "ToCHWImage": (lambda kw, c, g: ToCHWImage(), set()),
    "DetResizeForTest": (lambda kw, c, g: DetResizeForTest(**kw),
                         {"image_shape", "keep_ratio", "limit_side_len", "limit_type",
                          "resize_long"}),
    "DetPadToBucket": (lambda kw, c, g: DetPadToBucket(**kw), {"buckets"}),
}
