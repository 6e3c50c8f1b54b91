"""DetLabelEncode: PaddleOCR 2.7's ppocr/data/imaug/label_ops.py DetLabelEncode (the JSON label
-> polygons, texts, ignore tags), the polygon-array helper the det ops share, and
`pad_polygons` (fixed-shape polygons for a batch; jaxocr's, not PaddleOCR's).

polys come out as float arrays (N, P, 2) with N possibly 0 (PaddleOCR: `np.array([])`),
ignore_tags as bool arrays.
"""
from __future__ import annotations

import json

import numpy as np

from jaxocr.data.transforms.common import BadSample


def _as_polys(polys) -> np.ndarray:
    """polys (list or array) -> float array (N, P, 2); an empty list -> (0, 0, 2)."""
    arr = np.asarray(polys)
    if arr.size == 0:
        return np.zeros((0, 0, 2), np.float64)
    if arr.dtype == object or arr.ndim != 3 or arr.shape[2] != 2:
        raise BadSample(f"polys must be (N, P, 2), got {arr.shape}")
    return arr if arr.dtype.kind == "f" else arr.astype(np.float64)


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
