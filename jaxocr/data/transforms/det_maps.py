"""MakeBorderMap / MakeShrinkMap: PaddleOCR 2.7's ppocr/data/imaug/make_border_map.py and
make_shrink_map.py (DB's threshold and probability targets).

MakeBorderMap computes PaddleOCR's `_distance` formula (bit-for-bit the same float64 arithmetic,
`paddle_segment_distance`) only in a window of each edge (its bounding box grown by the offset
distance + 1), not over the whole polygon box for every edge: outside that window the clipped
distance is 1 and changes nothing, so the map is identical and several times cheaper.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon

from jaxocr.data.transforms.common import BadSample, _image
from jaxocr.data.transforms.det_label import _as_polys


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
