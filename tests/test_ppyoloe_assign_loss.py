"""PP-YOLOE's assigners and loss (jaxocr.losses.assigners / ppyoloe) on hand-made boxes.

The grid: a 64 x 64 image, levels of stride 16 (4 x 4 points, anchors 0..15) then 8 (8 x 8,
anchors 16..79); point (x, y) of level 1 is anchor 16 + 8 * (y - 4) / 8 + (x - 4) / 8. Classes
C = 4, background 4. Everything runs eagerly on tiny arrays (no jit), for the 2 shared cores.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxocr.losses import assigners
from jaxocr.losses.assigners import atss_assign, batch_iou, box_iou, task_aligned_assign
from jaxocr.losses.ppyoloe import (bbox_giou, df_loss, dfl_decode, distance2bbox, generate_anchors,
                                   giou_loss, loss_from_assign, normalise, ppyoloe_loss,
                                   varifocal_loss_sum)

C, BG = 4, 4
ANCHORS, POINTS, COUNTS, STRIDES = generate_anchors([(4, 4), (8, 8)], (16, 8))
N = ANCHORS.shape[0]

# jitted once per shape (and kept in the persistent compilation cache): cheaper than eager here
atss_assign = jax.jit(atss_assign, static_argnums=(1, 5),
                      static_argnames=("topk", "num_classes", "force_gt_matching"))
task_aligned_assign = jax.jit(task_aligned_assign, static_argnums=(3, 7),
                              static_argnames=("topk", "alpha", "beta", "eps"))
ppyoloe_loss = jax.jit(ppyoloe_loss, static_argnums=(4,),
                       static_argnames=("num_classes", "static_assigner"))


def p1(x, y):
    """Anchor index of level-1 (stride 8) point (x, y)."""
    return 16 + 8 * ((y - 4) // 8) + (x - 4) // 8


def positives(labels):
    return {int(i): int(labels[i]) for i in np.nonzero(np.asarray(labels) != BG)[0]}


def test_anchors():
    assert COUNTS == (16, 64) and N == 80
    np.testing.assert_array_equal(POINTS[[0, 1, 4, 16, p1(28, 36)]],
                                  [[8, 8], [24, 8], [8, 24], [4, 4], [28, 36]])
    np.testing.assert_array_equal(ANCHORS[0], [-32, -32, 48, 48])   # 5 * 16 square
    np.testing.assert_array_equal(ANCHORS[16], [-16, -16, 24, 24])  # 5 * 8 square
    np.testing.assert_array_equal(STRIDES[[0, 15, 16, 79], 0], [16, 16, 8, 8])


def test_iou_helpers():
    gt = jnp.array([[[0., 0., 2., 2.], [0., 0., 0., 0.]]])
    boxes = jnp.array([[[1., 1., 3., 3.], [0., 0., 2., 2.], [5., 5., 6., 6.]]])
    iou = batch_iou(gt, boxes)
    assert iou.shape == (1, 2, 3)
    np.testing.assert_allclose(iou[0, 0], [1 / 7, 4 / (4 + 1e-9), 0.0], rtol=1e-6)
    np.testing.assert_array_equal(iou[0, 1], 0.0)                    # a padded zero box
    np.testing.assert_allclose(box_iou(gt[0], boxes[0])[0, 0], 1 / 7, rtol=1e-6)


# ---- ATSS ---------------------------------------------------------------------------------

def atss_reference(labels, boxes, mask, topk=9):
    """ATSS with loops over one image (an independent reading of ATSSAssigner)."""
    ctr = (ANCHORS[:, :2] + ANCHORS[:, 2:]) / 2
    ious = np.asarray(box_iou(jnp.asarray(boxes), jnp.asarray(ANCHORS)))
    pos = np.zeros((len(boxes), N))
    for g in np.nonzero(mask)[0]:
        d = np.sqrt(((ctr - (boxes[g, :2] + boxes[g, 2:]) / 2) ** 2).sum(-1))
        cands = list(np.argsort(d[:16], kind="stable")[:topk])
        cands += list(16 + np.argsort(d[16:], kind="stable")[:topk])
        v = ious[g, cands]
        threshold = v.mean() + v.std(ddof=1)
        for a in cands:
            x, y = ctr[a]
            inside = min(x - boxes[g, 0], y - boxes[g, 1], boxes[g, 2] - x, boxes[g, 3] - y) > 1e-9
            pos[g, a] = float(ious[g, a] > threshold and inside)
    for a in range(N):
        if pos[:, a].sum() > 1:
            pos[:, a] = np.eye(len(boxes))[np.argmax(ious[:, a])]
    return {a: int(labels[np.argmax(pos[:, a])]) for a in range(N) if pos[:, a].any()}


def test_atss_single_gt_by_hand():
    """GT [16,16,40,42] (centre (28,29)). Level 0's 9 nearest anchors all contain the GT:
    IoU 624/6400 = 0.0975; level 1's 9 nearest are the 3 x 3 block x, y in {20,28,36}: IoU 0.39
    (the anchor square contains the GT) except the row y = 20 (576/1648 = 0.3495). mean + std
    (unbiased) = 0.237 + 0.144 = 0.381, so the positives are the six 0.39 anchors, all inside."""
    labels, boxes, scores = atss_assign(ANCHORS, COUNTS, jnp.array([[[2]]]),
                                        jnp.array([[[16., 16., 40., 42.]]]), jnp.ones((1, 1, 1)),
                                        BG, num_classes=C)
    expect = {p1(x, y): 2 for x in (20, 28, 36) for y in (28, 36)}
    assert positives(labels[0]) == expect
    pos = np.array(sorted(expect))
    np.testing.assert_array_equal(scores[0, pos], np.eye(C)[[2] * 6])   # one-hot: no pred_boxes
    assert float(jnp.sum(scores)) == 6.0
    np.testing.assert_array_equal(boxes[0], np.tile([16., 16., 40., 42.], (N, 1)))


def test_atss_threshold_uses_unbiased_std():
    """For GT [18,32,56,60] anchor (36,36)'s IoU 0.5205 lies between mean + population std
    (0.5199) and mean + unbiased std (0.5252): Paddle's Tensor.std (unbiased) excludes it."""
    labels, _, _ = atss_assign(ANCHORS, COUNTS, jnp.array([[1]]),
                               jnp.array([[[18., 32., 56., 60.]]]),
                               jnp.ones((1, 1)), BG, num_classes=C)
    assert positives(labels[0]) == {p1(36, 44): 1, p1(36, 52): 1}
    assert p1(36, 36) not in positives(labels[0])


GT_BOXES = np.array([[[16., 16., 40., 42.], [10., 23., 35., 49.], [0., 0., 0., 0.]],
                     [[8., 30., 60., 60.], [0., 0., 0., 0.], [0., 0., 0., 0.]]], np.float32)
GT_LABELS = np.array([[2, 0, 0], [3, 0, 0]], np.int32)
GT_MASK = np.array([[1., 1., 0.], [1., 0., 0.]], np.float32)


def test_atss_two_gts_conflicts_and_padding():
    """Alone, GT 0 (label 2) takes the six anchors x in {20,28,36}, y in {28,36} (above) and GT 1
    (label 0) takes x in {20,28}, y in {28,36,44}. The four both take go to the larger anchor
    IoU: (20,28), (28,28) to GT 0 (0.39 > 0.385), (20,36), (28,36) to GT 1 (0.406 > 0.39)."""
    labels, boxes, _ = atss_assign(ANCHORS, COUNTS, GT_LABELS[..., None], GT_BOXES,
                                   GT_MASK[..., None], BG, num_classes=C)
    expect = {p1(20, 28): 2, p1(28, 28): 2, p1(36, 28): 2, p1(36, 36): 2,
              p1(20, 36): 0, p1(28, 36): 0, p1(20, 44): 0, p1(28, 44): 0}
    assert positives(labels[0]) == expect
    for b in range(2):      # and the loop reference, which also covers image 1 (one real slot)
        assert positives(labels[b]) == atss_reference(GT_LABELS[b], GT_BOXES[b], GT_MASK[b])
    for a, lab in expect.items():
        np.testing.assert_array_equal(boxes[0, a], GT_BOXES[0, 0 if lab == 2 else 1])
    assert set(positives(labels[1]).values()) == {3}        # padded slots (label 0) claim nothing


def test_atss_scores_from_pred_boxes_and_gt_scores():
    gt = jnp.array([[[16., 16., 40., 42.]]])
    pred = jnp.tile(jnp.array([16., 16., 40., 36.]), (1, N, 1))            # IoU 480/624
    _, _, scores = atss_assign(ANCHORS, COUNTS, jnp.array([[2]]), gt, jnp.ones((1, 1)), BG,
                               pred_boxes=pred, num_classes=C)
    pos = [p1(x, y) for x in (20, 28, 36) for y in (28, 36)]
    np.testing.assert_allclose(scores[0, pos, 2], 480 / 624, rtol=1e-6)
    assert float(jnp.sum(scores)) == pytest.approx(6 * 480 / 624, rel=1e-6)
    _, _, scores = atss_assign(ANCHORS, COUNTS, jnp.array([[2]]), gt, jnp.ones((1, 1)), BG,
                               gt_scores=jnp.array([[0.3]]), num_classes=C)
    assert float(jnp.sum(scores)) == pytest.approx(6 * 0.3, rel=1e-6)


# ---- TAL ----------------------------------------------------------------------------------

FAR = [0., 0., 2., 2.]        # a predicted box that overlaps neither GT (IoU 0, metric 0)
A_BOX, B_BOX = [16., 16., 40., 42.], [30., 20., 60., 50.]


def tal_case():
    """Image 0: GT A (label 2), GT B (label 0), a padded slot whose box would claim the corner
    (label 1, mask 0). Image 1: no GT. Predictions: FAR boxes and score 0.1 everywhere except
      (28,28): A's box exactly, class-2 score 0.8       -> IoU_A 1
      (28,36): [16,16,40,36], class-2 0.9               -> IoU_A 480/624
      (36,28): [30,20,58,48], class-2 0.6, class-0 0.7  -> inside A and B; IoU_A 220/1188,
                                                          IoU_B 784/900: a conflict, goes to B
      (44,36): B's box exactly, class-0 0.5             -> IoU_B 1
      (52,36): [32,22,60,50], class-0 0.4               -> IoU_B 784/900
      (44,28): A's box exactly, class-2 0.99            -> but outside A (x = 44 > 40)
      (4,4):   the padded slot's box, class-1 0.99      -> ignored (padding)"""
    scores = np.full((2, N, C), 0.1, np.float32)
    boxes = np.tile(np.array(FAR, np.float32), (2, N, 1))
    rows = {(28, 28): (A_BOX, {2: 0.8}), (28, 36): ([16., 16., 40., 36.], {2: 0.9}),
            (36, 28): ([30., 20., 58., 48.], {2: 0.6, 0: 0.7}), (44, 36): (B_BOX, {0: 0.5}),
            (52, 36): ([32., 22., 60., 50.], {0: 0.4}), (44, 28): (A_BOX, {2: 0.99}),
            (4, 4): ([0., 0., 10., 10.], {1: 0.99})}
    for (x, y), (box, cls) in rows.items():
        boxes[0, p1(x, y)] = box
        for c, s in cls.items():
            scores[0, p1(x, y), c] = s
    gt_boxes = np.array([[A_BOX, B_BOX, [0., 0., 10., 10.]], [[0.] * 4] * 3], np.float32)
    gt_labels = np.array([[2, 0, 1], [0, 0, 0]], np.int32)
    mask = np.array([[1., 1., 0.], [0., 0., 0.]], np.float32)
    return scores, boxes, gt_labels, gt_boxes, mask


def test_tal_by_hand():
    scores, boxes, gt_labels, gt_boxes, mask = tal_case()
    labels, a_boxes, a_scores = task_aligned_assign(scores, boxes, POINTS, COUNTS, gt_labels,
                                                    gt_boxes, mask, BG, topk=3)
    a43, a51, a44, a53, a54 = p1(28, 28), p1(28, 36), p1(36, 28), p1(44, 36), p1(52, 36)
    # A's top-3 of metric * inside: (28,28), (28,36), (36,28); B's: (36,28), (44,36), (52,36);
    # (36,28) is claimed by both and goes to B (IoU 0.871 > 0.185)
    assert positives(labels[0]) == {a43: 2, a51: 2, a44: 0, a53: 0, a54: 0}
    assert positives(labels[1]) == {}
    np.testing.assert_array_equal(a_boxes[0, [a43, a51]], [A_BOX, A_BOX])
    np.testing.assert_array_equal(a_boxes[0, [a44, a53, a54]], [B_BOX] * 3)
    # metric = s * IoU^6; target = metric / (max metric of the GT + 1e-9) * max IoU of the GT,
    # both over the GT's positives after the conflict
    iou_a = [624 / (624 + 1e-9), 480 / (624 + 1e-9)]
    m_a = [0.8 * iou_a[0] ** 6, 0.9 * iou_a[1] ** 6]
    iou_b = [784 / (900 + 1e-9), 900 / (900 + 1e-9), 784 / (900 + 1e-9)]
    m_b = [0.7 * iou_b[0] ** 6, 0.5 * iou_b[1] ** 6, 0.4 * iou_b[2] ** 6]
    t_a = [m / (max(m_a) + 1e-9) * max(iou_a) for m in m_a]
    t_b = [m / (max(m_b) + 1e-9) * max(iou_b) for m in m_b]
    np.testing.assert_allclose(a_scores[0, [a43, a51], 2], t_a, rtol=1e-5)
    np.testing.assert_allclose(a_scores[0, [a44, a53, a54], 0], t_b, rtol=1e-5)
    assert float(jnp.sum(a_scores)) == pytest.approx(sum(t_a) + sum(t_b), rel=1e-5)
    assert float(jnp.sum(a_scores[1])) == 0.0


def test_tal_default_topk_zero_metric_ties():
    """topk 13 > the 3 nonzero-metric anchors of each GT: the other 10 picks are ties at metric
    0, taken lowest index first (jax.lax.top_k; Paddle's order among ties is its kernel's). Those
    inside their GT turn positive with target score 0: level-0 anchors 5 (24,24) and 9 (24,40)
    inside A, 6 (40,24) and 7 (56,24) inside B. (44,28), inside B, now makes B's top 13 with its
    small metric 0.1 * (220/1304)^6. Every other target score is as with topk 3."""
    scores, boxes, gt_labels, gt_boxes, mask = tal_case()
    labels, _, a_scores = task_aligned_assign(scores, boxes, POINTS, None, gt_labels, gt_boxes,
                                              mask, BG)
    _, _, scores3 = task_aligned_assign(scores, boxes, POINTS, None, gt_labels, gt_boxes, mask,
                                        BG, topk=3)
    main = {p1(28, 28): 2, p1(28, 36): 2, p1(36, 28): 0, p1(44, 36): 0, p1(52, 36): 0}
    assert positives(labels[0]) == {**main, 5: 2, 9: 2, 6: 0, 7: 0, p1(44, 28): 0}
    extra = p1(44, 28)
    m_b = 0.1 * (220 / (1304 + 1e-9)) ** 6
    assert float(a_scores[0, extra, 0]) == pytest.approx(m_b / (0.5 + 1e-9), rel=1e-4)
    np.testing.assert_allclose(a_scores.at[0, extra].set(0.0), scores3, rtol=1e-6)
    assert float(jnp.sum(a_scores[0, [5, 6, 7, 9]])) == 0.0


def test_no_gt_slots_and_all_padding_are_background():
    scores, boxes, *_ = tal_case()
    for m in (0, 3):
        args = (jnp.zeros((2, m), jnp.int32), jnp.zeros((2, m, 4)), jnp.zeros((2, m)))
        for labels, a_boxes, a_scores in (
                task_aligned_assign(scores, boxes, POINTS, COUNTS, *args, BG),
                atss_assign(ANCHORS, COUNTS, *args, BG, pred_boxes=boxes, num_classes=C)):
            assert labels.shape == (2, N) and a_scores.shape == (2, N, C)
            assert bool(jnp.all(labels == BG)) and float(jnp.abs(a_scores).sum()) == 0.0
            assert float(jnp.abs(a_boxes).sum()) == 0.0


def test_assigners_eager_jit_and_vmap():
    scores, boxes, gt_labels, gt_boxes, mask = tal_case()
    tal = lambda s, b, l, g, m: assigners.task_aligned_assign(s, b, POINTS, COUNTS, l, g, m, BG,
                                                              topk=3)
    per_image = lambda f: jax.jit(jax.vmap(lambda *a: f(*(x[None] for x in a))))
    eager = tal(scores, boxes, gt_labels, gt_boxes, mask)
    jitted = jax.jit(tal)(scores, boxes, gt_labels, gt_boxes, mask)
    mapped = per_image(tal)(scores, boxes, gt_labels, gt_boxes, mask)
    for e, j, v in zip(eager, jitted, mapped):
        np.testing.assert_array_equal(e, j)
        np.testing.assert_array_equal(e, v[:, 0])
    atss = lambda l, g, m: assigners.atss_assign(ANCHORS, COUNTS, l, g, m, BG, num_classes=C)
    for j, v in zip(jax.jit(atss)(GT_LABELS, GT_BOXES, GT_MASK),
                    per_image(atss)(GT_LABELS, GT_BOXES, GT_MASK)):
        np.testing.assert_array_equal(j, v[:, 0])


# ---- losses -------------------------------------------------------------------------------

def test_varifocal_by_hand():
    p = jnp.array([[0.2, 0.7, 0.4]])
    q = jnp.array([[0.0, 0.6, 0.0]])
    label = jnp.array([[0.0, 1.0, 0.0]])
    expect = (0.75 * 0.2 ** 2 * -math.log(0.8) + 0.6 * -(0.6 * math.log(0.7) + 0.4 * math.log(0.3))
              + 0.75 * 0.4 ** 2 * -math.log(0.6))
    assert float(varifocal_loss_sum(p, q, label)) == pytest.approx(expect, rel=1e-6)


def test_giou_by_hand():
    a = jnp.array([[0., 0., 2., 2.], [0., 0., 1., 1.], [1., 1., 3., 4.]])
    b = jnp.array([[1., 1., 3., 3.], [2., 0., 3., 1.], [1., 1., 3., 4.]])
    # overlap 1, union 7, hull 9; disjoint: union 2, hull 3; identical: 1
    np.testing.assert_allclose(bbox_giou(a, b), [1 / 7 - 2 / 9, -1 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(giou_loss(a, b), [1 - 1 / 7 + 2 / 9, 4 / 3, 0.0], atol=1e-6)


def test_dfl_by_hand_and_uniform():
    logits = jnp.log(jnp.arange(1., 18.))[None].repeat(4, 0)        # softmax ∝ 1..17
    target = jnp.array([2.3, 0.0, 15.99, 7.5])
    logp = np.log(np.arange(1, 18) / np.arange(1, 18).sum())
    sides = [-(0.7 * logp[2] + 0.3 * logp[3]), -logp[0], -(0.01 * logp[15] + 0.99 * logp[16]),
             -(0.5 * logp[7] + 0.5 * logp[8])]
    assert float(df_loss(logits, target)) == pytest.approx(np.mean(sides), rel=1e-5)
    flat = jnp.arange(68.) / 10                                       # (68,) == (4, 17) layout
    np.testing.assert_array_equal(dfl_decode(flat), dfl_decode(flat.reshape(4, 17)))
    uniform = jnp.ones((3, 4, 17))
    np.testing.assert_allclose(df_loss(uniform, jnp.array([[0.2, 3.0, 9.7, 15.99]] * 3)),
                               math.log(17), rtol=1e-6)


def init_predictions(batch=2):
    """The head at init: zero conv weights -> cls logit = bias -log(99) (p = 0.01), regression
    logits = bias 1.0 (uniform bins, ltrb = 8 strides)."""
    return jnp.full((batch, N, C), 0.01), jnp.ones((batch, N, 68))


@pytest.mark.parametrize("static", [True, False])
def test_loss_at_init_dfl_is_ln17(static):
    scores, distri = init_predictions()
    np.testing.assert_allclose(dfl_decode(distri), 8.0, rtol=1e-6)
    gt_boxes = jnp.array([[A_BOX, B_BOX, [0.] * 4], [[8., 8., 60., 60.], [0.] * 4, [0.] * 4]])
    mask = jnp.array([[1., 1., 0.], [1., 0., 0.]])
    sums = ppyoloe_loss(scores, distri, ANCHORS, POINTS, COUNTS, STRIDES,
                        jnp.array([[2, 0, 0], [3, 0, 0]]), gt_boxes, mask, num_classes=C,
                        static_assigner=static)
    assert float(sums["num_pos"]) > 0 and float(sums["scores_sum"]) > 0
    # every positive's bbox weight is its target score: dfl_sum = ln 17 * scores_sum
    dfl_expect = math.log(17) * float(sums["scores_sum"])
    assert float(sums["dfl_sum"]) == pytest.approx(dfl_expect, rel=1e-5)
    loss = normalise(sums, sums["scores_sum"], 1)
    S = float(sums["scores_sum"])
    assert float(loss["loss_dfl"]) == pytest.approx(math.log(17) * S / max(S, 1.0), rel=1e-5)
    assert float(loss["loss"]) == pytest.approx(
        float(loss["loss_cls"]) + 2.5 * float(loss["loss_iou"]) + 0.5 * float(loss["loss_dfl"]),
        rel=1e-6)


def test_empty_image_loss():
    scores, distri = init_predictions(1)
    sums = ppyoloe_loss(scores, distri, ANCHORS, POINTS, COUNTS, STRIDES,
                        jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2, 4)), jnp.zeros((1, 2)),
                        num_classes=C, static_assigner=False)
    for k in ("iou_sum", "dfl_sum", "l1_sum", "num_pos", "scores_sum"):
        assert float(sums[k]) == 0.0, k
    # all negatives: VFL = sum 0.75 p^2 * -log(1 - p)
    expect = N * C * 0.75 * 0.01 ** 2 * -math.log(0.99)
    assert float(sums["cls_sum"]) == pytest.approx(expect, rel=1e-5)
    loss = normalise(sums, sums["scores_sum"], 1)       # clipped to 1: no division by zero
    assert float(loss["loss"]) == pytest.approx(expect, rel=1e-5)
    assert float(loss["loss_l1"]) == 0.0


def test_loss_sums_by_hand():
    """loss_from_assign on two anchors with given targets (stride-unit boxes)."""
    pred_scores = jnp.array([[[0.3, 0.6], [0.2, 0.1]]])
    distri = jnp.ones((1, 2, 68))                                     # ltrb 8 each side
    points = jnp.array([[10., 10.], [30., 30.]])
    pred_boxes = jnp.array([[[2., 2., 18., 18.], [22., 22., 38., 38.]]])
    labels = jnp.array([[1, 2]])                                      # anchor 0 positive (C = 2)
    target = jnp.array([[[4., 5., 20., 18.], [0., 0., 0., 0.]]])
    a_scores = jnp.array([[[0.0, 0.5], [0.0, 0.0]]])
    sums = loss_from_assign(pred_scores, distri, pred_boxes, points, labels, target, a_scores, 2)
    giou = float(bbox_giou(pred_boxes[0, 0], target[0, 0]))
    assert float(sums["iou_sum"]) == pytest.approx((1 - giou) * 0.5, rel=1e-6)
    assert float(sums["dfl_sum"]) == pytest.approx(math.log(17) * 0.5, rel=1e-6)
    assert float(sums["l1_sum"]) == pytest.approx(2 + 3 + 2 + 0, rel=1e-6)
    assert float(sums["num_pos"]) == 1 and float(sums["scores_sum"]) == 0.5
    assert float(normalise(sums, 0.5, 1)["loss_l1"]) == pytest.approx(7 / 4)


# ---- data-parallel normalisation ----------------------------------------------------------

def _tiny_model(key):
    k1, k2, k3 = jax.random.split(key, 3)
    feats = jax.random.normal(k1, (2, N, 3))
    params = {"cls": 0.3 * jax.random.normal(k2, (3, C)),
              "reg": 0.3 * jax.random.normal(k3, (3, 68))}
    return feats, params


def _sums(params, feats, targets):
    """A shared linear 'head' on per-anchor features; targets: fixed (labels, boxes, scores) for
    loss_from_assign, or (gt_labels, gt_boxes, mask) for ppyoloe_loss (TAL)."""
    scores = jax.nn.sigmoid(feats @ params["cls"] - 2.0)
    distri = feats @ params["reg"] + 1.0
    if targets[0].ndim == 2 and targets[0].shape[1] == N:
        points_s = jnp.asarray(POINTS / STRIDES)
        pred = distance2bbox(points_s, dfl_decode(distri))
        return loss_from_assign(scores, distri, pred, points_s, *targets, C)
    return ppyoloe_loss(scores, distri, ANCHORS, POINTS, COUNTS, STRIDES, *targets,
                        num_classes=C, static_assigner=False)


_scores_sum = jax.jit(lambda p, f, t: _sums(p, f, t)["scores_sum"])
_rank_loss = lambda p, f, t, S, world: normalise(_sums(p, f, t), S, world)["loss"]
_rank_grad = jax.jit(jax.grad(_rank_loss), static_argnums=4)


def _rank_grads(params, feats, targets, world):
    """Paddle's DataParallel: rank r's loss = its sums / clip(S_all / world, 1), S_all the
    all-reduced scores sum; the ranks' gradients averaged."""
    parts = [(feats[i], tuple(t[i] for t in targets)) for i in np.array_split(np.arange(2), world)]
    S = sum(_scores_sum(params, f, t) for f, t in parts)
    grads = [_rank_grad(params, f, t, S, world) for f, t in parts]
    return jax.tree.map(lambda *g: sum(g) / world, *grads), float(S)


def test_two_ranks_average_equals_one_rank():
    feats, params = _tiny_model(jax.random.PRNGKey(0))
    # fixed targets with S = 6 (S / 2 >= 1: no clipping): 3 positives of score 1 per image
    labels = np.full((2, N), C, np.int32)
    labels[:, [p1(20, 28), p1(28, 28), p1(36, 36)]] = [[2], [0]]
    a_scores = jax.nn.one_hot(labels, C + 1)[..., :C]
    boxes = np.tile(np.array([3., 3., 5., 5.], np.float32), (2, N, 1))
    targets = (jnp.asarray(labels), jnp.asarray(boxes), a_scores)
    g1, s1 = _rank_grads(params, feats, targets, 1)
    g2, s2 = _rank_grads(params, feats, targets, 2)
    assert s1 == s2 == 6.0
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-8)
        assert float(jnp.abs(a).max()) > 0


def test_two_ranks_equal_global_objective():
    """Whatever S (here the TAL targets of a random model: S < 2, clipping active), averaging the
    ranks' gradients is the gradient of normalise(global sums, S, world)['loss'] / world."""
    feats, params = _tiny_model(jax.random.PRNGKey(1))
    gt_boxes = jnp.array([[A_BOX, B_BOX], [[8., 30., 60., 60.], [0.] * 4]])
    targets = (jnp.array([[2, 0], [3, 0]]), gt_boxes, jnp.array([[1., 1.], [1., 0.]]))
    g2, S = _rank_grads(params, feats, targets, 2)
    assert 0 < S < 2
    g = jax.tree.map(lambda x: x / 2, _rank_grad(params, feats, targets, S, 2))
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-8)
