"""EastRandomCropData: PaddleOCR 2.7's ppocr/data/imaug/random_crop_data.py (crop_area,
split_regions, region-wise random select, then the crop scaled into a fixed canvas)."""
from __future__ import annotations

import cv2
import numpy as np

from jaxocr.data.transforms.common import _image
from jaxocr.data.transforms.det_label import _as_polys


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
