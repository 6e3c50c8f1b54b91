"""PP-YOLOE's post-process as PaddleDetection release/2.7.1's, on the device with fixed shapes.

`ppdet/modeling/heads/ppyoloe_head.py` PPYOLOEHead.post_process: the decoded boxes (input
pixels, x1y1x2y2) are divided by scale_factor ([sy, sx] per image, so x / sx and y / sy) and
go through `ppdet/modeling/layers.py` MultiClassNMS, i.e. Paddle's `multiclass_nms3` op (CPU
kernel `paddle/phi/kernels/cpu/multiclass_nms3_kernel.cc`). PP-YOLOE's head does not clip
the boxes to the image (only the RCNN-style BBoxPostProcess does); `rescale_boxes` clips only
when given `im_shape`. `exclude_nms` (Paddle's benchmark switch) is `rescale_boxes` alone.

`multiclass_nms` works as the CPU kernel, for each image:

- per class c (not `background_label`): candidates are the boxes whose score is strictly
  > score_threshold, in score-descending order, ties by box index (Paddle's stable_sort),
  the first nms_top_k (all when < 0);
- greedy NMS over them: a candidate is kept unless its IoU with an already kept box of the
  same class is > nms_threshold (Paddle keeps when `overlap <= threshold`, so a NaN IoU
  suppresses here as there);
- the IoU is Paddle's JaccardOverlap: 0 when the boxes are strictly apart (touching boxes are
  not apart); otherwise inter = (min x2 - max x1 + n)(min y2 - max y1 + n), area =
  (x2 - x1 + n)(y2 - y1 + n) (0 for a box with x2 < x1 or y2 < y1), with n = 1 when
  `normalized` is False (PP-YOLOE's setting: pixel coordinates, the +1 "inclusive pixel"
  convention, applied to the boxes already divided by scale_factor) and 0 when True;
- then over all classes the keep_top_k highest scores (all when < 0), ties by class then by
  the within-class order (Paddle's stable_sort over the class-major list).

Output: fixed K = keep_top_k rows per image sorted by score descending (ties: class, then
within-class order); rows past the detections are padding with `valid` False, score 0,
box 0, class and index -1. The kept set is exactly Paddle's; Paddle's CPU op lists it
class-major instead (same order within a class, so COCOeval, which ranks per image and
category, sees no difference). Paddle's later GPU kernel (2023, eta 1) sorts by score as here
but its caffe-style IoU gives disjoint pixel boxes a tiny positive overlap; this module follows
the CPU kernel, which produced the published numbers. nms_eta < 1 (adaptive threshold) is not
supported (PP-YOLOE uses 1).

Fixed-shape formulation and cost (B images, N boxes, C classes, K = nms_top_k, T = block_size):

1. lax.top_k over N of each class's thresholded scores -> (B, C, K) candidates (scores <=
   threshold become -inf, so real candidates come first; lax.top_k puts the lower index first
   among equal values, which is Paddle's stable tie-break).
2. Greedy NMS, blocked: the K candidates are cut into ceil(K / T) blocks of T. For block b
   (in order): its candidates still alive are resolved among themselves by iterating
   keep_t = alive_t & not any(keep_s & IoU(s, t) > thr, s < t) to its fixed point (exactly
   greedy: row t is final once rows < t are, so at most T rounds; few in practice, as the
   rounds needed are the length of the longest suppression chain); then the kept boxes of
   block b mark the alive candidates of each later block b' they overlap. Only (B, C, T, T)
   IoU tiles ever exist: for B=2, C=80, T=128, 2.6 M pairs (~10 MB float32) instead of the
   (B, C, K, K) = 160 M pairs (640 MB) of a full IoU matrix. Work is the upper triangle of
   block pairs, ~B·C·K²/2·(1 + T/K) IoUs in the worst case (every candidate above the
   threshold, e.g. an untrained head whose scores sit at the 0.01 prior); the loops stop at the
   last block that holds any candidate (for any image and class), so a trained model whose
   classes have few boxes above 0.01 pays for those only. Loops are lax.while_loop/fori_loop
   with data-dependent trip counts, fine under jit, vmap and shard_map (no collectives).
3. lax.top_k over the (B, C·K) kept scores (the rest -inf) -> the keep_top_k rows.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _jaccard(a: Array, b: Array, normalized: bool) -> Array:
    """Paddle's JaccardOverlap(box1=a, box2=b) elementwise over broadcast (..., 4) boxes."""
    ax1, ay1, ax2, ay2 = (a[..., i] for i in range(4))
    bx1, by1, bx2, by2 = (b[..., i] for i in range(4))
    norm = jnp.float32(0.0 if normalized else 1.0)
    apart = (bx1 > ax2) | (bx2 < ax1) | (by1 > ay2) | (by2 < ay1)
    inter = ((jnp.minimum(ax2, bx2) - jnp.maximum(ax1, bx1) + norm)
             * (jnp.minimum(ay2, by2) - jnp.maximum(ay1, by1) + norm))

    def area(x1, y1, x2, y2):
        wh = (x2 - x1 + norm) * (y2 - y1 + norm) if not normalized else (x2 - x1) * (y2 - y1)
        return jnp.where((x2 < x1) | (y2 < y1), jnp.float32(0.0), wh)

    union = area(ax1, ay1, ax2, ay2) + area(bx1, by1, bx2, by2) - inter
    return jnp.where(apart, jnp.float32(0.0), inter / jnp.where(apart, 1.0, union))


def _suppresses(a: Array, b: Array, thr: float, normalized: bool) -> Array:
    """(..., T, 4), (..., U, 4) -> (..., T, U) bool: NOT (IoU <= thr), Paddle's negated keep."""
    iou = _jaccard(a[..., :, None, :], b[..., None, :, :], normalized)
    return jnp.logical_not(iou <= jnp.float32(thr))


def _greedy_blocks(cand_boxes: Array, valid: Array, thr: float, normalized: bool) -> Array:
    """Greedy NMS along the candidate axis. cand_boxes (B, C, nb, T, 4) in priority order,
    valid (B, C, nb, T) -> keep (B, C, nb, T) bool."""
    t = valid.shape[-1]
    earlier = jnp.arange(t)[:, None] < jnp.arange(t)[None, :]          # [s, t]: s before t
    # blocks hold a prefix of valid candidates per class: stop after the last non-empty one
    n_active = jnp.sum(jnp.any(valid, axis=(0, 1, 3)).astype(jnp.int32))

    def block(b, state):
        keep, alive = state
        bx = lax.dynamic_index_in_dim(cand_boxes, b, axis=2, keepdims=False)   # (B, C, T, 4)
        cand = lax.dynamic_index_in_dim(alive, b, axis=2, keepdims=False)      # (B, C, T)
        over = _suppresses(bx, bx, thr, normalized) & earlier                 # (B, C, T, T)

        def resolve_cond(s):
            return s[1]

        def resolve_body(s):
            k, _ = s
            new = cand & ~jnp.any(k[..., :, None] & over, axis=-2)
            return new, jnp.any(new != k)

        keep_b, _ = lax.while_loop(resolve_cond, resolve_body, (cand, jnp.array(True)))
        keep = lax.dynamic_update_index_in_dim(keep, keep_b, b, axis=2)

        def later(j, alive):
            bj = lax.dynamic_index_in_dim(cand_boxes, j, axis=2, keepdims=False)
            hit = jnp.any(keep_b[..., :, None] & _suppresses(bx, bj, thr, normalized), axis=-2)
            aj = lax.dynamic_index_in_dim(alive, j, axis=2, keepdims=False)
            return lax.dynamic_update_index_in_dim(alive, aj & ~hit, j, axis=2)

        alive = lax.fori_loop(b + 1, n_active, later, alive)
        return keep, alive

    keep0 = jnp.zeros_like(valid)
    keep, _ = lax.fori_loop(0, n_active, block, (keep0, valid))
    return keep


@functools.partial(jax.jit, static_argnames=(
    "score_threshold", "nms_top_k", "keep_top_k", "nms_threshold", "normalized", "nms_eta",
    "background_label", "block_size"))
def multiclass_nms(boxes: Array, scores: Array, score_threshold: float = 0.01,
                   nms_top_k: int = 1000, keep_top_k: int = 300, nms_threshold: float = 0.7,
                   normalized: bool = False, nms_eta: float = 1.0, background_label: int = -1,
                   block_size: int = 128) -> dict[str, Array]:
    """Paddle's multiclass_nms3 (see the module docstring) with a fixed output size.

    boxes (B, N, 4) x1y1x2y2 (source-image pixels for PP-YOLOE: after `rescale_boxes`),
    scores (B, N, C) per-class probabilities (sigmoid; Paddle's layout is (B, C, N)).
    Returns {'boxes' (B, K, 4) f32, 'scores' (B, K) f32, 'classes' (B, K) int32 (-1 padding),
    'index' (B, K) int32 (the box's row in N, Paddle's nms_keep_idx within the image; -1
    padding), 'valid' (B, K) bool, 'num' (B,) int32}, K = keep_top_k (C · nms_top_k when
    keep_top_k < 0), rows sorted by score descending.
    """
    if nms_eta < 1.0:
        raise NotImplementedError("multiclass_nms: nms_eta < 1 (adaptive NMS threshold)")
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.ndim != 3 \
            or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"multiclass_nms: boxes (B, N, 4) and scores (B, N, C) expected, got "
                         f"{boxes.shape} and {scores.shape}")
    boxes = boxes.astype(jnp.float32)
    scores = scores.astype(jnp.float32)
    bsz, n, c = scores.shape
    if nms_top_k < 0:
        k = n
    else:  # a symbolic n (a serving export) is constrained to n >= nms_top_k
        k = min(nms_top_k, n) if isinstance(n, int) else nms_top_k
    k_out = c * max(k, 0) if keep_top_k < 0 else keep_top_k
    neg = jnp.float32(-jnp.inf)

    if k > 0 and c > 0:
        s = jnp.swapaxes(scores, 1, 2)                                        # (B, C, N)
        s = jnp.where(s > jnp.float32(score_threshold), s, neg)
        if 0 <= background_label < c:
            s = s.at[:, background_label].set(neg)
        cand_s, cand_i = lax.top_k(s, k)                                      # (B, C, K)
        t = max(1, min(block_size, k))
        nb = -(-k // t)
        pad = nb * t - k
        if pad:
            cand_s = jnp.pad(cand_s, ((0, 0), (0, 0), (0, pad)), constant_values=-jnp.inf)
            cand_i = jnp.pad(cand_i, ((0, 0), (0, 0), (0, pad)))
        kp = nb * t
        valid = cand_s > neg
        cand_b = jax.vmap(lambda bx, ix: bx[ix])(boxes, cand_i)               # (B, C, Kp, 4)
        keep = _greedy_blocks(cand_b.reshape(bsz, c, nb, t, 4), valid.reshape(bsz, c, nb, t),
                              nms_threshold, normalized).reshape(bsz, c, kp)
        flat = jnp.where(keep, cand_s, neg).reshape(bsz, c * kp)
        k_take = min(k_out, c * kp)
        top_s, top_f = lax.top_k(flat, k_take)                                # (B, k_take)
        cls = top_f // kp
        idx = jnp.take_along_axis(cand_i.reshape(bsz, c * kp), top_f, axis=1)
        ok = top_s > neg
        sel_boxes = jnp.take_along_axis(boxes, idx[..., None], axis=1)
        if k_take < k_out:
            extra = k_out - k_take
            top_s = jnp.pad(top_s, ((0, 0), (0, extra)), constant_values=-jnp.inf)
            cls, idx = (jnp.pad(a, ((0, 0), (0, extra))) for a in (cls, idx))
            ok = jnp.pad(ok, ((0, 0), (0, extra)))
            sel_boxes = jnp.pad(sel_boxes, ((0, 0), (0, extra), (0, 0)))
    else:
        top_s = jnp.zeros((bsz, k_out), jnp.float32)
        cls = idx = jnp.zeros((bsz, k_out), jnp.int32)
        ok = jnp.zeros((bsz, k_out), bool)
        sel_boxes = jnp.zeros((bsz, k_out, 4), jnp.float32)

    minus1 = jnp.int32(-1)
    return {
        "boxes": jnp.where(ok[..., None], sel_boxes, jnp.float32(0.0)),
        "scores": jnp.where(ok, top_s, jnp.float32(0.0)),
        "classes": jnp.where(ok, cls.astype(jnp.int32), minus1),
        "index": jnp.where(ok, idx.astype(jnp.int32), minus1),
        "valid": ok,
        "num": jnp.sum(ok, axis=1, dtype=jnp.int32),
    }


def rescale_boxes(boxes: Array, scale_factor: Array, im_shape: Array | None = None) -> Array:
    """Input-image boxes (B, N, 4) x1y1x2y2 -> source-image pixels, as PPYOLOEHead.post_process:
    divided by [sx, sy, sx, sy] from scale_factor (B, 2) = [sy, sx] (resized / source size).

    With im_shape (B, 2) = [h, w] of the network input, the boxes are also clipped to
    [0, src_w] x [0, src_h] with src = floor(im_shape / scale_factor + 0.5), BBoxPostProcess's
    convention. PP-YOLOE's head does not clip: leave im_shape None for Paddle's results (and
    for the boxes that go into NMS, whose IoU clipping would change).
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    sf = jnp.asarray(scale_factor, jnp.float32)
    sy, sx = sf[:, 0], sf[:, 1]
    out = boxes / jnp.stack([sx, sy, sx, sy], axis=-1)[:, None, :]
    if im_shape is not None:
        src = jnp.floor(jnp.asarray(im_shape, jnp.float32) / sf + 0.5)
        h, w = src[:, 0, None], src[:, 1, None]
        x = jnp.clip(out[..., 0::2], 0.0, w[..., None])
        y = jnp.clip(out[..., 1::2], 0.0, h[..., None])
        out = jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)
    return out


def ppyoloe_post_process(pred_bboxes: Array, pred_scores: Array, scale_factor: Array,
                         exclude_nms: bool = False, **nms_kwargs):
    """PPYOLOEHead.post_process: pred_bboxes (B, N, 4) in input pixels (decoded, × stride),
    pred_scores (B, N, C) sigmoid. exclude_nms: (source-pixel boxes, scores); else
    `multiclass_nms` of them with nms_kwargs (MultiClassNMS's settings)."""
    boxes = rescale_boxes(pred_bboxes, scale_factor)
    if exclude_nms:
        return boxes, pred_scores
    return multiclass_nms(boxes, pred_scores, **nms_kwargs)


__all__ = ["multiclass_nms", "ppyoloe_post_process", "rescale_boxes"]
