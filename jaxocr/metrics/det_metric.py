"""DetMetric as PaddleOCR 2.7's (`ppocr/metrics/det_metric.py` + `eval_det_iou.py`'s
DetectionIoUEvaluator): the ICDAR 2015 IoU protocol.

Per image:
- GT polygons that shapely finds invalid or not simple are skipped (not counted at all);
  those tagged ignore ("###") are don't-care.
- Detections likewise skipped when invalid / not simple; a detection is don't-care when its
  intersection with some don't-care GT covers more than `area_precision_constraint` of its own
  area (0 for a zero-area detection).
- Matching is Paddle's greedy order, not best-IoU: for each GT in order, for each detection in
  order, both still unmatched and neither don't-care, IoU (intersection / union areas) >
  `iou_constraint` -> a match.
- gtCare = GTs - don't-care GTs; detCare = detections - don't-care detections.

Over the set: recall = matched / gtCare, precision = matched / detCare (0 when the denominator is
0), hmean = 2PR / (P + R) (0 when P + R = 0). Only the three sums are kept (`sums`), so partial
results from several processes add up exactly (`merge`).

Zero-filled padding polygons of a fixed-size GT array are invalid polygons and so are skipped,
as Paddle skips any invalid one. A polygon shapely cannot even build (fewer than 3 points) is
skipped too (Paddle raises there).
"""
from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import Polygon


def _polygons(points_list):
    """Valid, simple shapely polygons of `points_list`, with the indices they came from."""
    polys, kept = [], []
    for i, pts in enumerate(points_list):
        try:
            poly = Polygon(np.asarray(pts, np.float64).reshape(-1, 2))
        except (ValueError, TypeError):
            continue
        polys.append(poly)
        kept.append(i)
    arr = np.array(polys, dtype=object)
    if not len(arr):
        return arr, np.zeros(0, np.int64)
    ok = shapely.is_valid(arr) & shapely.is_simple(arr)
    return arr[ok], np.asarray(kept, np.int64)[ok]


class DetMetric:
    def __init__(self, main_indicator="hmean", iou_constraint=0.5,
                 area_precision_constraint=0.5, name=None, **unused):
        self.main_indicator = main_indicator
        self.iou_constraint = iou_constraint
        self.area_precision_constraint = area_precision_constraint
        self.reset()

    def evaluate_image(self, gt_polygons, ignore_tags, det_polygons):
        """-> (detMatched, gtCare, detCare) of one image. Polygons: sequences of (P, 2) points
        (any P >= 3); ignore_tags: one bool per GT polygon."""
        ignore_tags = np.asarray(ignore_tags, bool).reshape(-1)
        gts, gt_idx = _polygons(gt_polygons)
        gt_dont_care = ignore_tags[gt_idx] if len(gt_idx) else np.zeros(0, bool)
        dets, _ = _polygons(det_polygons)

        det_dont_care = np.zeros(len(dets), bool)
        if len(dets) and gt_dont_care.any():
            care_less = gts[gt_dont_care]
            inter = shapely.area(shapely.intersection(dets[:, None], care_less[None, :]))
            area = shapely.area(dets)[:, None]
            frac = np.where(area == 0, 0.0, inter / np.where(area == 0, 1.0, area))
            det_dont_care = (frac > self.area_precision_constraint).any(axis=1)

        matched = 0
        if len(gts) and len(dets):
            inter = shapely.area(shapely.intersection(dets[None, :], gts[:, None]))
            union = shapely.area(shapely.union(dets[None, :], gts[:, None]))
            iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
            gt_used = gt_dont_care.copy()  # a don't-care entry can never match
            det_used = det_dont_care.copy()
            for g in range(len(gts)):
                for d in range(len(dets)):
                    if not gt_used[g] and not det_used[d] and iou[g, d] > self.iou_constraint:
                        gt_used[g] = det_used[d] = True
                        matched += 1
        gt_care = len(gts) - int(gt_dont_care.sum())
        det_care = len(dets) - int(det_dont_care.sum())
        return matched, gt_care, det_care

    def update(self, preds, gt_polygons, ignore_tags, weights=None):
        """preds: per image, the detected polygons — an (N, P, 2) array, a list of (P, 2)
        point lists, or DBPostProcess's {'points': ...}; gt_polygons / ignore_tags: per image,
        (K, P, 2) / (K,) (zero-filled padding polygons are skipped); weights: 0 skips an image
        (padding of a fixed-size eval batch)."""
        weights = np.ones(len(preds)) if weights is None else np.asarray(weights)
        for pred, gts, tags, w in zip(preds, gt_polygons, ignore_tags, weights):
            if not w:
                continue
            if isinstance(pred, dict):
                pred = pred["points"]
            self.sums += self.evaluate_image(gts, tags, pred)

    def state(self) -> np.ndarray:
        """The partial result to merge into another process's metric: the sums."""
        return self.sums.copy()

    def merge(self, sums):
        self.sums += np.asarray(sums, np.float64)

    def get_metric(self, reset=True):
        matched, gt_care, det_care = self.sums
        recall = 0.0 if gt_care == 0 else float(matched) / gt_care
        precision = 0.0 if det_care == 0 else float(matched) / det_care
        hmean = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
        if reset:
            self.reset()
        return {"precision": precision, "recall": recall, "hmean": hmean}

    def reset(self):
        self.sums = np.zeros(3, np.float64)  # detMatched, gtCare, detCare
