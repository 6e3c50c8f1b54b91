"""DBPostProcess as PaddleOCR 2.7's (`ppocr/postprocess/db_postprocess.py`), on the host.

Per image: bitmap = prob > thresh (optionally dilated by a 2×2 kernel); the contours of the
bitmap (OpenCV, RETR_LIST, CHAIN_APPROX_SIMPLE), the first `max_candidates` of them;

- quad: the contour's minimum-area rectangle (corners ordered as Paddle's get_mini_boxes),
  dropped when its short side is < 3; its score — the mean probability inside the rectangle
  ("fast") or inside the contour ("slow") — dropped below box_thresh; the rectangle pushed out
  by D = area · unclip_ratio / perimeter (pyclipper, round joins); the minimum-area rectangle of
  that, dropped when its short side is < 5.
- poly: the contour simplified by approxPolyDP (epsilon 0.002 · arc length), dropped with < 4
  points; scored "fast" on its bounding box mask (Paddle scores polygons this way whatever
  score_mode says); unclipped, dropped when the offset splits it or its min-area rectangle's
  short side is < 5.

Points are scaled from map to source-image pixels (x / map_w · src_w, rounded, clipped to
[0, src_w]; y likewise). Shape info per image is Paddle's (src_h, src_w, ratio_h, ratio_w). The
map is first cropped to the resized image (round(src_h · ratio_h), round(src_w · ratio_w)), which
changes nothing for Paddle's unpadded maps and drops the padding of a fixed-shape batch.

Quad points are int32 (as Paddle's later releases; earlier ones used int16, which wraps past
32767 px). Outside Paddle's working range: a polygon that shapely cannot build, or an unclip
that splits a box, is skipped (Paddle raises or merges the pieces).
"""
from __future__ import annotations

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon


class DBPostProcess:
    def __init__(self, thresh=0.3, box_thresh=0.7, max_candidates=1000, unclip_ratio=2.0,
                 use_dilation=False, score_mode="fast", box_type="quad", name=None, **unused):
        if score_mode not in ("fast", "slow"):
            raise ValueError(f"PostProcess.score_mode: {score_mode!r}; known: fast, slow")
        if box_type not in ("quad", "poly"):
            raise ValueError(f"PostProcess.box_type: {box_type!r}; known: quad, poly")
        self.thresh = thresh
        self.box_thresh = box_thresh
        self.max_candidates = max_candidates
        self.unclip_ratio = unclip_ratio
        self.min_size = 3
        self.score_mode = score_mode
        self.box_type = box_type
        self.dilation_kernel = np.ones((2, 2), np.uint8) if use_dilation else None

    # -- batch API ---------------------------------------------------------------------------
    def __call__(self, maps, shape_list):
        """maps: (B, H, W) shrink probabilities, or (B, H, W, C) / {'maps': ...} whose channel 0
        is the shrink map; shape_list: (B, 4) rows (src_h, src_w, ratio_h, ratio_w).
        Returns one {'points': boxes, 'scores': [float]} per image."""
        if isinstance(maps, dict):
            maps = maps["maps"]
        maps = np.asarray(maps, np.float32)
        if maps.ndim == 4:
            maps = maps[..., 0]
        out = []
        for pred, shape in zip(maps, np.asarray(shape_list, np.float64)):
            boxes, scores = self.single(pred, shape)
            out.append({"points": boxes, "scores": scores})
        return out

    def single(self, pred, shape):
        """pred (H, W) probabilities; shape (src_h, src_w, ratio_h, ratio_w) ->
        quad: ((N, 4, 2) int32 boxes, N scores); poly: (list of [[x, y], ...], N scores)."""
        src_h, src_w, ratio_h, ratio_w = (float(v) for v in shape)
        pred = np.asarray(pred, np.float32)
        h = min(pred.shape[0], max(1, int(round(src_h * ratio_h))))
        w = min(pred.shape[1], max(1, int(round(src_w * ratio_w))))
        pred = pred[:h, :w]
        bitmap = pred > self.thresh
        if self.dilation_kernel is not None:
            bitmap = cv2.dilate(bitmap.astype(np.uint8), self.dilation_kernel)
        dest_w, dest_h = int(round(src_w)), int(round(src_h))
        if self.box_type == "poly":
            return self.polygons_from_bitmap(pred, bitmap, dest_w, dest_h)
        return self.boxes_from_bitmap(pred, bitmap, dest_w, dest_h)

    # -- Paddle's steps ----------------------------------------------------------------------
    @staticmethod
    def _contours(bitmap):
        found = cv2.findContours((bitmap * 255).astype(np.uint8), cv2.RETR_LIST,
                                 cv2.CHAIN_APPROX_SIMPLE)
        return found[-2]  # (contours, hierarchy) on OpenCV 4, (img, contours, h) on 3

    @staticmethod
    def _to_source(box, width, height, dest_w, dest_h):
        # Python ints keep the arithmetic in the box's dtype, as Paddle's (float32 corners of
        # a quad, int pyclipper points of a polygon -> float64), so .5 cases round alike
        box = np.array(box)
        box[:, 0] = np.clip(np.round(box[:, 0] / width * dest_w), 0, dest_w)
        box[:, 1] = np.clip(np.round(box[:, 1] / height * dest_h), 0, dest_h)
        return box

    def boxes_from_bitmap(self, pred, bitmap, dest_w, dest_h):
        height, width = bitmap.shape
        boxes, scores = [], []
        for contour in self._contours(bitmap)[: self.max_candidates]:
            points, sside = get_mini_boxes(contour)
            if sside < self.min_size:
                continue
            if self.score_mode == "fast":
                score = box_score_fast(pred, points)
            else:
                score = box_score_slow(pred, contour)
            if self.box_thresh > score:
                continue
            expanded = unclip(points, self.unclip_ratio)
            if len(expanded) != 1:  # Paddle reshapes whatever comes; a split never happens
                continue  # for a rectangle pushed outwards
            box, sside = get_mini_boxes(expanded[0].reshape(-1, 1, 2))
            if sside < self.min_size + 2:
                continue
            box = self._to_source(box, width, height, dest_w, dest_h)
            boxes.append(box.astype(np.int32))
            scores.append(float(score))
        return np.array(boxes, np.int32).reshape(-1, 4, 2), scores

    def polygons_from_bitmap(self, pred, bitmap, dest_w, dest_h):
        height, width = bitmap.shape
        boxes, scores = [], []
        for contour in self._contours(bitmap)[: self.max_candidates]:
            epsilon = 0.002 * cv2.arcLength(contour, True)
            points = cv2.approxPolyDP(contour, epsilon, True).reshape(-1, 2)
            if points.shape[0] < 4:
                continue
            score = box_score_fast(pred, points)
            if self.box_thresh > score:
                continue
            try:
                expanded = unclip(points, self.unclip_ratio)
            except ValueError:
                continue
            if len(expanded) != 1:
                continue
            box = expanded[0].reshape(-1, 2)
            _, sside = get_mini_boxes(box.reshape(-1, 1, 2))
            if sside < self.min_size + 2:
                continue
            boxes.append(self._to_source(box, width, height, dest_w, dest_h).tolist())
            scores.append(float(score))
        return boxes, scores


def unclip(points, unclip_ratio):
    """The polygon pushed out by D = area · ratio / perimeter (pyclipper round joins, closed
    polygon): a list of (K, 2) int arrays, normally one."""
    poly = Polygon(points)
    distance = poly.area * unclip_ratio / poly.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(points, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return [np.asarray(p) for p in offset.Execute(distance)]


def get_mini_boxes(contour):
    """Minimum-area rectangle -> (4, 2) float32 corners in Paddle's order (the two leftmost
    points by x, the upper one first; then the right pair, upper one second: top-left,
    top-right, bottom-right, bottom-left for an upright box) and its short side."""
    rect = cv2.minAreaRect(contour)
    pts = cv2.boxPoints(rect)
    pts = pts[np.argsort(pts[:, 0], kind="stable")]  # Python's sorted() on x: stable
    left = (0, 1) if pts[1, 1] > pts[0, 1] else (1, 0)  # (upper, lower) of the left pair
    right = (2, 3) if pts[3, 1] > pts[2, 1] else (3, 2)
    box = pts[[left[0], right[0], right[1], left[1]]]
    return box, min(rect[1])


def box_score_fast(bitmap, box):
    """Mean of `bitmap` over the polygon `box` (float points truncated to int when filled),
    within its bounding box clipped to the map."""
    h, w = bitmap.shape[:2]
    box = np.array(box)
    xmin = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    return _masked_mean(bitmap, box, xmin, xmax, ymin, ymax)


def box_score_slow(bitmap, contour):
    """Mean of `bitmap` over the contour itself."""
    h, w = bitmap.shape[:2]
    contour = np.array(contour).reshape(-1, 2)
    xmin = int(np.clip(contour[:, 0].min(), 0, w - 1))
    xmax = int(np.clip(contour[:, 0].max(), 0, w - 1))
    ymin = int(np.clip(contour[:, 1].min(), 0, h - 1))
    ymax = int(np.clip(contour[:, 1].max(), 0, h - 1))
    return _masked_mean(bitmap, contour, xmin, xmax, ymin, ymax)


def _masked_mean(bitmap, poly, xmin, xmax, ymin, ymax):
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), np.uint8)
    shifted = poly - np.array([xmin, ymin], poly.dtype)
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2).astype(np.int32), 1)
    return cv2.mean(bitmap[ymin: ymax + 1, xmin: xmax + 1], mask)[0]
