"""Text detection with DB (`Architecture.model_type: det`): det_mv3_db, PP-OCRv3 det.

What the core asks of it, as tasks/rec.py: the input shape, the batch keys that go to the
devices, the loader options (the det label filter, the fixed eval canvas), the step's objective
(on-device normalisation, PaddleOCR's DBLoss per device, its parts for the log), what the eval
step returns (the shrink-probability map), and the host-side DBPostProcess and DetMetric.

Eval images keep PaddleOCR's DetResizeForTest and are then padded to one fixed canvas (the
largest shape the resize can give, multiples of 32; `Eval.dataset.canvas: [H, W]` to choose
it), so the eval step compiles once and every device evaluates its share of the set. An image
the resize leaves larger than the canvas is scaled down to fit it (counted, logged once).
The ground-truth polygons ride along on the host, never to the devices.
"""
from __future__ import annotations

import json
import logging
import math

import cv2
import jax.numpy as jnp
import numpy as np

from jaxocr.data.device_norm import normalize_det_images
from jaxocr.data.sources import DetLabelFilter
from jaxocr.data.transforms.common import NormalizeImage
from jaxocr.data.transforms import op_options
from jaxocr.data.transforms.det_resize import DetResizeForTest, pad_to_bucket
from jaxocr.losses import build_det_loss
from jaxocr.metrics import build_metric
from jaxocr.postprocess import build_det_postprocess

log = logging.getLogger("jaxocr")

MAPS = ("threshold_map", "threshold_mask", "shrink_map", "shrink_mask")
LOSS_PARTS = ("loss_shrink_maps", "loss_threshold_maps", "loss_binary_maps")
UNBOUNDED_CANVAS_SIDE = 1312  # the long side of PaddleOCR's min-736 resize of a 16:9 image


def _ceil32(v) -> int:
    return max(32, int(math.ceil(float(v) / 32)) * 32)


def default_canvas(resize: DetResizeForTest) -> tuple[int, int]:
    """The largest (H, W) DetResizeForTest gives, where bounded; else a 16:9 landscape one."""
    if resize.resize_type == 1 and not resize.keep_ratio:
        h, w = resize.image_shape
        return _ceil32(h), _ceil32(w)
    if resize.resize_type == 0 and resize.limit_type in ("max", "resize_long"):
        side = _ceil32(resize.limit_side_len)
        return side, side
    short = resize.image_shape[0] if resize.resize_type == 1 else (
        resize.resize_long if resize.resize_type == 2 else resize.limit_side_len)
    return _ceil32(short), max(_ceil32(short), UNBOUNDED_CANVAS_SIDE)


class EvalCanvas:
    """Pads a resized eval image into the fixed (H, W) canvas: `image` (H, W, C) uint8 at the
    top left, `valid_shape` int32 [h, w]. A larger image is first scaled down to fit (keeping
    its aspect) and its `shape` ratios updated, so the post-process still maps boxes to the
    source image."""

    def __init__(self, canvas):
        self.canvas = (int(canvas[0]), int(canvas[1]))
        self.scaled_down = 0

    def blank(self) -> dict:
        """A masked eval row, before any sample was read (PaddleOCR's eval keys)."""
        return {"image": np.zeros((*self.canvas, 3), np.uint8),
                "valid_shape": np.zeros(2, np.int32), "shape": np.zeros(4, np.float64),
                "polys": np.zeros((0, 4, 2), np.float32), "ignore_tags": np.zeros(0, np.bool_)}

    def __call__(self, sample: dict) -> dict:
        img = sample["image"]
        h, w = img.shape[:2]
        ch, cw = self.canvas
        if h > ch or w > cw:
            f = min(ch / h, cw / w)
            nh, nw = max(1, int(h * f)), max(1, int(w * f))
            img = cv2.resize(img, (nw, nh))
            if img.ndim == 2:
                img = img[:, :, None]
            if "shape" in sample:
                shape = np.array(sample["shape"], np.float64)
                shape[2] *= nh / h
                shape[3] *= nw / w
                sample["shape"] = shape
            self.scaled_down += 1
            if self.scaled_down == 1:
                log.warning("eval image %dx%d is larger than the eval canvas %dx%d: scaled down "
                            "to fit (set Eval.dataset.canvas: [H, W] to keep such images whole)",
                            w, h, cw, ch)
        sample["image"], sample["valid_shape"] = pad_to_bucket(img, [self.canvas])
        if "shape" in sample:
            sample["shape"] = np.asarray(sample["shape"], np.float64)
        return sample


class DBObjective:
    """What the compiled step computes for a DB detector.

    inputs: uint8 images normalised on the device (the config's NormalizeImage mean, std and
    scale), the eval canvas's padding 0. loss: PaddleOCR's DBLoss over the device's rows (its
    balance and dice ratios are per card, as in Paddle), rows with mask 0 contributing nothing;
    share 1 on a device with any real row. metric: the three loss parts and that share, so the
    log shows the mean of each part over the devices.
    """

    has_metric = True
    share_floor = 1e-12

    def __init__(self, loss_fn, mean, std, scale):
        self.loss_fn = loss_fn
        self.mean, self.std, self.scale = mean, std, scale

    @staticmethod
    def targets(batch):
        return None  # the model sees only the images

    @staticmethod
    def summarize(values) -> dict:
        """The step's metric vector (loss parts × share, share) -> the log line's values."""
        values = [float(v) for v in values]
        share = max(values[-1], 1e-12)
        return {k: v / share for k, v in zip(LOSS_PARTS, values)}

    def inputs(self, batch, dtype):
        images = batch["image"]
        if images.dtype == jnp.uint8:
            return normalize_det_images(images, self.mean, self.std, self.scale,
                                        batch.get("valid_shape"), dtype)
        return images.astype(dtype)

    def loss(self, outputs, batch, mask):
        parts = self.loss_fn(outputs, {**{k: batch[k] for k in MAPS}, "mask": mask})
        share = jnp.max(mask)
        metric = jnp.stack([parts[k] for k in LOSS_PARTS] + [jnp.float32(1)]) * share
        return parts["loss"] * share, share, metric

    @staticmethod
    def predictions(outputs, batch=None):
        """Eval mode: the shrink-probability map (B, H, W) float32."""
        return outputs["maps"][..., 0].astype(jnp.float32)


class DetTask:
    name = "det"
    log_style = "paddleocr"  # the train log line: PaddleOCR's
    infer_batch_size = 1
    charset = None
    device_keys = {"Train": ("image", *MAPS, "mask"), "Eval": ("image", "valid_shape")}
    ragged_keys = ("polys", "ignore_tags")  # per image, different counts: kept as lists

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.main_indicator = (cfg.get("Metric") or {}).get("main_indicator", "hmean")
        self.postprocess = build_det_postprocess(cfg.get("PostProcess") or
                                                 {"name": "DBPostProcess"})
        norm = op_options(cfg["Train"]["dataset"].get("transforms"), "NormalizeImage")
        if norm is None:
            norm = op_options(cfg["Eval"]["dataset"].get("transforms"), "NormalizeImage") or {}
        op = NormalizeImage(**{k: v for k, v in norm.items() if k != "order"})
        self.mean, self.std, self.scale = op.mean, op.std, float(op.scale)
        self.canvas = self._canvas(cfg["Eval"]["dataset"])

    @staticmethod
    def _canvas(dataset: dict) -> tuple[int, int]:
        if dataset.get("canvas") is not None:
            h, w = (int(v) for v in dataset["canvas"])
            if h % 32 or w % 32 or h <= 0 or w <= 0:
                raise ValueError(f"Eval.dataset.canvas must be [H, W], multiples of 32, got "
                                 f"{dataset['canvas']!r}")
            return h, w
        resize = op_options(dataset.get("transforms"), "DetResizeForTest")
        return default_canvas(DetResizeForTest(**(resize or {})))

    def input_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) of the Train crops (EastRandomCropData's size)."""
        crop = op_options(self.cfg["Train"]["dataset"].get("transforms"), "EastRandomCropData")
        if crop is None:
            return None
        h, w = (int(v) for v in crop.get("size", (640, 640)))
        return h, w, 3

    def loader_options(self, model, mode: str) -> dict:
        options = {"label_filter": DetLabelFilter()}
        if mode != "Train":
            options.update(finalize=EvalCanvas(self.canvas), ragged_keys=self.ragged_keys)
        return options

    @staticmethod
    def phase(epoch: int) -> None:
        """One compiled train step for the whole run."""
        return None

    def objective(self, phase=None) -> DBObjective:
        return DBObjective(build_det_loss(self.cfg.get("Loss") or {"name": "DBLoss"}),
                           self.mean, self.std, self.scale)

    def build_metric(self, source=None):
        return build_metric(self.cfg.get("Metric") or {"name": "DetMetric"})

    def decode(self, predictions, host: dict) -> list[dict]:
        """Host rows of the eval step's maps -> {'points', 'scores'} per image, in source-image
        pixels (host["shape"]: src_h, src_w, ratio_h, ratio_w per row)."""
        return self.postprocess(np.asarray(predictions), host["shape"])

    def update_metric(self, metric, predictions, host: dict):
        boxes = self.decode(predictions, host)
        metric.update(boxes, host["polys"], host["ignore_tags"], host["mask"])

    @staticmethod
    def format(result) -> str:
        """PaddleOCR's det_results.txt value: a JSON list of {"points": [[x, y], ...]}."""
        return json.dumps([{"points": np.asarray(p).astype(int).tolist()}
                           for p in result["points"]])

    @staticmethod
    def draw(image: np.ndarray, result) -> np.ndarray:
        """The image (BGR) with the detected polygons drawn, as PaddleOCR's draw_det_res."""
        out = np.ascontiguousarray(image).copy()
        for p in result["points"]:
            pts = np.asarray(p, np.int32).reshape(-1, 1, 2)
            cv2.polylines(out, [pts], True, color=(255, 255, 0), thickness=2)
        return out
