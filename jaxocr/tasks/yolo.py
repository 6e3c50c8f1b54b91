"""Object detection with PP-YOLOE (`Architecture.model_type: yolo`, from PaddleDetection configs).

What the core asks of it, as tasks/rec.py and tasks/det.py: the input shape, the batch keys
that go to the devices, the loader options (PaddleDetection's sample and batch transforms: the
per-step multi-scale resize and the fixed-count padded ground truth), the step's objective and
what the eval step returns, the COCO metric.

The objective is PPYOLOEHead.get_loss. Paddle divides each card's loss sums by the mean over
cards of the assigned-scores sum, clipped at 1, and averages the cards' gradients, i.e. the
global batch's loss sums over max(its assigned-scores sum, cards). Here each device's loss is
its unnormalised sum and its `share` its assigned-scores sum, both in the step's one
all-reduce, and the step divides by the summed share clipped at 1 (`share_floor`): Paddle's
gradient whenever the cards average an assigned-scores sum of 1 or more (all but the first
steps of a run), and the same gradient for any device or process count, which Paddle's is
not while its clip is active. The assigner is ATSS for the first
`static_assigner_epoch` epochs and Task-Aligned after: the two phases are two compiled steps.

Eval runs the model, decodes the boxes, maps them to the source image (scale_factor) and runs
PaddleDetection's multiclass NMS on the device with a fixed output count, so every device
evaluates its share of the set; the COCO metric gathers the detections on the host.
"""
from __future__ import annotations

import json
import logging

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from jaxocr.config import ConfigError
from jaxocr.data.device_norm import normalize_det_images
from jaxocr.data.transforms import op_options
from jaxocr.data.transforms.ppdet_batch_operators import build_batch_transforms
from jaxocr.data.transforms.ppdet_operators import NormalizeImage, build_sample_transforms
from jaxocr.losses.ppyoloe import LOSS_WEIGHT, ppyoloe_loss
from jaxocr.metrics.coco_metric import COCOMetric
from jaxocr.models.heads.ppyoloe_head import decode_boxes
from jaxocr.postprocess.ppyoloe_nms import ppyoloe_post_process

log = logging.getLogger("jaxocr")

SUMS = ("cls_sum", "iou_sum", "dfl_sum", "l1_sum", "num_pos", "scores_sum")
GT_KEYS = ("gt_bbox", "gt_class", "pad_gt_mask")
PALETTE = np.array([(0, 255, 0), (255, 128, 0), (0, 128, 255), (255, 0, 255), (0, 255, 255),
                    (128, 0, 255), (255, 255, 0), (0, 0, 255)])
NMS_DEFAULTS = {"score_threshold": 0.01, "nms_top_k": 1000, "keep_top_k": 300,
                "nms_threshold": 0.7}


class YOLOObjective:
    """What the compiled step computes for PP-YOLOE (see the module docstring)."""

    has_metric = True
    share_floor = 1.0

    def __init__(self, loss_cfg: dict, post_cfg: dict, head, norm: NormalizeImage,
                 static_assigner: bool):
        cfg = dict(loss_cfg)
        self.num_classes = int(cfg.get("num_classes", head.num_classes))
        self.weights = dict(LOSS_WEIGHT, **(cfg.get("loss_weight") or {}))
        atss = dict(cfg.get("static_assigner") or {})
        tal = dict(cfg.get("assigner") or {})
        self.loss_kwargs = dict(
            num_classes=self.num_classes, static_assigner=bool(static_assigner),
            reg_max=int(head.reg_max), atss_topk=int(atss.get("topk", 9)),
            tal_topk=int(tal.get("topk", 13)), tal_alpha=float(tal.get("alpha", 1.0)),
            tal_beta=float(tal.get("beta", 6.0)),
            use_varifocal_loss=bool(cfg.get("use_varifocal_loss", True)))
        self.grid_cell_scale = float(head.grid_cell_scale)
        self.fpn_strides = tuple(int(s) for s in head.fpn_strides)
        post = {k: v for k, v in (post_cfg or {}).items() if k != "name"}
        self.nms = {**NMS_DEFAULTS, **post}
        self.mean, self.std, self.scale = norm.mean, norm.std, float(norm.scale)

    @staticmethod
    def summarize(values) -> dict:
        """The step's mean sums -> PaddleDetection's log values (each over the mean
        assigned-scores sum clipped at 1, as Paddle logs them; loss_l1 per positive
        coordinate)."""
        v = dict(zip(SUMS, (float(x) for x in values)))
        denom = max(v["scores_sum"], 1.0)
        out = {f"loss_{k}": v[f"{k}_sum"] / denom for k in ("cls", "iou", "dfl")}
        out["loss_l1"] = v["l1_sum"] / (4.0 * v["num_pos"]) if v["num_pos"] > 0 else 0.0
        return out

    @staticmethod
    def targets(batch):
        return None  # the model sees only the images

    def inputs(self, batch, dtype):
        return normalize_det_images(batch["image"], self.mean, self.std, self.scale, None, dtype)

    def _levels(self, image_hw):
        return tuple((image_hw[0] // s) * (image_hw[1] // s) for s in self.fpn_strides)

    def loss(self, outputs, batch, mask):
        points, strides = outputs["anchor_points"], outputs["stride_tensor"]
        half = 0.5 * self.grid_cell_scale * strides
        anchors = jnp.concatenate([points - half, points + half], axis=-1)
        sums = ppyoloe_loss(
            jax.nn.sigmoid(outputs["cls_logits"]), outputs["reg_logits"], anchors, points,
            self._levels(batch["image"].shape[1:3]), strides, batch["gt_class"],
            batch["gt_bbox"], batch["pad_gt_mask"], row_mask=mask, **self.loss_kwargs)
        w = self.weights
        total = w["class"] * sums["cls_sum"] + w["iou"] * sums["iou_sum"] + \
            w["dfl"] * sums["dfl_sum"]
        return total, sums["scores_sum"], jnp.stack([sums[k] for k in SUMS])

    def predictions(self, outputs, batch):
        """Eval mode: the NMS rows, boxes in source-image pixels."""
        boxes = decode_boxes(outputs["anchor_points"], outputs["reg_logits"],
                             outputs["stride_tensor"])
        out = ppyoloe_post_process(boxes, jax.nn.sigmoid(outputs["cls_logits"]),
                                   batch["scale_factor"], **self.nms)
        return {k: out[k] for k in ("boxes", "scores", "classes", "valid")}


class YOLOTask:
    name = "yolo"
    log_style = "ppdet"  # the train log line: PaddleDetection's
    infer_batch_size = 1
    charset = None
    device_keys = {"Train": ("image", *GT_KEYS, "mask"), "Eval": ("image", "scale_factor")}
    ragged_keys = ("gt_bbox", "gt_class", "is_crowd")  # eval: per image, kept as lists

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.main_indicator = (cfg.get("Metric") or {}).get("main_indicator", "AP")
        metric = (cfg.get("Metric") or {}).get("name", "COCO")
        if metric != "COCO":
            raise ConfigError(f"metric: {metric!r} is not supported; jaxocr evaluates COCO mAP")
        loss = cfg.get("Loss") or {}
        self.static_epochs = int(loss.get("static_assigner_epoch", 0))
        norm = None
        for mode in ("Train", "Eval"):
            ds = cfg[mode]["dataset"]
            for ops in (ds.get("batch_transforms"), ds.get("transforms")):
                norm = norm or op_options(ops, "NormalizeImage")
        self.norm = NormalizeImage(**(norm or {}))
        self._classes = None

    def input_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) the state is initialised with: the eval size (the model takes any
        multiple of 32)."""
        resize = op_options(self.cfg["Eval"]["dataset"].get("transforms"), "Resize")
        size = (resize or {}).get("target_size", 640)
        h, w = (size, size) if np.isscalar(size) else size
        return int(h), int(w), 3

    def phase(self, epoch: int) -> bool:
        """True while the static (ATSS) assigner trains (epoch < static_assigner_epoch)."""
        return epoch < self.static_epochs

    def loader_options(self, model, mode: str) -> dict:
        ds = self.cfg[mode]["dataset"]
        options = {"transform": build_sample_transforms(ds.get("transforms")),
                   "batch_transform": build_batch_transforms(ds.get("batch_transforms"))}
        if mode != "Train":
            options["ragged_keys"] = self.ragged_keys
        return options

    def objective(self, phase: bool | None = None) -> YOLOObjective:
        from jaxocr.models import build_model
        head = build_model(self.cfg["Architecture"]).head
        return YOLOObjective(self.cfg.get("Loss") or {}, self.cfg.get("PostProcess"), head,
                             self.norm, self.phase(0) if phase is None else phase)

    def build_metric(self, source=None):
        return COCOMetric(gt=source, main_indicator=self.main_indicator)

    @staticmethod
    def decode(predictions, host: dict) -> list[dict]:
        """Per image: {'boxes' (n, 4) source pixels, 'scores', 'classes'} of the valid rows."""
        out = []
        for i in range(len(predictions["valid"])):
            keep = np.asarray(predictions["valid"][i], bool)
            out.append({"boxes": np.asarray(predictions["boxes"][i])[keep],
                        "scores": np.asarray(predictions["scores"][i])[keep],
                        "classes": np.asarray(predictions["classes"][i])[keep]})
        return out

    def update_metric(self, metric, predictions, host: dict):
        mask = np.asarray(host["mask"])
        for row, found in enumerate(self.decode(predictions, host)):
            if mask[row] > 0:
                metric.update_image(int(np.ravel(host["im_id"][row])[0]), found["boxes"],
                                    found["scores"], found["classes"])

    def class_names(self) -> tuple[list[str], dict[int, int]]:
        """(names by contiguous label, label -> category id) of the Eval dataset's classes."""
        if self._classes is None:
            from jaxocr.data.sources import build_source
            g = self.cfg["Global"]
            src = build_source(self.cfg["Eval"]["dataset"], "eval", None, g, int(g["seed"]))
            self._classes = (list(src.class_names), dict(src.clsid2catid))
        return self._classes

    def results(self, result, image_id=None) -> list[dict]:
        """PaddleDetection's bbox.json entries of one image: category_id, bbox [x, y, w, h]
        in source pixels, score (and image_id when given)."""
        names, catids = self.class_names()
        out = []
        for b, c, s in zip(result["boxes"], result["classes"], result["scores"]):
            x1, y1, x2, y2 = (float(v) for v in b)
            entry = {"category_id": int(catids.get(int(c), int(c))), "name": names[int(c)],
                     "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                     "score": round(float(s), 5)}
            if image_id is not None:
                entry["image_id"] = image_id
            out.append(entry)
        return out

    def format(self, result) -> str:
        return json.dumps(self.results(result))

    def draw(self, image: np.ndarray, result, threshold: float = 0.5) -> np.ndarray:
        """The image (BGR) with the boxes scoring `threshold` or more, their class names and
        scores (PaddleDetection's draw_bbox)."""
        names, _ = self.class_names()
        out = np.ascontiguousarray(image).copy()
        for b, c, s in zip(result["boxes"], result["classes"], result["scores"]):
            if s < threshold:
                continue
            color = tuple(int(v) for v in PALETTE[int(c) % len(PALETTE)])
            x1, y1, x2, y2 = (int(round(float(v))) for v in b)
            cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
            cv2.putText(out, f"{names[int(c)]} {float(s):.2f}", (x1, max(10, y1 - 3)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)
        return out
