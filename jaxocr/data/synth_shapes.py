"""Built-in synthetic COCO-format detection data: coloured geometric shapes with exact boxes.

    src = SynthShapes(num_samples=1000, seed=0)              # 320x320, 6 classes, 1..8 shapes
    s = src.load(i)   # as COCODataSet.load: {'image' (uint8 HxWx3 BGR), 'gt_bbox', 'gt_class',
                      #  'is_crowd', 'im_id', 'im_shape', 'img_path'}
    write_coco("/tmp/shapes", 64, seed=0)    # PNGs + instances.json that COCODataSet reads

Sample i depends only on `np.random.default_rng([seed, i])` (OpenCV's non-antialiased polygon
fill is deterministic), so it is the same in any worker, thread or process; the source pickles
small (its parameters only).

Scene: a background (a linear gradient between two random colours, sometimes with smooth value
noise), then `objects_per_image` shapes of `num_classes` kinds (CLASS_NAMES, in that order:
circle, square, triangle, star, hexagon, cross, ring, diamond), each of a random size drawn
log-uniformly from `object_size` (small to large), rotation (free for triangle / star /
hexagon, within +-10 degrees for square and diamond -- a diamond is a tall rhombus, never a
square -- and +-20 for the cross), position (wholly inside the image) and colour (at least
`min_contrast` from the background under it and from the shapes it overlaps), with a mild
linear shading. Shapes may overlap: a later one is drawn on top, and it is only accepted while
every earlier shape keeps at least `min_visible` of its pixels. Last, sometimes, per-pixel
noise (it changes colours, not which pixel belongs to which shape).

Labels: shapes are filled without antialiasing into a label map, and a pixel of the image has a
shape's colour exactly when the label map gives it that shape. The box of a shape is the tight
box of its *visible* pixels in Paddle / COCO pixel-edge coordinates: pixel (row r, column c)
covers [c, c + 1] x [r, r + 1], so x1 = leftmost column, x2 = rightmost column + 1, w = x2 - x1
(the COCO bbox is [x1, y1, w, h]); `area` is its visible pixel count (what COCOeval's area
ranges use). Category ids are 1..C (contiguous label k <-> id k + 1); image ids are i + 1.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter

import cv2
import numpy as np

from jaxocr.data.source_api import EveryEntryEachEpoch

CLASS_NAMES = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring", "diamond")
MIN_SIDE = 32
SHIFT = 4            # fractional bits of cv2.fillPoly vertices
PLACE_TRIES = 8      # positions / sizes tried per shape
COLOUR_TRIES = 24
EMPTY_RETRIES = 8    # more shapes tried when none of a scene's fit
MIN_PIXELS = 6       # a shape smaller than this is not drawn


def _range(v, name: str, lo: float = 1, cast=int) -> tuple:
    if isinstance(v, (int, float, np.integer, np.floating)):
        a = b = cast(v)
    else:
        a, b = (cast(x) for x in v)
    if not lo <= a <= b:
        raise ValueError(f"SynthShapes: {name} must satisfy {lo} <= min <= max, got {v!r}")
    return a, b


def _size_spec(image_size):
    """S -> S x S; (H, W); or ((h_min, h_max), (w_min, w_max)) drawn per image."""
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    if len(image_size) != 2:
        raise ValueError(f"SynthShapes: image_size must be S, (H, W) or ((h_min, h_max), "
                         f"(w_min, w_max)), got {image_size!r}")
    return (_range(image_size[0], "image_size height", MIN_SIDE),
            _range(image_size[1], "image_size width", MIN_SIDE))


def _ngon(n: int, r: float, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _rot(pts: np.ndarray, deg: float) -> np.ndarray:
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    return pts @ np.array([[c, s], [-s, c]])


def shape_polygons(kind: str, size: float, rng: np.random.Generator):
    """[(polygon (P, 2) float64 about the origin, fill 1 | 0 for a hole), ...] of one shape
    whose extent is about `size` px."""
    r = size / 2.0
    if kind == "circle":
        return [(_ngon(max(16, int(size * 1.5)), r), 1)]
    if kind == "ring":
        n = max(16, int(size * 1.5))
        return [(_ngon(n, r), 1), (_ngon(n, r * rng.uniform(0.45, 0.65)), 0)]
    if kind == "square":
        return [(_rot(_ngon(4, r * math.sqrt(2), math.pi / 4), rng.uniform(-10, 10)), 1)]
    if kind == "diamond":
        q = np.array([[0.0, -r], [r * rng.uniform(0.5, 0.7), 0.0], [0.0, r],
                      [-r * rng.uniform(0.5, 0.7), 0.0]])
        return [(_rot(q, rng.uniform(-10, 10)), 1)]
    if kind == "triangle":
        return [(_rot(_ngon(3, r), rng.uniform(0, 360)), 1)]
    if kind == "hexagon":
        return [(_rot(_ngon(6, r), rng.uniform(0, 360)), 1)]
    if kind == "star":
        outer = _ngon(5, r, -math.pi / 2)
        inner = _ngon(5, r * rng.uniform(0.38, 0.5), -math.pi / 2 + math.pi / 5)
        pts = np.empty((10, 2))
        pts[0::2], pts[1::2] = outer, inner
        return [(_rot(pts, rng.uniform(0, 360)), 1)]
    if kind == "cross":
        a = r * rng.uniform(0.28, 0.4)  # half the arm's thickness
        pts = np.array([[-a, -r], [a, -r], [a, -a], [r, -a], [r, a], [a, a], [a, r], [-a, r],
                        [-a, a], [-r, a], [-r, -a], [-a, -a]])
        return [(_rot(pts, rng.uniform(-20, 20)), 1)]
    raise ValueError(f"SynthShapes: unknown shape {kind!r}")


def _value_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


class SynthShapes(EveryEntryEachEpoch):
    """A COCO-format detection source of `num_samples` synthetic images (module docstring).

    image_size: S, (H, W) or ((h_min, h_max), (w_min, w_max)); num_classes: the first C of
    CLASS_NAMES; objects_per_image: n or (min, max); object_size: (min_px, max_px), max None =
    0.6 x the image's shorter side."""

    def __init__(self, num_samples: int = 1000, seed: int = 0, image_size=(320, 320),
                 num_classes: int = 6, objects_per_image=(1, 8), object_size=(8, None),
                 min_visible: float = 0.6, min_contrast: float = 60.0,
                 noise_prob: float = 0.5):
        self.num_samples = int(num_samples)
        if self.num_samples < 0:
            raise ValueError(f"SynthShapes: num_samples must be >= 0, got {num_samples}")
        self.seed = int(seed)
        self.image_size = _size_spec(image_size)
        if not 1 <= int(num_classes) <= len(CLASS_NAMES):
            raise ValueError(f"SynthShapes: num_classes must be in 1..{len(CLASS_NAMES)}, got "
                             f"{num_classes}")
        self.num_classes = int(num_classes)
        self.objects_per_image = _range(objects_per_image, "objects_per_image", 0)
        lo, hi = (object_size, None) if np.isscalar(object_size) else tuple(object_size)
        self.object_size = (float(lo), None if hi is None else float(hi))
        if self.object_size[0] < 4 or (hi is not None and self.object_size[1] < lo):
            raise ValueError(f"SynthShapes: object_size must be (min >= 4, max >= min | None), "
                             f"got {object_size!r}")
        for name, p in (("min_visible", min_visible), ("noise_prob", noise_prob)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"SynthShapes: {name} must be in [0, 1], got {p}")
        self.min_visible = float(min_visible)
        self.min_contrast = float(min_contrast)
        self.noise_prob = float(noise_prob)
        self.class_names = list(CLASS_NAMES[:self.num_classes])
        self.clsid2catid = {k: k + 1 for k in range(self.num_classes)}
        self.catid2clsid = {k + 1: k for k in range(self.num_classes)}
        self.catid2name = {k + 1: n for k, n in enumerate(self.class_names)}
        self.cname2cid = {n: k for k, n in enumerate(self.class_names)}
        self.dropped: dict[str, int] = {}
        self.dropped_boxes: dict[str, int] = {}
        self.chars_removed = 0
        self.removed_chars: Counter = Counter()

    # -- source API -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_samples

    def load(self, i: int) -> dict:
        s = self.scene(i)
        n = len(s["classes"])
        h, w = s["image"].shape[:2]
        return {"image": s["image"], "gt_bbox": s["boxes"], "gt_class": s["classes"],
                "is_crowd": np.zeros(n, np.int32), "im_id": np.int64(int(i) + 1),
                "im_shape": np.array([h, w], np.float32), "img_path": f"synthshapes://{int(i)}"}

    def __repr__(self) -> str:
        (h0, h1), (w0, w1) = self.image_size
        size = f"{h0}x{w0}" if (h0, w0) == (h1, w1) else f"{h0}..{h1}x{w0}..{w1}"
        return (f"SynthShapes({self.num_samples} images, seed {self.seed}, {size}, "
                f"{self.num_classes} classes, {self.objects_per_image[0]}.."
                f"{self.objects_per_image[1]} objects)")

    # -- COCO ground truth ------------------------------------------------------------------------
    def coco_gt(self, indices=None) -> dict:
        """The COCO instances dict of samples `indices` (default all), rendered in memory."""
        indices = range(self.num_samples) if indices is None else indices
        images, anns = [], []
        for i in indices:
            s = self.scene(int(i))
            h, w = s["image"].shape[:2]
            images.append(self._image_entry(int(i), h, w))
            anns.extend(self._ann_entries(int(i), s, len(anns) + 1))
        return {"images": images, "annotations": anns, "categories": self.categories()}

    def categories(self) -> list[dict]:
        return [{"id": k + 1, "name": n, "supercategory": "shape"}
                for k, n in enumerate(self.class_names)]

    @staticmethod
    def file_name(i: int) -> str:
        return f"{int(i):06d}.png"

    def _image_entry(self, i: int, h: int, w: int) -> dict:
        return {"id": i + 1, "file_name": self.file_name(i), "width": int(w), "height": int(h)}

    def _ann_entries(self, i: int, s: dict, first_id: int) -> list[dict]:
        out = []
        for k, (box, cls, area) in enumerate(zip(s["boxes"], s["classes"], s["areas"])):
            x1, y1, x2, y2 = (float(v) for v in box)
            out.append({"id": first_id + k, "image_id": i + 1, "category_id": int(cls) + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area),
                        "iscrowd": 0})
        return out

    def write_coco(self, out_dir: str, image_dir: str = "images",
                   anno_name: str = "instances.json", indices=None) -> str:
        """PNGs under out_dir/image_dir and the instances JSON out_dir/anno_name (readable by
        COCODataSet(out_dir, image_dir, anno_name)); returns the JSON's path."""
        indices = range(self.num_samples) if indices is None else indices
        img_root = os.path.join(out_dir, image_dir)
        os.makedirs(img_root, exist_ok=True)
        images, anns = [], []
        for i in indices:
            s = self.scene(int(i))
            h, w = s["image"].shape[:2]
            path = os.path.join(img_root, self.file_name(int(i)))
            if not cv2.imwrite(path, s["image"]):
                raise OSError(f"SynthShapes: cannot write {path}")
            images.append(self._image_entry(int(i), h, w))
            anns.extend(self._ann_entries(int(i), s, len(anns) + 1))
        anno = os.path.join(out_dir, anno_name)
        with open(anno, "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": self.categories()},
                      f)
        return anno

    # -- rendering --------------------------------------------------------------------------------
    def _background(self, rng, h: int, w: int) -> np.ndarray:
        c0 = rng.uniform(0, 255, 3).astype(np.float32)
        c1 = rng.uniform(0, 255, 3).astype(np.float32)
        t = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        proj = xs * math.cos(t) + ys * math.sin(t)
        proj = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1.0)
        img = c0 + proj[..., None] * (c1 - c0)
        if rng.random() < 0.5:
            amp = np.float32(rng.uniform(10, 40))
            img += (_value_noise(rng, h, w, int(rng.integers(2, 8))) - 0.5)[..., None] * amp
        return img

    def _colour(self, rng, under: np.ndarray, avoid: list) -> np.ndarray:
        """A colour at least min_contrast from the mean background under the shape and from the
        colours in `avoid`; the best of COLOUR_TRIES draws otherwise."""
        ref = [under.mean(axis=0)] + avoid
        best, best_d = None, -1.0
        for _ in range(COLOUR_TRIES):
            c = rng.uniform(0, 255, 3)
            d = min(float(np.linalg.norm(c - r)) for r in ref)
            if d >= self.min_contrast:
                return c
            if d > best_d:
                best, best_d = c, d
        return best

    def _shape(self, rng, k: int, img, lab, objs) -> bool:
        """Try to add one shape of class k (drawn into img / lab, appended to objs)."""
        h, w = lab.shape
        lo, hi = self.object_size
        hi = 0.6 * min(h, w) if hi is None else hi
        hi = min(hi, 0.95 * min(h, w))
        lo = min(lo, hi)
        kind = CLASS_NAMES[k]
        for _ in range(PLACE_TRIES):
            size = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            polys = shape_polygons(kind, size, rng)
            allpts = np.concatenate([p for p, _ in polys])
            (xmin, ymin), (xmax, ymax) = allpts.min(0), allpts.max(0)
            if xmax - xmin > w - 2 or ymax - ymin > h - 2:
                continue
            cx = rng.uniform(-xmin + 0.5, w - 1.5 - xmax)
            cy = rng.uniform(-ymin + 0.5, h - 1.5 - ymax)
            x0, y0 = max(int(math.floor(cx + xmin)) - 1, 0), max(int(math.floor(cy + ymin)) - 1, 0)
            x1, y1 = min(int(math.ceil(cx + xmax)) + 2, w), min(int(math.ceil(cy + ymax)) + 2, h)
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            for pts, fill in polys:
                q = np.round((pts + [cx - x0, cy - y0]) * (1 << SHIFT)).astype(np.int32)
                cv2.fillPoly(mask, [q], int(fill), lineType=cv2.LINE_8, shift=SHIFT)
            m = mask.astype(bool)
            npix = int(m.sum())
            if npix < MIN_PIXELS:
                continue
            under = lab[y0:y1, x0:x1][m]
            hit = np.bincount(under + 1, minlength=len(objs) + 1)[1:]
            if any(hit[j] and o["visible"] - hit[j] < self.min_visible * o["full"]
                   for j, o in enumerate(objs)):
                continue
            region = img[y0:y1, x0:x1]
            colour = self._colour(rng, region[m], [objs[j]["colour"] for j in np.flatnonzero(hit)])
            # mild linear shading across the shape
            t = rng.uniform(0, 2 * math.pi)
            ys, xs = np.nonzero(m)
            proj = ((xs - (cx - x0)) * math.cos(t) + (ys - (cy - y0)) * math.sin(t)) / max(size, 1)
            shade = rng.uniform(-30, 30)
            region[ys, xs] = colour[None, :] + (proj * shade)[:, None]
            lab[y0:y1, x0:x1][m] = len(objs)
            for j in np.flatnonzero(hit):
                objs[j]["visible"] -= int(hit[j])
            objs.append({"cls": k, "full": npix, "visible": npix, "colour": colour})
            return True
        return False

    def scene(self, i: int, debug: bool = False) -> dict:
        """{'image': uint8 HxWx3 BGR, 'boxes': float32 (n, 4) x1y1x2y2 pixel-edge, 'classes':
        int32 (n,), 'areas': float32 (n,) visible pixels}; with debug also 'label_map' (int16,
        -1 background, else the shape's index)."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"SynthShapes index {i} out of range 0..{self.num_samples - 1}")
        rng = np.random.default_rng([self.seed, int(i)])
        (h0, h1), (w0, w1) = self.image_size
        h, w = int(rng.integers(h0, h1 + 1)), int(rng.integers(w0, w1 + 1))
        img = self._background(rng, h, w)
        lab = np.full((h, w), -1, np.int16)
        objs: list[dict] = []
        n = int(rng.integers(self.objects_per_image[0], self.objects_per_image[1] + 1))
        for _ in range(n):
            self._shape(rng, int(rng.integers(self.num_classes)), img, lab, objs)
        for _ in range(EMPTY_RETRIES if n > 0 else 0):
            if objs:
                break
            self._shape(rng, int(rng.integers(self.num_classes)), img, lab, objs)
        if rng.random() < self.noise_prob:
            sigma = np.float32(rng.uniform(2, 6))
            img += rng.standard_normal((h, w, 3), dtype=np.float32) * sigma
        np.clip(img, 0, 255, out=img)
        image = (img + np.float32(0.5)).astype(np.uint8)
        boxes = np.zeros((len(objs), 4), np.float32)
        areas = np.zeros(len(objs), np.float32)
        for j in range(len(objs)):
            ys, xs = np.nonzero(lab == j)
            boxes[j] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            areas[j] = len(xs)
        out = {"image": image, "boxes": boxes,
               "classes": np.array([o["cls"] for o in objs], np.int32), "areas": areas}
        if debug:
            out["label_map"] = lab
        return out


def write_coco(out_dir: str, num_samples: int, seed: int = 0, image_dir: str = "images",
               anno_name: str = "instances.json", **options) -> str:
    """SynthShapes(num_samples, seed, **options) written as a COCO dataset: PNGs in
    out_dir/image_dir, the instances JSON at out_dir/anno_name (returned)."""
    return SynthShapes(num_samples=num_samples, seed=seed, **options).write_coco(
        out_dir, image_dir=image_dir, anno_name=anno_name)
