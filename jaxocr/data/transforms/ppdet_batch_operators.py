"""PaddleDetection release/2.7.1 batch transforms (ppdet/data/transform/batch_operators.py):
BatchRandomResize and PadGT, and `BatchCompose` for a reader's `batch_transforms` list (see
ppdet_operators.py for the conventions and the differences from Paddle)."""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from jaxocr.data.transforms.common import _log_once, op_entries
from jaxocr.data.transforms.ppdet_operators import (INTERPS, SAMPLE_OPS, _boxes, _build,
                                                     _target_hw, resize_sample)

BATCH_RESIZE_STREAM = 0x5EED_B47C  # separates BatchRandomResize's draws from other streams


# ----------------------------------------------------------------------------------------------
# batch operations: op(samples: list[dict], step: int, seed: int | None) -> list[dict] (new
# dicts; the arrays of the samples given are not written to)

class BatchRandomResize:
    """Paddle's BatchRandomResize(target_size, keep_ratio, interp=cv2.INTER_NEAREST,
    random_size=True, random_interp=False): one Resize for the whole batch, its size chosen
    from `target_size` (a list of ints or [h, w]) when random_size, its interpolation from
    INTERPS (nearest, linear, area, cubic, Lanczos4) when random_interp. The choice is
    `choose(step, seed)`: np.random.default_rng([seed, step, BATCH_RESIZE_STREAM]), the same
    in every process for the same (seed, step)."""

    def __init__(self, target_size, keep_ratio, interp=cv2.INTER_NEAREST, random_size=True,
                 random_interp=False, seed: int = 0):
        if random_size and not isinstance(target_size, (list, tuple)):
            raise TypeError(f"BatchRandomResize: target_size must be a list when random_size "
                            f"is True, got {type(target_size).__name__}")
        if random_size:
            if not target_size:
                raise ValueError("BatchRandomResize: target_size is empty")
            self.target_size = [_target_hw(t) for t in target_size]
        else:
            self.target_size = _target_hw(target_size)
        self.keep_ratio = bool(keep_ratio)
        self.interp = int(interp)
        self.random_size = bool(random_size)
        self.random_interp = bool(random_interp)
        self.seed = int(seed)

    def choose(self, step, seed: int | None = None) -> tuple[list[int], int]:
        """([h, w], interp) of `step`: a global step, or the loader's batch position (epoch,
        first sample in global order)."""
        seed = self.seed if seed is None else int(seed)
        key = [int(v) for v in np.ravel(step)]
        rng = np.random.default_rng([seed, *key, BATCH_RESIZE_STREAM])
        size = (self.target_size[int(rng.integers(len(self.target_size)))]
                if self.random_size else self.target_size)
        interp = int(INTERPS[int(rng.integers(len(INTERPS)))]) if self.random_interp \
            else self.interp
        return list(size), interp

    def sizes(self) -> list[list[int]]:
        """Every [h, w] it can pick (keep_ratio False) -- the shapes to compile for."""
        return [list(t) for t in self.target_size] if self.random_size else [self.target_size]

    def __call__(self, samples: list, step: int = 0, seed: int | None = None,
                 size: list[int] | None = None) -> list:
        """`size`: this [h, w] instead of the step's choice (the compile-ahead shapes)."""
        chosen, interp = self.choose(step, seed)
        size = chosen if size is None else size
        return [resize_sample(dict(s), size, self.keep_ratio, interp) for s in samples]


class PadGT:
    """Paddle's PadGT, to a fixed count: gt_bbox (M, 4) float32, gt_class (M,) int32 and, when
    present, is_crowd (M,) int32, gt_score (M,) float32, difficult (M,) int32, zero-padded to
    M = max(num_max_boxes, minimum_gtnum); `pad_gt_mask` (M,) float32 is 1 on real boxes
    (return_gt_mask). Boxes past M are cut (`truncated` counts them; logged once).
    pad_img pads every image bottom / right with 0 to the batch's largest [h, w] (im_shape)."""

    def __init__(self, return_gt_mask=True, pad_img=False, minimum_gtnum=0,
                 num_max_boxes: int = 100):
        self.return_gt_mask = bool(return_gt_mask)
        self.pad_img = bool(pad_img)
        self.num_max_boxes = max(int(num_max_boxes), int(minimum_gtnum))
        if self.num_max_boxes < 1:
            raise ValueError(f"PadGT: num_max_boxes must be >= 1, got {num_max_boxes}")
        self.truncated = 0

    def pad_one(self, sample: dict) -> dict:
        m = self.num_max_boxes
        boxes = _boxes(sample)
        boxes = np.zeros((0, 4), np.float32) if boxes is None else boxes
        n = len(boxes)
        if n > m:
            self.truncated += n - m
            _log_once("PadGT: an image has %d boxes, more than num_max_boxes %d; the rest are "
                      "cut (raise PadGT.num_max_boxes)", n, m)
            n = m
        out = np.zeros((m, 4), np.float32)
        out[:n] = boxes[:n]
        sample["gt_bbox"] = out
        specs = (("gt_class", np.int32), ("is_crowd", np.int32), ("gt_score", np.float32),
                 ("difficult", np.int32))
        for key, dtype in specs:
            if key in sample or key == "gt_class":
                v = np.asarray(sample.get(key, np.zeros(0)), dtype).reshape(-1)
                padded = np.zeros(m, dtype)
                padded[:n] = v[:n]
                sample[key] = padded
        if self.return_gt_mask:
            mask = np.zeros(m, np.float32)
            mask[:n] = 1.0
            sample["pad_gt_mask"] = mask
        return sample

    def __call__(self, samples: list, step: int = 0, seed: int | None = None) -> list:
        samples = [dict(s) for s in samples]  # the caller's dicts are not modified
        if self.pad_img and samples:
            mh = max(int(s["image"].shape[0]) for s in samples)
            mw = max(int(s["image"].shape[1]) for s in samples)
            for s in samples:
                img = s["image"]
                if img.shape[:2] != (mh, mw):
                    canvas = np.zeros((mh, mw, img.shape[2]), img.dtype)
                    canvas[:img.shape[0], :img.shape[1]] = img
                    s["image"] = canvas
        return [self.pad_one(s) for s in samples]


BATCH_OPS: dict[str, tuple[Callable, set[str]]] = {
    "BatchRandomResize": (lambda kw: BatchRandomResize(**kw),
                          {"target_size", "keep_ratio", "interp", "random_size",
                           "random_interp", "seed"}),
    "PadGT": (lambda kw: PadGT(**kw),
              {"return_gt_mask", "pad_img", "minimum_gtnum", "num_max_boxes"}),
}


class BatchCompose:
    """A batch_transforms list: batch ops get (samples, step, seed); sample ops are mapped
    over the samples (with rng None: the per-sample ops allowed here draw nothing)."""

    def __init__(self, ops: list):
        self.ops = ops
        for op in ops:
            if getattr(op, "random", False) and not isinstance(op, tuple(_BATCH_TYPES)):
                raise ValueError(f"batch_transforms: {type(op).__name__} draws per-sample "
                                 f"random numbers; put it in sample_transforms")

    def __call__(self, samples: list, step: int = 0, seed: int | None = None,
                 size: list[int] | None = None) -> list:
        """`size`: the multi-scale resize's [h, w] for this call, in place of its choice."""
        samples = [dict(s) for s in samples]
        for op in self.ops:
            if isinstance(op, BatchRandomResize):
                samples = op(samples, step, seed, size)
            elif isinstance(op, tuple(_BATCH_TYPES)):
                samples = op(samples, step, seed)
            else:
                samples = [op(s, None) for s in samples]
        return samples

    def batch_resize(self) -> BatchRandomResize | None:
        return next((op for op in self.ops if isinstance(op, BatchRandomResize)), None)

    def each_size(self, samples: list):
        """The batch at every size the multi-scale resize can pick (once, without one): the
        batch shapes a train step meets, to compile ahead."""
        resize = self.batch_resize()
        for size in resize.sizes() if resize else [None]:
            yield self(samples, size=size)

    def __repr__(self) -> str:
        return f"BatchCompose({[type(op).__name__ for op in self.ops]})"


_BATCH_TYPES = (BatchRandomResize, PadGT)


def build_batch_transforms(ops_cfg: list | None) -> BatchCompose:
    """A Paddle `batch_transforms` list -> BatchCompose (fn(samples, step, seed)); sample ops
    that draw nothing (Resize, NormalizeImage, Permute) may stand in it."""
    ops = []
    for name, kwargs in op_entries(ops_cfg):
        if name in BATCH_OPS:
            ops.append(_build(name, kwargs, BATCH_OPS))
        elif name in SAMPLE_OPS:
            ops.append(_build(name, kwargs, SAMPLE_OPS))
        else:
            raise ValueError(f"unknown batch transform {name!r}; known: "
                             f"{sorted(BATCH_OPS) + sorted(SAMPLE_OPS)}")
    return BatchCompose(ops)
