"""DBLoss as PaddleOCR 2.7's (`ppocr/losses/det_db_loss.py`, `det_basic_loss.py`), in jnp.

    loss = alpha * L_shrink + beta * L_threshold + L_binary

- L_shrink: `BalanceLoss(main_loss_type, negative_ratio=ohem_ratio)` of the shrink (probability)
  map against `shrink_map` under `shrink_mask`.
  * `DiceLoss` (every PaddleOCR DB config): Paddle's BalanceLoss computes the *scalar* Dice loss
    first, multiplies the positive / negative masks by that scalar and "mines" the top
    negatives of a constant. With 0/1 maps (what MakeShrinkMap writes) the result is
    ``dice * (P + N) / (P + N + eps)`` (``dice * P / (P + eps)`` when N = 0), where
    ``P = int(sum(gt * mask))`` and ``N = int(min(sum((1 - gt) * mask), ratio * P))``.
    That closed form is used here (no top-k); `balance_topk` computes it the long way and the
    tests hold the two equal.
  * `BCELoss`: per-pixel binary cross-entropy (log clamped at -100, as Paddle's kernel), the
    positives plus the N largest negative losses over the whole batch (OHEM), divided by
    P + N + eps. N depends on the data, so the top-N is a full sort at a fixed shape and a mask
    on the sorted index (``index < N``).
  * `balance_loss: false` returns the main loss unbalanced: the Dice scalar. With BCELoss Paddle
    returns a per-pixel map there (no scalar loss); that combination is refused.
  * BalanceLoss is built without DBLoss's `eps`: the shrink term uses 1e-6 whatever `eps` is.
- L_threshold: MaskL1Loss, ``sum(|p - g| * m) / (sum(m) + eps)`` under `threshold_mask`.
- L_binary: DiceLoss of the approximate binary map against `shrink_map` under `shrink_mask`
  (the shrink mask, not the threshold mask — as Paddle), ``1 - 2 sum(pgm) / (sum(pm) + sum(gm)
  + eps)``.

Every sum runs over the whole batch (Paddle's losses are ratios of batch sums, not means of
per-sample losses). Paddle's `loss_cbn` (zero unless the model emits `distance_maps`) and the
`aux_*` heads of later releases are not part of 2.7's DB configs and are left out.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

MAIN_LOSS_TYPES = ("DiceLoss", "BCELoss")
BALANCE_EPS = 1e-6


def dice_loss(pred, gt, mask, eps=1e-6):
    """Paddle's DiceLoss: one scalar over everything given."""
    inter = jnp.sum(pred * gt * mask)
    union = jnp.sum(pred * mask) + jnp.sum(gt * mask) + eps
    return 1.0 - 2.0 * inter / union


def mask_l1_loss(pred, gt, mask, eps=1e-6):
    """Paddle's MaskL1Loss."""
    return jnp.sum(jnp.abs(pred - gt) * mask) / (jnp.sum(mask) + eps)


def _clamped_logs(pred):
    safe = lambda x: jnp.log(jnp.where(x > 0, x, 1.0))
    log_p = jnp.where(pred > 0, jnp.maximum(safe(pred), -100.0), -100.0)
    log_1p = jnp.where(pred < 1, jnp.maximum(safe(1.0 - pred), -100.0), -100.0)
    return log_p, log_1p


@jax.custom_vjp
def bce_map(pred, gt):
    """Per-pixel binary cross-entropy as paddle.nn.functional.binary_cross_entropy (reduction
    'none'): each log clamped at -100; gradient as Paddle's kernel,
    (pred - gt) / max(pred (1 - pred), 1e-12), finite for saturated probabilities 0 and 1."""
    log_p, log_1p = _clamped_logs(pred)
    return -(gt * log_p + (1.0 - gt) * log_1p)


def _bce_fwd(pred, gt):
    return bce_map(pred, gt), (pred, gt)


def _bce_bwd(res, g):
    pred, gt = res
    log_p, log_1p = _clamped_logs(pred)
    d_pred = g * (pred - gt) / jnp.maximum(pred * (1.0 - pred), 1e-12)
    return d_pred, g * (log_1p - log_p)


bce_map.defvjp(_bce_fwd, _bce_bwd)


def balance_counts(gt, mask, negative_ratio=3):
    """(positive_count, negative_count) as Paddle: int(sum(gt*mask)), int(min(sum((1-gt)*mask),
    ratio * positive_count)) — truncated to whole numbers, kept as float32 arrays."""
    positive = gt * mask
    negative = (1.0 - gt) * mask
    p = jnp.floor(jnp.sum(positive))
    n = jnp.floor(jnp.minimum(jnp.sum(negative), p * negative_ratio))
    return p, n


def balance_topk(loss_map, gt, mask, negative_ratio=3, eps=1e-6):
    """BalanceLoss's balancing of a per-pixel loss map (broadcastable to gt), with the top-N
    negatives over the whole batch taken by a sort at a fixed shape and a mask on the index."""
    positive = gt * mask
    negative = (1.0 - gt) * mask
    p, n = balance_counts(gt, mask, negative_ratio)
    loss_map = jnp.broadcast_to(loss_map, gt.shape)
    pos_sum = jnp.sum(positive * loss_map)
    neg = jnp.reshape(negative * loss_map, (-1,))
    neg_sorted = -jnp.sort(-neg)  # descending
    keep = jnp.arange(neg_sorted.shape[0], dtype=jnp.float32) < n
    top_sum = jnp.sum(jnp.where(keep, neg_sorted, 0.0))
    with_neg = (pos_sum + top_sum) / (p + n + eps)
    without = pos_sum / (p + eps)
    return jnp.where(n > 0, with_neg, without)


def balance_dice(pred, gt, mask, negative_ratio=3, eps=1e-6):
    """BalanceLoss(main_loss_type='DiceLoss') in closed form (0/1 gt and mask; see the module
    docstring). Equal to ``balance_topk(dice_loss(...), gt, mask)`` for such maps."""
    dice = dice_loss(pred, gt, mask, eps)
    p, n = balance_counts(gt, mask, negative_ratio)
    # the top-N of N negatives all equal to `dice` (>= 0 for probabilities); max() keeps the
    # sort's answer should it ever be negative
    with_neg = (p * dice + n * jnp.maximum(dice, 0.0)) / (p + n + eps)
    return jnp.where(n > 0, with_neg, p * dice / (p + eps))


def db_loss(predicts, batch, balance_loss=True, main_loss_type="DiceLoss", alpha=5, beta=10,
            ohem_ratio=3, eps=1e-6, **unused):
    """PaddleOCR's DBLoss.

    predicts: {'maps': (B, H, W, 3)} — shrink probability, threshold, approximate binary map
      (channels last; Paddle's (B, 3, H, W) channel order).
    batch: 'threshold_map', 'threshold_mask', 'shrink_map', 'shrink_mask', each (B, H, W);
      optional 'mask' (B,): per-sample weight, 0 for padding rows, which then add nothing to
      any sum (their masks are multiplied by it).
    Returns {'loss', 'loss_shrink_maps', 'loss_threshold_maps', 'loss_binary_maps'} (scalars,
    float32; the shrink and threshold parts already scaled by alpha and beta, as Paddle).
    Extra keyword arguments (PaddleOCR config keys with no effect here) are ignored.
    """
    if main_loss_type not in MAIN_LOSS_TYPES:
        raise ValueError(f"Loss.main_loss_type: {main_loss_type!r} not supported; "
                         f"known: {', '.join(MAIN_LOSS_TYPES)}")
    if main_loss_type == "BCELoss" and not balance_loss:
        raise ValueError("Loss: main_loss_type BCELoss with balance_loss false is refused "
                         "(PaddleOCR returns a per-pixel loss map there, not a scalar)")
    maps = jnp.asarray(predicts["maps"])
    maps = maps.astype(jnp.promote_types(maps.dtype, jnp.float32))
    shrink, thresh, binary = maps[..., 0], maps[..., 1], maps[..., 2]
    f32 = lambda k: jnp.asarray(batch[k], jnp.float32)
    t_map, t_mask = f32("threshold_map"), f32("threshold_mask")
    s_map, s_mask = f32("shrink_map"), f32("shrink_mask")
    if batch.get("mask") is not None:
        w = jnp.asarray(batch["mask"], jnp.float32)[:, None, None]
        t_mask, s_mask = t_mask * w, s_mask * w

    # DBLoss builds its BalanceLoss without passing eps on: the shrink term (its Dice included)
    # always uses BalanceLoss's default 1e-6, whatever Loss.eps says
    if main_loss_type == "DiceLoss":
        if balance_loss:
            l_shrink = balance_dice(shrink, s_map, s_mask, ohem_ratio, BALANCE_EPS)
        else:
            l_shrink = dice_loss(shrink, s_map, s_mask, BALANCE_EPS)
    else:
        l_shrink = balance_topk(bce_map(shrink, s_map), s_map, s_mask, ohem_ratio, BALANCE_EPS)
    l_thresh = mask_l1_loss(thresh, t_map, t_mask, eps)
    l_binary = dice_loss(binary, s_map, s_mask, eps)
    l_shrink = alpha * l_shrink
    l_thresh = beta * l_thresh
    return {"loss": l_shrink + l_thresh + l_binary, "loss_shrink_maps": l_shrink,
            "loss_threshold_maps": l_thresh, "loss_binary_maps": l_binary}
