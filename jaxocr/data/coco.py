"""COCO-format detection source: PaddleDetection release/2.7.1's COCODataSet
(ppdet/data/source/coco.py + dataset.py), read with the standard library's json.

    src = COCODataSet("dataset/coco", "train2017", "annotations/instances_train2017.json")
    s = src.load(i)   # {'image_bytes', 'gt_bbox' float32 (n, 4) x1y1x2y2, 'gt_class' int32 (n,),
                      #  'is_crowd' int32 (n,), 'im_id' int64, 'im_shape' float32 [h, w],
                      #  'img_path'}

What Paddle keeps, restated:
- images in ascending `id` order; categories in the order of the JSON's `categories` list
  (pycocotools' getCatIds), contiguous label k = position in that list (`catid2clsid`);
- an image whose file does not exist is dropped ('missing_image'), one with a negative width or
  height too ('bad_size');
- annotations: crowd ones (`iscrowd` true) are skipped unless `load_crowd`; so are those with a
  true `ignore`, without `bbox`, or with an all-zero bbox; [x, y, w, h] -> x1y1x2y2 (x2 = x + w,
  rounded to 3 decimals) is kept only when `area` > 0 and x2 - x1 > 1e-5 and y2 - y1 > 1e-5
  (else 'invalid'). Boxes are **not clipped** to the image in release/2.7.1 (Resize and
  RandomCrop clip later); `clip_bbox=True` clips them to [0, w] x [0, h] before the size test
  (a jaxocr option, off by default);
- an image left without boxes is dropped ('no_annotation') unless `allow_empty`; kept empty
  images follow the non-empty ones, and with 0 <= empty_ratio < 1 only
  min(int(n_nonempty * r / (1 - r)), n_empty) of them are kept, drawn from `seed` (Paddle uses
  the unseeded `random.sample`; dropped ones count as 'empty_ratio');
- `sample_num` > 0 stops after that many kept images (Paddle's `ct`); `repeat` repeats every
  entry in each epoch (benchmarks). An annotation file without `annotations` loads every image
  with no box (Paddle's load_image_only).

Per-box removals are counted in `dropped_boxes` ({'crowd', 'ignore', 'no_bbox', 'zero_bbox',
'invalid'}), per-image ones in `dropped`. Boxes are held in flat arrays (the JSON is not kept),
so the source pickles small; `coco_gt()` re-reads the JSON for the metric (crowd regions
included, as Paddle's COCOeval sees them).

Box convention (Paddle / COCO): x1y1x2y2 in pixel-edge coordinates, the image spans
[0, w] x [0, h] and a box's width is x2 - x1 (COCO's w, Paddle's bias 0).
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter

import numpy as np

from jaxocr.data.sources import missing_files
from jaxocr.data.transforms.common import BadSample

log = logging.getLogger("jaxocr")

BOX_EPS = 1e-5       # Paddle's eps on x2 - x1 and y2 - y1
MISSING_EXAMPLES = 5


def read_coco_json(path: str, who: str = "COCODataSet") -> dict:
    """The annotation file as a dict, with a one-line error for a missing / unreadable /
    malformed file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{who}: annotation file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{who}: cannot read annotation file {path}: {msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise ValueError(f"{who}: {path} is not a COCO instances file (needs 'images' and "
                         f"'categories' lists)")
    return data


class COCODataSet:
    """See the module docstring. Label maps: `catid2clsid`, `clsid2catid`, `cname2cid` (Paddle's
    names), `catid2name`, `class_names` (by contiguous label), `num_classes`."""

    def __init__(self, dataset_dir: str | None = None, image_dir: str | None = None,
                 anno_path: str | None = None, data_fields=None, sample_num: int = -1,
                 load_crowd: bool = False, allow_empty: bool = False, empty_ratio: float = 1.0,
                 repeat: int = 1, clip_bbox: bool = False, seed: int = 0):
        """`data_fields` is accepted for Paddle configs and ignored (boxes, classes and crowd
        flags are always loaded)."""
        self.dataset_dir = os.fspath(dataset_dir) if dataset_dir else ""
        self.image_dir = os.fspath(image_dir) if image_dir else ""
        if not anno_path:
            raise ValueError("COCODataSet needs anno_path (the instances JSON)")
        self.anno_path = os.fspath(anno_path)
        self.anno_file = os.path.join(self.dataset_dir, self.anno_path)
        if not self.anno_file.endswith(".json"):
            raise ValueError(f"COCODataSet: invalid coco annotation file (not .json): "
                             f"{self.anno_file}")
        self.load_crowd = bool(load_crowd)
        self.allow_empty = bool(allow_empty)
        self.empty_ratio = float(empty_ratio)
        self.sample_num = int(sample_num)
        self.repeat = int(repeat)
        if self.repeat < 1:
            raise ValueError(f"COCODataSet: repeat must be >= 1, got {repeat}")
        self.clip_bbox = bool(clip_bbox)
        self.seed = int(seed)
        self._parse(read_coco_json(self.anno_file))

    # -- parsing --------------------------------------------------------------------------------
    def _parse(self, data: dict):
        cats = data["categories"]
        try:
            cat_ids = [int(c["id"]) for c in cats]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"COCODataSet: {self.anno_file}: every category needs an integer "
                             f"'id'") from None
        if len(set(cat_ids)) != len(cat_ids):
            raise ValueError(f"COCODataSet: {self.anno_file}: duplicate category ids")
        self.catid2clsid = {cid: k for k, cid in enumerate(cat_ids)}
        self.clsid2catid = {k: cid for k, cid in enumerate(cat_ids)}
        self.catid2name = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
        self.class_names = [self.catid2name[cid] for cid in cat_ids]
        self.cname2cid = {name: k for k, name in enumerate(self.class_names)}
        self.num_classes = len(cat_ids)

        image_dir = os.path.join(self.dataset_dir, self.image_dir)
        images = {}
        for img in data["images"]:
            try:
                images[int(img["id"])] = img
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"COCODataSet: {self.anno_file}: an image entry has no "
                                 f"integer 'id'") from None
        img_ids = sorted(images)
        image_only = "annotations" not in data
        if image_only:
            log.warning("COCODataSet: %s has no 'annotations'; loading images only (no boxes)",
                        self.anno_file)
        anns_of: dict[int, list] = {}
        for ann in data.get("annotations") or []:
            anns_of.setdefault(ann.get("image_id"), []).append(ann)

        dropped: Counter = Counter()
        box_drops: Counter = Counter()
        rel = {i: str(images[i].get("file_name", "")) for i in img_ids}
        paths = {i: (os.path.join(image_dir, rel[i]) if image_dir else rel[i]) for i in img_ids}
        absent = missing_files("", list(paths.values()))
        if absent:
            shown = sorted(absent)[:MISSING_EXAMPLES]
            log.warning("COCODataSet: %d image file(s) listed in %s do not exist and are "
                        "ignored, e.g. %s", len(absent), self.anno_file, ", ".join(shown))

        kept, empties = [], []   # (img_id, path, h, w, boxes, classes, crowd)
        count = 0
        for img_id in img_ids:
            img = images[img_id]
            path = paths[img_id]
            if path in absent:
                dropped["missing_image"] += 1
                continue
            try:
                im_w, im_h = float(img["width"]), float(img["height"])
            except (KeyError, TypeError, ValueError):
                dropped["bad_size"] += 1
                continue
            if im_w < 0 or im_h < 0:
                dropped["bad_size"] += 1
                continue
            boxes, classes, crowd = [], [], []
            if not image_only:
                for ann in anns_of.get(img_id, ()):
                    is_crowd = int(bool(ann.get("iscrowd", 0)))
                    if is_crowd and not self.load_crowd:
                        box_drops["crowd"] += 1
                        continue
                    if ann.get("ignore", False):
                        box_drops["ignore"] += 1
                        continue
                    bbox = ann.get("bbox")
                    if bbox is None:
                        box_drops["no_bbox"] += 1
                        continue
                    try:
                        x1, y1, bw, bh = (float(v) for v in bbox)
                    except (TypeError, ValueError):
                        box_drops["invalid"] += 1
                        continue
                    if not any((x1, y1, bw, bh)):
                        box_drops["zero_bbox"] += 1
                        continue
                    x2, y2 = x1 + bw, y1 + bh
                    if self.clip_bbox:
                        x1, x2 = min(max(x1, 0.0), im_w), min(max(x2, 0.0), im_w)
                        y1, y2 = min(max(y1, 0.0), im_h), min(max(y2, 0.0), im_h)
                    area = float(ann.get("area", bw * bh) or 0.0)
                    if not (area > 0 and x2 - x1 > BOX_EPS and y2 - y1 > BOX_EPS):
                        box_drops["invalid"] += 1
                        continue
                    cid = ann.get("category_id")
                    if cid not in self.catid2clsid:
                        box_drops["unknown_category"] += 1
                        continue
                    boxes.append([round(x1, 3), round(y1, 3), round(x2, 3), round(y2, 3)])
                    classes.append(self.catid2clsid[cid])
                    crowd.append(is_crowd)
                if not boxes and not self.allow_empty:
                    dropped["no_annotation"] += 1
                    continue
            rec = (img_id, path, im_h, im_w, boxes, classes, crowd)
            (kept if boxes or image_only else empties).append(rec)
            count += 1
            if 0 < self.sample_num <= count:
                break
        if count == 0:
            raise ValueError(f"COCODataSet: no usable image in {self.anno_file} "
                             f"(dropped: {dict(dropped) or 'none'}, boxes dropped: "
                             f"{dict(box_drops) or 'none'})")
        if empties and 0.0 <= self.empty_ratio < 1.0:
            r = self.empty_ratio
            n = min(int(len(kept) * r / (1 - r)), len(empties))
            pick = np.sort(np.random.default_rng([self.seed, 7]).choice(
                len(empties), size=n, replace=False))
            dropped["empty_ratio"] += len(empties) - n
            empties = [empties[k] for k in pick]
        records = kept + empties

        n = len(records)
        self.im_ids = np.array([r[0] for r in records], np.int64)
        self.paths = [r[1] for r in records]
        self.im_hw = np.array([[r[2], r[3]] for r in records], np.float32).reshape(n, 2)
        sizes = np.array([len(r[4]) for r in records], np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._boxes = np.array([b for r in records for b in r[4]], np.float32).reshape(-1, 4)
        self._classes = np.array([c for r in records for c in r[5]], np.int32)
        self._crowd = np.array([c for r in records for c in r[6]], np.int32)
        self.dropped: dict[str, int] = dict(dropped)
        self.dropped_boxes: dict[str, int] = dict(box_drops)
        self.num_empty = len(empties)
        # the rec sources' summary fields (no character dictionary here)
        self.chars_removed = 0
        self.removed_chars: Counter = Counter()
        log.info("COCODataSet: %d images (%d without boxes) of %d in %s; %d boxes; dropped "
                 "images: %s; dropped boxes: %s", n, self.num_empty, len(img_ids),
                 self.anno_file, len(self._boxes),
                 ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none",
                 ", ".join(f"{k}={v}" for k, v in sorted(self.dropped_boxes.items())) or "none")

    # -- source API -----------------------------------------------------------------------------
    @property
    def num_entries(self) -> int:
        return len(self.paths)

    def __len__(self) -> int:
        return self.num_entries * self.repeat

    def epoch_indices(self, epoch: int) -> np.ndarray:
        idx = np.arange(self.num_entries, dtype=np.int64)
        return np.repeat(idx, self.repeat) if self.repeat > 1 else idx

    def annotations(self, i: int) -> dict:
        """The labels of raw index i without reading the image."""
        a, b = self._starts[i], self._starts[i + 1]
        return {"gt_bbox": self._boxes[a:b].copy(), "gt_class": self._classes[a:b].copy(),
                "is_crowd": self._crowd[a:b].copy(), "im_id": np.int64(self.im_ids[i]),
                "im_shape": self.im_hw[i].copy(), "img_path": self.paths[i]}

    def load(self, i: int) -> dict:
        sample = self.annotations(i)
        path = sample["img_path"]
        try:
            with open(path, "rb") as f:
                sample["image_bytes"] = f.read()
        except OSError as e:
            raise BadSample(f"cannot read image {path}: {e.strerror or e}") from None
        return sample

    def coco_gt(self) -> dict:
        """The ground truth for COCOeval: the annotation file as written (crowd included)."""
        return read_coco_json(self.anno_file)

    def __repr__(self) -> str:
        return (f"COCODataSet({self.num_entries} images, {self.num_classes} classes, from "
                f"{self.anno_file}, dropped {self.dropped}, boxes dropped "
                f"{self.dropped_boxes})")
