"""COCOMetric as PaddleDetection release/2.7.1's (ppdet/metrics/metrics.py COCOMetric +
coco_utils.cocoapi_eval + json_results.get_det_res), bbox only, with pycocotools' COCOeval.

    metric = COCOMetric(gt=dataset)            # a COCODataSet / SynthShapes, a COCO dict or path
    metric.update_image(im_id, boxes, scores, labels)   # per image, source-image pixels
    metric.update(im_ids, boxes, scores, labels, num=..., weights=...)   # fixed-size batches
    metric.get_metric()   # {'AP': ..., 'AP50', 'AP75', 'APs', 'APm', 'APl',
                          #  'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl'}  (COCOeval.stats)

Detections: boxes x1y1x2y2 in the source image's pixels (pixel-edge; what the post-process
gives after dividing by scale_factor), contiguous labels 0..C-1 (mapped to category ids with
the ground truth's `clsid2catid`: position in its `categories` list, as Paddle's
get_categories), scores. As Paddle's get_det_res, a result is {image_id, category_id,
bbox [x1, y1, x2 - x1 + bias, y2 - y1 + bias] (bias 0), score}; labels < 0 (NMS padding) and
scores below `save_threshold` (0) are skipped. COCOeval uses its default parameters (maxDets 1,
10, 100, applied per image *and category*: the top 100 by score of each class in each image
count) over every image of the ground truth (an image never evaluated counts its boxes as
missed), unless `only_seen_images`.

Detections are kept per image (a second submission of an image already held is ignored and
counted in `duplicates`, e.g. the padding a distributed sampler repeats); `state()` is one
float64 (N, 7) array [image_id, category_id, x, y, w, h, score] to gather from every process,
`merge(state)` adds another process's, so the merged metric equals one that saw everything.
`results()` lists Paddle's bbox.json entries.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os

import numpy as np

log = logging.getLogger("jaxocr")

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
              "ARl")


def _quiet():
    """pycocotools prints progress on stdout: capture it."""
    return contextlib.redirect_stdout(io.StringIO())


def _load_gt(gt):
    """A COCO dict from: a dict, a path to an instances JSON, or an object with coco_gt()."""
    if isinstance(gt, dict):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        from jaxocr.data.coco import read_coco_json
        return read_coco_json(gt, "COCOMetric")
    if hasattr(gt, "coco_gt"):
        return gt.coco_gt()
    raise TypeError(f"COCOMetric: gt must be a COCO dict, a path or a dataset with coco_gt(), "
                    f"got {type(gt).__name__}")


class COCOMetric:
    def __init__(self, gt=None, anno_file=None, clsid2catid=None, classwise=False, bias=0,
                 save_threshold=0.0, only_seen_images=False, main_indicator="AP",
                 output_eval=None, name=None, **unused):
        """gt: the ground truth (see _load_gt), or `anno_file` (Paddle's option); it may also
        be given later with set_gt(). clsid2catid: contiguous label -> category id (default:
        the dataset's, else the order of the ground truth's categories). output_eval: a
        directory where get_metric writes bbox.json (Paddle's)."""
        self.main_indicator = main_indicator
        self.classwise = bool(classwise)
        self.bias = float(bias)
        self.save_threshold = float(save_threshold)
        self.only_seen_images = bool(only_seen_images)
        self.output_eval = output_eval
        self._clsid2catid = None if clsid2catid is None else {int(k): int(v) for k, v in
                                                              dict(clsid2catid).items()}
        self._gt_source = gt if gt is not None else anno_file
        self._coco = None
        self.reset()

    # -- ground truth --------------------------------------------------------------------------
    def set_gt(self, gt):
        self._gt_source, self._coco = gt, None

    @property
    def clsid2catid(self) -> dict:
        if self._clsid2catid is None:
            src = self._gt_source
            if src is not None and not isinstance(src, (dict, str, os.PathLike)) \
                    and getattr(src, "clsid2catid", None) is not None:
                self._clsid2catid = dict(src.clsid2catid)
            else:
                cats = self.coco_gt().dataset["categories"]
                self._clsid2catid = {k: int(c["id"]) for k, c in enumerate(cats)}
        return self._clsid2catid

    def coco_gt(self):
        """The pycocotools COCO of the ground truth (built once)."""
        if self._coco is None:
            if self._gt_source is None:
                raise ValueError("COCOMetric: no ground truth (pass gt= or anno_file=, or "
                                 "call set_gt)")
            from pycocotools.coco import COCO
            data = _load_gt(self._gt_source)
            coco = COCO()
            coco.dataset = dict(data)
            coco.dataset["annotations"] = [dict(a) for a in data.get("annotations") or []]
            for k, ann in enumerate(coco.dataset["annotations"]):
                ann.setdefault("id", k + 1)
                ann.setdefault("iscrowd", 0)
                if "area" not in ann and "bbox" in ann:
                    ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
            with _quiet():
                coco.createIndex()
            self._coco = coco
        return self._coco

    # -- accumulation --------------------------------------------------------------------------
    def reset(self):
        self._per_image: dict[int, np.ndarray] = {}
        self.duplicates = 0

    def _rows(self, im_id: int, boxes, scores, labels) -> np.ndarray:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"COCOMetric: image {im_id}: {len(boxes)} boxes, {len(scores)} "
                             f"scores, {len(labels)} labels")
        keep = (labels >= 0) & (scores >= self.save_threshold)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        cmap = self.clsid2catid
        try:
            cats = np.array([cmap[int(c)] for c in labels], np.float64)
        except KeyError as e:
            raise ValueError(f"COCOMetric: label {e.args[0]} has no category (labels are "
                             f"0..{len(cmap) - 1})") from None
        out = np.empty((len(boxes), 7), np.float64)
        out[:, 0] = im_id
        out[:, 1] = cats
        out[:, 2:4] = boxes[:, :2]
        out[:, 4:6] = boxes[:, 2:] - boxes[:, :2] + self.bias
        out[:, 6] = scores
        return out

    def _add(self, im_id: int, rows: np.ndarray):
        if im_id in self._per_image:
            self.duplicates += 1
            return
        self._per_image[im_id] = rows

    def update_image(self, im_id, boxes, scores, labels):
        """One image's detections: boxes (n, 4) x1y1x2y2 source pixels, scores (n,), contiguous
        labels (n,) (< 0: padding, skipped)."""
        im_id = int(np.asarray(im_id).reshape(-1)[0])
        self._add(im_id, self._rows(im_id, boxes, scores, labels))

    def update(self, im_ids, boxes, scores, labels, num=None, weights=None):
        """A batch: im_ids (B,), boxes (B, K, 4), scores / labels (B, K); num (B,): the valid
        detections of each row (else all K; labels < 0 are skipped anyway); weights (B,):
        0 skips a row (padding of a fixed-size eval batch)."""
        im_ids = np.asarray(im_ids).reshape(-1)
        b = len(im_ids)
        weights = np.ones(b) if weights is None else np.asarray(weights).reshape(-1)
        for r in range(b):
            if not weights[r]:
                continue
            k = None if num is None else int(np.asarray(num).reshape(-1)[r])
            self.update_image(im_ids[r], np.asarray(boxes[r])[:k], np.asarray(scores[r])[:k],
                              np.asarray(labels[r])[:k])

    def update_paddle(self, bbox, bbox_num, im_ids):
        """Paddle's post-process output: bbox (N, 6) [label, score, x1, y1, x2, y2] of all
        images, bbox_num (B,), im_ids (B,) or (B, 1)."""
        bbox = np.asarray(bbox, np.float64).reshape(-1, 6)
        counts = np.asarray(bbox_num).reshape(-1).astype(np.int64)
        im_ids = np.asarray(im_ids).reshape(-1)
        start = 0
        for im_id, n in zip(im_ids, counts):
            rows = bbox[start:start + n]
            start += n
            self.update_image(im_id, rows[:, 2:6], rows[:, 1], rows[:, 0].astype(np.int64))

    # -- multi-process -------------------------------------------------------------------------
    def state(self) -> np.ndarray:
        """(N, 7) float64 [image_id, category_id, x, y, w, h, score]; an image evaluated with no
        detection is a row with category_id -1 (so it still counts as seen)."""
        parts = []
        for im_id, rows in self._per_image.items():
            parts.append(rows if len(rows) else
                         np.array([[im_id, -1, 0, 0, 0, 0, 0]], np.float64))
        return np.concatenate(parts) if parts else np.zeros((0, 7), np.float64)

    def merge(self, state):
        state = np.asarray(state, np.float64).reshape(-1, 7)
        if not len(state):
            return
        ids = state[:, 0].astype(np.int64)
        order = np.argsort(ids, kind="stable")
        ids, state = ids[order], state[order]
        cuts = np.flatnonzero(np.diff(ids)) + 1
        for rows in np.split(state, cuts):
            im_id = int(rows[0, 0])
            self._add(im_id, rows[rows[:, 1] >= 0])

    # -- results -------------------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return len(self._per_image)

    def results(self) -> list[dict]:
        """Paddle's bbox.json entries."""
        out = []
        for rows in self._per_image.values():
            for r in rows:
                out.append({"image_id": int(r[0]), "category_id": int(r[1]),
                            "bbox": [float(r[2]), float(r[3]), float(r[4]), float(r[5])],
                            "score": float(r[6])})
        return out

    def evaluate(self):
        """The COCOeval after evaluate / accumulate / summarize (its printout is logged)."""
        from pycocotools.cocoeval import COCOeval
        gt = self.coco_gt()
        unknown = set(self._per_image) - set(gt.getImgIds())
        if unknown:
            raise ValueError(f"COCOMetric: detections for image ids not in the ground truth: "
                             f"{sorted(unknown)[:5]}")
        dt = self._results_coco(gt)
        ev = COCOeval(gt, dt, "bbox")
        if self.only_seen_images:
            ev.params.imgIds = sorted(self._per_image)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        log.info("COCOeval bbox over %d images (%d with detections):\n%s",
                 len(ev.params.imgIds), len(self._per_image), buf.getvalue().rstrip())
        return ev

    def _results_coco(self, gt):
        """pycocotools' loadRes for boxes, also for no detection at all (loadRes fails)."""
        from pycocotools.coco import COCO
        anns = []
        for r in (self.state() if self._per_image else np.zeros((0, 7))):
            if r[1] < 0:
                continue
            x, y, w, h = (float(v) for v in r[2:6])
            anns.append({"id": len(anns) + 1, "image_id": int(r[0]), "category_id": int(r[1]),
                         "bbox": [x, y, w, h], "score": float(r[6]), "area": w * h,
                         "iscrowd": 0,
                         "segmentation": [[x, y, x, y + h, x + w, y + h, x + w, y]]})
        dt = COCO()
        dt.dataset = {"images": list(gt.dataset["images"]),
                      "categories": list(gt.dataset["categories"]), "annotations": anns}
        with _quiet():
            dt.createIndex()
        return dt

    def get_metric(self, reset=True) -> dict:
        if self.output_eval:
            os.makedirs(self.output_eval, exist_ok=True)
            with open(os.path.join(self.output_eval, "bbox.json"), "w") as f:
                json.dump(self.results(), f)
        ev = self.evaluate()
        out = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
        if self.classwise:
            out["per_class_AP"] = self._per_class(ev)
        if reset:
            self.reset()
        return out

    def _per_class(self, ev) -> dict:
        """AP@[.5:.95] per category name (all areas, maxDets 100), NaN without ground truth."""
        precision = ev.eval["precision"]  # (iou, recall, cls, area, maxdet)
        gt = self.coco_gt()
        out = {}
        for k, cid in enumerate(ev.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            out[str(gt.cats[cid].get("name", cid))] = float(np.mean(p)) if p.size else \
                float("nan")
        return out
