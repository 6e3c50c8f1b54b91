"""PP-YOLOE's label assigners as PaddleDetection 2.7's, in jnp on fixed, padded shapes.

Mirrors `ppdet/modeling/assigners/atss_assigner.py` (ATSSAssigner, the static assigner of the
first `static_assigner_epoch` epochs), `task_aligned_assigner.py` (TaskAlignedAssigner, TAL) and
their helpers in `assigners/utils.py` and `bbox_utils.py` (`iou_similarity`,
`batch_iou_similarity`, `bbox_center`, `check_points_inside_bboxes`, `compute_max_iou_anchor`,
`gather_topk_anchors`).

Shapes: B images, M GT slots per image (PadGT's padding: zero boxes, label 0, `pad_gt_mask` 0),
N anchors over all levels, C classes. Nothing depends on the data: Paddle's `if
mask_positive_sum.max() > 1` branch is applied unconditionally (a no-op where no anchor has two
GTs), top-k's are `jax.lax.top_k` at a fixed k, and the one-hot sums of top-k indices are
scatters. Everything is under `stop_gradient` (Paddle's `@paddle.no_grad()`).

Paddle's rules kept as they are:
- inside test: an anchor point is inside a GT when min(l, t, r, b) > 1e-9 (strict);
- ATSS: per level the `topk` anchors nearest the GT centre (L2 distance of centres); threshold
  mean + std of those candidates' IoUs with the *unbiased* std (Paddle's `Tensor.std` default);
  positive where IoU > threshold (strict), the centre is inside and the GT is real;
- TAL: metric = score(GT class)^alpha * IoU(GT, predicted box)^beta; top-k over all anchors of
  metric * inside; positive = top-k & inside & real GT;
- an anchor positive for several GTs goes to the GT of largest IoU among *all* M slots (ATSS:
  IoU with the anchor box; TAL: with the predicted box), first slot on ties, as Paddle's
  argmax, even where that GT did not select it;
- the assigned GT of an anchor is the argmax over slots of the positive mask, slot 0 for
  negatives: their `assigned_bboxes` are slot 0's box (zeros when slot 0 is padding), their label
  `bg_index`, their scores 0;
- scores: one-hot of the label with the `bg_index` column dropped, times (ATSS with
  `pred_boxes`) the max over GTs of IoU(GT, predicted box) * positive, or (ATSS with
  `gt_scores`) the assigned GT's score, or (TAL) max over GTs of
  metric / (max metric of the GT + eps) * max IoU of the GT, over positives.
- no GT slots (M = 0, a static shape) gives background everywhere, as Paddle's "negative batch";
  slots that are all padding give the same through the general path.

Ties in top-k are broken towards the lower anchor index (`jax.lax.top_k`); Paddle's kernels do
not promise an order among equal values. Boxes are x1y1x2y2 pixels throughout.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

INSIDE_EPS = 1e-9      # check_points_inside_bboxes
ANCHOR_IOU_EPS = 1e-10  # iou_similarity (GT vs ATSS anchor boxes)
BATCH_IOU_EPS = 1e-9    # batch_iou_similarity (GT vs predicted boxes)


def _squeeze_last(x):
    """(B, M, 1) -> (B, M); (B, M) unchanged (Paddle passes labels and masks as (B, M, 1))."""
    x = jnp.asarray(x)
    return x[..., 0] if x.ndim == 3 else x


def box_iou(a, b, eps=ANCHOR_IOU_EPS):
    """Paddle's iou_similarity: IoU of every a (..., M, 4) with every b (..., N, 4) ->
    (..., M, N); areas of inverted boxes clipped to 0, eps added to the union."""
    a, b = a[..., :, None, :], b[..., None, :, :]
    lt = jnp.maximum(a[..., :2], b[..., :2])
    rb = jnp.minimum(a[..., 2:], b[..., 2:])
    overlap = jnp.prod(jnp.clip(rb - lt, 0), axis=-1)
    area_a = jnp.prod(jnp.clip(a[..., 2:] - a[..., :2], 0), axis=-1)
    area_b = jnp.prod(jnp.clip(b[..., 2:] - b[..., :2], 0), axis=-1)
    return overlap / (area_a + area_b - overlap + eps)


def batch_iou(gt, boxes, eps=BATCH_IOU_EPS):
    """Paddle's batch_iou_similarity: gt (B, M, 4) vs boxes (B, N, 4) -> (B, M, N)."""
    return box_iou(gt, boxes, eps)


def bbox_center(boxes):
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def points_inside_boxes(points, boxes, eps=INSIDE_EPS):
    """check_points_inside_bboxes: points (N, 2), boxes (B, M, 4) -> (B, M, N) float, 1 where
    min(x - x1, y - y1, x2 - x, y2 - y) > eps."""
    p = points[None, None]
    bx = boxes[:, :, None, :]
    delta = jnp.concatenate([p - bx[..., :2], bx[..., 2:] - p], axis=-1)
    return (jnp.min(delta, axis=-1) > eps).astype(boxes.dtype)


def _topk_mask(values, k, offset, num_total):
    """1 at the top-k (largest) of values (B, M, n) along the last axis, as a (B, M, num_total)
    mask with the indices shifted by offset; also the shifted indices (B, M, k). A level with
    fewer than k anchors (a small input's coarsest level; Paddle's topk would fail) gives all."""
    _, idx = jax.lax.top_k(values, min(int(k), values.shape[-1]))
    idx = idx + offset
    b, m = values.shape[:2]
    bi = jnp.arange(b)[:, None, None]
    mi = jnp.arange(m)[None, :, None]
    mask = jnp.zeros((b, m, num_total), values.dtype).at[bi, mi, idx].set(1.0)
    return mask, idx


def _resolve_conflicts(mask_positive, ious):
    """Where an anchor is positive for > 1 GT, keep only the argmax-IoU GT (over all slots)."""
    multiple = jnp.sum(mask_positive, axis=-2, keepdims=True) > 1
    best = jax.nn.one_hot(jnp.argmax(ious, axis=-2), ious.shape[-2], dtype=ious.dtype)
    return jnp.where(multiple, jnp.swapaxes(best, -1, -2), mask_positive)


def _force_gt_matching(mask_positive, ious, pad_gt_mask):
    """ATSS force_gt_matching: each real GT takes its max-IoU anchor where that anchor is the
    max of exactly one GT."""
    is_max = jax.nn.one_hot(jnp.argmax(ious, axis=-1), ious.shape[-1], dtype=ious.dtype)
    is_max = is_max * pad_gt_mask[..., None]
    single = jnp.sum(is_max, axis=-2, keepdims=True) == 1
    return jnp.where(single, is_max, mask_positive)


def _gather_targets(mask_positive, gt_labels, gt_boxes, bg_index, num_classes):
    """Assigned GT per anchor (argmax of the positive mask over slots) -> labels (B, N), boxes
    (B, N, 4), one-hot scores (B, N, C) with the bg column dropped, the positive count (B, N)
    and the assigned slot (B, N)."""
    gt_index = jnp.argmax(mask_positive, axis=-2)
    pos_sum = jnp.sum(mask_positive, axis=-2)
    labels = jnp.take_along_axis(gt_labels, gt_index, axis=1)
    labels = jnp.where(pos_sum > 0, labels, jnp.asarray(bg_index, labels.dtype))
    boxes = jnp.take_along_axis(gt_boxes, gt_index[..., None], axis=1)
    scores = jax.nn.one_hot(labels, num_classes + 1, dtype=gt_boxes.dtype)
    scores = jnp.delete(scores, bg_index, axis=-1, assume_unique_indices=True)
    return labels, boxes, scores, pos_sum, gt_index


def _background(batch, num_anchors, num_classes, bg_index, dtype):
    return (jnp.full((batch, num_anchors), bg_index, jnp.int32),
            jnp.zeros((batch, num_anchors, 4), dtype),
            jnp.zeros((batch, num_anchors, num_classes), dtype))


def _prepare(gt_labels, gt_boxes, pad_gt_mask):
    gt_boxes = jax.lax.stop_gradient(jnp.asarray(gt_boxes, jnp.float32))
    gt_labels = _squeeze_last(gt_labels).astype(jnp.int32)
    pad_gt_mask = _squeeze_last(pad_gt_mask).astype(gt_boxes.dtype)
    return gt_labels, gt_boxes, pad_gt_mask


def atss_assign(anchor_boxes, num_anchors_list, gt_labels, gt_boxes, pad_gt_mask, bg_index,
                gt_scores=None, pred_boxes=None, topk=9, num_classes=80,
                force_gt_matching=False):
    """ATSSAssigner.forward. anchor_boxes (N, 4) (the 5·stride squares), num_anchors_list the
    per-level counts (static), gt_labels (B, M[, 1]) int, gt_boxes (B, M, 4), pad_gt_mask
    (B, M[, 1]), gt_scores (B, M[, 1]) or None, pred_boxes (B, N, 4) pixels or None.
    Returns assigned_labels (B, N) int32, assigned_bboxes (B, N, 4), assigned_scores (B, N, C)."""
    gt_labels, gt_boxes, pad_gt_mask = _prepare(gt_labels, gt_boxes, pad_gt_mask)
    anchor_boxes = jnp.asarray(anchor_boxes, gt_boxes.dtype)
    n = anchor_boxes.shape[0]
    b, m = gt_boxes.shape[:2]
    if m == 0:
        return _background(b, n, num_classes, bg_index, gt_boxes.dtype)
    assert sum(num_anchors_list) == n, (num_anchors_list, n)

    ious = box_iou(gt_boxes, anchor_boxes[None], ANCHOR_IOU_EPS)              # (B, M, N)
    anchor_centers = bbox_center(anchor_boxes)
    diff = bbox_center(gt_boxes)[:, :, None, :] - anchor_centers[None, None]
    distances = jnp.sqrt(jnp.sum(diff * diff, axis=-1))

    masks, idxs, start = [], [], 0
    for count in num_anchors_list:          # per level: the topk nearest centres
        mask, idx = _topk_mask(-distances[..., start:start + count], topk, start, n)
        masks.append(mask)
        idxs.append(idx)
        start += count
    is_in_topk = sum(masks) * pad_gt_mask[..., None]
    topk_idxs = jnp.concatenate(idxs, axis=-1)                                 # (B, M, L*k)

    candidates = ious * is_in_topk
    cand = jnp.take_along_axis(candidates, topk_idxs, axis=-1)
    threshold = jnp.mean(cand, -1, keepdims=True) + jnp.std(cand, -1, keepdims=True, ddof=1)
    is_in_topk = jnp.where(candidates > threshold, is_in_topk, 0.0)

    is_in_gts = points_inside_boxes(anchor_centers, gt_boxes)
    mask_positive = is_in_topk * is_in_gts * pad_gt_mask[..., None]
    mask_positive = _resolve_conflicts(mask_positive, ious)
    if force_gt_matching:
        mask_positive = _force_gt_matching(mask_positive, ious, pad_gt_mask)

    labels, boxes, scores, pos_sum, gt_index = _gather_targets(
        mask_positive, gt_labels, gt_boxes, bg_index, num_classes)
    if pred_boxes is not None:
        pred_boxes = jax.lax.stop_gradient(jnp.asarray(pred_boxes, gt_boxes.dtype))
        pred_ious = batch_iou(gt_boxes, pred_boxes) * mask_positive
        scores = scores * jnp.max(pred_ious, axis=-2)[..., None]
    elif gt_scores is not None:
        gt_scores = jax.lax.stop_gradient(_squeeze_last(gt_scores).astype(gt_boxes.dtype))
        gathered = jnp.take_along_axis(gt_scores, gt_index, axis=1)
        scores = scores * jnp.where(pos_sum > 0, gathered, 0.0)[..., None]
    return labels, boxes, scores


def alignment_metric(pred_scores, pred_boxes, gt_labels, gt_boxes, alpha=1.0, beta=6.0):
    """TAL's score(GT class)^alpha * IoU(GT, pred)^beta -> (metric, ious), each (B, M, N)."""
    ious = batch_iou(gt_boxes, pred_boxes)
    cls = jnp.take_along_axis(jnp.swapaxes(pred_scores, 1, 2), gt_labels[..., None], axis=1)
    return jnp.power(cls, alpha) * jnp.power(ious, beta), ious


def task_aligned_assign(pred_scores, pred_boxes, anchor_points, num_anchors_list, gt_labels,
                        gt_boxes, pad_gt_mask, bg_index, topk=13, alpha=1.0, beta=6.0,
                        eps=1e-9):
    """TaskAlignedAssigner.forward (is_close_gt off, as PP-YOLOE). pred_scores (B, N, C) sigmoid
    probabilities, pred_boxes (B, N, 4) pixels, anchor_points (N, 2) pixels; num_anchors_list is
    unused (kept for Paddle's argument order; may be None); the GT arguments as atss_assign.
    Returns assigned_labels (B, N) int32, assigned_bboxes (B, N, 4), assigned_scores (B, N, C)."""
    del num_anchors_list
    gt_labels, gt_boxes, pad_gt_mask = _prepare(gt_labels, gt_boxes, pad_gt_mask)
    pred_scores = jax.lax.stop_gradient(jnp.asarray(pred_scores, gt_boxes.dtype))
    pred_boxes = jax.lax.stop_gradient(jnp.asarray(pred_boxes, gt_boxes.dtype))
    b, n, c = pred_scores.shape
    m = gt_boxes.shape[1]
    if m == 0:
        return _background(b, n, c, bg_index, gt_boxes.dtype)

    metric, ious = alignment_metric(pred_scores, pred_boxes, gt_labels, gt_boxes, alpha, beta)
    is_in_gts = points_inside_boxes(jnp.asarray(anchor_points, gt_boxes.dtype), gt_boxes)
    is_in_topk, _ = _topk_mask(metric * is_in_gts, topk, 0, n)
    is_in_topk = is_in_topk * pad_gt_mask[..., None]           # gather_topk_anchors' topk_mask
    mask_positive = is_in_topk * is_in_gts * pad_gt_mask[..., None]
    mask_positive = _resolve_conflicts(mask_positive, ious)

    labels, boxes, scores, _, _ = _gather_targets(mask_positive, gt_labels, gt_boxes, bg_index, c)
    metric = metric * mask_positive
    max_metric = jnp.max(metric, axis=-1, keepdims=True)
    max_iou = jnp.max(ious * mask_positive, axis=-1, keepdims=True)
    soft = jnp.max(metric / (max_metric + eps) * max_iou, axis=-2)
    return labels, boxes, scores * soft[..., None]


__all__ = ["alignment_metric", "atss_assign", "batch_iou", "bbox_center", "box_iou",
           "points_inside_boxes", "task_aligned_assign"]
