"""PP-YOLOE's loss as PaddleDetection 2.7's `PPYOLOEHead.get_loss`
(`ppdet/modeling/heads/ppyoloe_head.py`), in jnp on fixed, padded shapes.

    loss = 1.0 * L_cls + 2.5 * L_iou + 0.5 * L_dfl        (each a sum / assigned_scores_sum)

- Anchors (`generate_anchors_for_grid_cell`): per level, points ((j + 0.5) s, (i + 0.5) s),
  row-major, levels in `fpn_strides` order; ATSS anchor boxes the 5·s squares around them.
- Decode (`_bbox_decode`): the 4·(reg_max+1) regression logits are side-major (l, t, r, b; 17
  bins each), softmax over the bins, expectation over [0..reg_max]: ltrb in stride units; box =
  (point - lt, point + rb) with points in stride units.
- Assignment (`jaxocr.losses.assigners`): ATSS while `static_assigner` (Paddle: epoch <
  static_assigner_epoch) with the detached predicted boxes in pixels for its IoU scores, TAL
  afterwards with the detached sigmoid scores and pixel boxes. Targets come back in pixels and
  are divided by the stride.
- L_cls: VarifocalLoss, ``sum(BCE(p, q) * (alpha p^gamma (1 - label) + q label))`` with alpha
  0.75, gamma 2, label the one-hot of the assigned class (bg column dropped), q the assigned
  scores; BCE on probabilities as paddle.nn.functional.binary_cross_entropy (logs clamped at
  -100; `det_db.bce_map`). The weight is not detached (Paddle's is not). With
  `use_varifocal_loss=False`, Paddle's focal loss (alpha 0.25 under ATSS, none under TAL).
- L_iou: GIoULoss (eps 1e-10, areas unclipped) of decoded vs assigned boxes in stride units,
  over positives (label != num_classes), times bbox_weight = the anchor's summed target score.
- L_dfl: target ltrb (stride units) clipped to [0, reg_max - 0.01]; per side
  CE(logits, floor t)·(floor t + 1 - t) + CE(logits, floor t + 1)·(t - floor t), averaged over
  the 4 sides, times bbox_weight, over positives.
- L1 (logging only): mean |pred - target| over the positives' 4 coordinates (Paddle's
  F.l1_loss), 0 without positives.

Data parallelism. Paddle all-reduces assigned_scores_sum, divides it by the world size and clips
it to >= 1; each rank divides its *local* sums by that, and DataParallel averages gradients over
ranks. `ppyoloe_loss` therefore returns unnormalised sums (cls_sum, iou_sum, dfl_sum, l1_sum,
num_pos, scores_sum) and `normalise(sums, scores_sum_global, world)` turns them into Paddle's
per-rank loss dict. The objective whose gradient is Paddle's averaged gradient is
``sum_r normalise(sums_r, S, W)['loss'] / W``; since normalise is linear in the sums, one jit over
the global batch can use ``normalise(global_sums, S, W)['loss'] / W`` with S = the global
scores_sum (the equality the tests check with jax.grad).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxocr.losses.assigners import atss_assign, batch_iou, task_aligned_assign
from jaxocr.losses.det_db import bce_map
from jaxocr.models.heads.ppyoloe_head import dfl_project, distance2bbox, generate_anchors

LOSS_WEIGHT = {"class": 1.0, "iou": 2.5, "dfl": 0.5}
GIOU_EPS = 1e-10


def bbox_giou(a, b, eps=GIOU_EPS):
    """GIoU of aligned boxes a, b (..., 4) as GIoULoss computes it (`miou`): areas unclipped, eps
    added to the union and to the enclosing area."""
    lt = jnp.maximum(a[..., :2], b[..., :2])
    rb = jnp.minimum(a[..., 2:], b[..., 2:])
    overlap = jnp.prod(jnp.clip(rb - lt, 0), axis=-1)
    area_a = jnp.prod(a[..., 2:] - a[..., :2], axis=-1)
    area_b = jnp.prod(b[..., 2:] - b[..., :2], axis=-1)
    union = area_a + area_b - overlap + eps
    iou = overlap / union
    enclose = jnp.prod(jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2]),
                       axis=-1) + eps
    return iou - (enclose - union) / enclose


def giou_loss(pred, target, eps=GIOU_EPS):
    """GIoULoss(reduction='none'): 1 - GIoU, (...)."""
    return 1.0 - bbox_giou(pred, target, eps)


def dfl_logits(pred_distri, reg_max=16):
    """(..., 4·(reg_max+1)) side-major logits (Paddle's layout) -> (..., 4, reg_max+1); already
    (..., 4, reg_max+1) (the jaxocr head's `reg_logits`) passes through."""
    bins = reg_max + 1
    if pred_distri.shape[-1] == 4 * bins:
        return pred_distri.reshape(pred_distri.shape[:-1] + (4, bins))
    assert pred_distri.shape[-2:] == (4, bins), pred_distri.shape
    return pred_distri


def dfl_decode(pred_distri, reg_max=16):
    """Expected ltrb (..., 4), stride units: the head's DFL integral of either logits layout."""
    return dfl_project(dfl_logits(pred_distri, reg_max))


def bbox2distance(points, boxes, reg_max=16):
    """_bbox2distance: ltrb of boxes from points, clipped to [0, reg_max - 0.01]."""
    ltrb = jnp.concatenate([points - boxes[..., :2], boxes[..., 2:] - points], axis=-1)
    return jnp.clip(ltrb, 0, reg_max - 0.01)


def df_loss(logits, target):
    """_df_loss: logits (..., 4, R+1), target (..., 4) in [0, R - 0.01] -> (...) (mean over
    sides of the two-bin cross-entropy)."""
    left = jnp.floor(target).astype(jnp.int32)
    w_left = (left + 1).astype(target.dtype) - target
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = lambda idx: -jnp.take_along_axis(logp, idx[..., None], axis=-1)[..., 0]
    return jnp.mean(ce(left) * w_left + ce(left + 1) * (1.0 - w_left), axis=-1)


def varifocal_loss_sum(pred_score, gt_score, label, alpha=0.75, gamma=2.0):
    """_varifocal_loss: sum(BCE(p, q) * (alpha p^gamma (1 - label) + q label))."""
    weight = alpha * jnp.power(pred_score, gamma) * (1 - label) + gt_score * label
    return jnp.sum(bce_map(pred_score, gt_score) * weight)


def focal_loss_sum(score, label, alpha=0.25, gamma=2.0):
    """_focal_loss: sum(BCE(p, y) * |p - y|^gamma * alpha_t) (alpha_t only where alpha > 0)."""
    weight = jnp.power(score - label, gamma)
    if alpha > 0:
        weight = weight * (alpha * label + (1 - alpha) * (1 - label))
    return jnp.sum(bce_map(score, label) * weight)


def loss_from_assign(pred_scores, pred_distri, pred_bboxes, anchor_points_s, assigned_labels,
                     assigned_bboxes, assigned_scores, num_classes, reg_max=16,
                     use_varifocal_loss=True, alpha_l=-1.0, row_mask=None):
    """get_loss_from_assign before its division: boxes in stride units. Returns the sums dict
    (cls_sum, iou_sum, dfl_sum, l1_sum, num_pos, scores_sum), every entry a scalar.
    `row_mask` (B,): images with 0 (a batch's padding rows) add nothing, their negatives'
    classification terms included (their ground truth must already be masked out)."""
    assigned_scores = jax.lax.stop_gradient(assigned_scores)
    assigned_bboxes = jax.lax.stop_gradient(assigned_bboxes)
    if row_mask is not None:  # the classification sums run over every anchor of every image
        pred_scores_cls = jnp.where(row_mask[:, None, None] > 0, pred_scores,
                                    jax.lax.stop_gradient(jnp.zeros_like(pred_scores)))
    else:
        pred_scores_cls = pred_scores
    if use_varifocal_loss:
        one_hot = jax.nn.one_hot(assigned_labels, num_classes + 1, dtype=pred_scores.dtype)
        cls_sum = varifocal_loss_sum(pred_scores_cls, assigned_scores, one_hot[..., :-1])
    else:
        cls_sum = focal_loss_sum(pred_scores_cls, assigned_scores, alpha_l)

    pos = assigned_labels != num_classes                                          # (B, N)
    bbox_weight = jnp.sum(assigned_scores, axis=-1)
    masked = lambda x: jnp.sum(jnp.where(pos, x * bbox_weight, 0.0))
    iou_sum = masked(giou_loss(pred_bboxes, assigned_bboxes))
    target = bbox2distance(anchor_points_s, assigned_bboxes, reg_max)
    dfl_sum = masked(df_loss(dfl_logits(pred_distri, reg_max), target))
    l1 = jnp.sum(jnp.abs(pred_bboxes - assigned_bboxes), axis=-1)
    return {"cls_sum": cls_sum, "iou_sum": iou_sum, "dfl_sum": dfl_sum,
            "l1_sum": jnp.sum(jnp.where(pos, l1, 0.0)),
            "num_pos": jnp.sum(pos).astype(pred_scores.dtype),
            "scores_sum": jnp.sum(assigned_scores)}


def ppyoloe_loss(pred_scores, pred_distri, anchors, anchor_points, num_anchors_list,
                 stride_tensor, gt_labels, gt_boxes, pad_gt_mask, *, num_classes,
                 static_assigner, reg_max=16, atss_topk=9, tal_topk=13, tal_alpha=1.0,
                 tal_beta=6.0, use_varifocal_loss=True, row_mask=None):
    """PPYOLOEHead.get_loss up to the normalisation, on one (local) batch.

    pred_scores (B, N, C) sigmoid probabilities (sigmoid of the head's cls_logits), pred_distri
    (B, N, 4·(reg_max+1)) or (B, N, 4, reg_max+1) logits,
    anchors (N, 4) / anchor_points (N, 2) pixels, num_anchors_list static, stride_tensor (N, 1),
    gt_labels (B, M[, 1]), gt_boxes (B, M, 4) pixels, pad_gt_mask (B, M[, 1]); static_assigner a
    Python bool (ATSS when True, TAL when False). Returns the sums dict of loss_from_assign; feed
    it to `normalise`. `row_mask` (B,): see loss_from_assign."""
    if row_mask is not None:
        pad_gt_mask = pad_gt_mask * row_mask.reshape((-1,) + (1,) * (pad_gt_mask.ndim - 1))
    stride_tensor = jnp.asarray(stride_tensor, pred_scores.dtype)
    anchor_points_s = jnp.asarray(anchor_points, pred_scores.dtype) / stride_tensor
    pred_bboxes = distance2bbox(anchor_points_s, dfl_decode(pred_distri, reg_max))
    pixel_boxes = jax.lax.stop_gradient(pred_bboxes) * stride_tensor
    if static_assigner:
        labels, boxes, scores = atss_assign(
            anchors, num_anchors_list, gt_labels, gt_boxes, pad_gt_mask, num_classes,
            pred_boxes=pixel_boxes, topk=atss_topk, num_classes=num_classes)
        alpha_l = 0.25
    else:
        labels, boxes, scores = task_aligned_assign(
            jax.lax.stop_gradient(pred_scores), pixel_boxes, anchor_points, num_anchors_list,
            gt_labels, gt_boxes, pad_gt_mask, num_classes, topk=tal_topk, alpha=tal_alpha,
            beta=tal_beta)
        alpha_l = -1.0
    return loss_from_assign(pred_scores, pred_distri, pred_bboxes, anchor_points_s, labels,
                            boxes / stride_tensor, scores, num_classes, reg_max,
                            use_varifocal_loss, alpha_l, row_mask)


def normalise(sums, scores_sum_global, world=1, loss_weight=None):
    """Paddle's per-rank loss dict from one rank's sums: each sum / clip(S / world, min=1), S the
    all-reduced (summed over ranks) assigned_scores_sum; loss_l1 the rank's own mean."""
    w = dict(LOSS_WEIGHT, **(loss_weight or {}))
    denom = jnp.maximum(scores_sum_global / world, 1.0)
    cls, iou, dfl = (sums[k] / denom for k in ("cls_sum", "iou_sum", "dfl_sum"))
    num_pos = sums["num_pos"]
    l1 = jnp.where(num_pos > 0, sums["l1_sum"] / jnp.maximum(4.0 * num_pos, 1.0), 0.0)
    return {"loss": w["class"] * cls + w["iou"] * iou + w["dfl"] * dfl,
            "loss_cls": cls, "loss_iou": iou, "loss_dfl": dfl, "loss_l1": l1}


DFL_AT_INIT = math.log(17)  # uniform bins (zero reg weights, bias 1.0): CE = ln(reg_max + 1)

__all__ = ["DFL_AT_INIT", "LOSS_WEIGHT", "batch_iou", "bbox2distance", "bbox_giou", "df_loss",
           "dfl_decode", "distance2bbox", "focal_loss_sum", "generate_anchors", "giou_loss",
           "loss_from_assign", "normalise", "ppyoloe_loss", "varifocal_loss_sum"]
