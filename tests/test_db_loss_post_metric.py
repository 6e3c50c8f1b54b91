"""DBLoss, DBPostProcess and DetMetric against PaddleOCR 2.7's rules."""
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxocr.losses import DET_LOSSES, build_det_loss, build_loss
from jaxocr.losses.det_db import balance_dice, balance_topk, bce_map, db_loss, dice_loss
from jaxocr.metrics import DetMetric, build_metric
from jaxocr.postprocess import DBPostProcess, build_det_postprocess


# ---------------------------------------------------------------------------------------------
# DBLoss: a literal NumPy transcription of Paddle's BalanceLoss / DiceLoss / MaskL1Loss / BCE
# ---------------------------------------------------------------------------------------------
def np_dice(pred, gt, mask, eps=1e-6):
    inter = np.sum(pred * gt * mask)
    union = np.sum(pred * mask) + np.sum(gt * mask) + eps
    return 1 - 2.0 * inter / union


def np_bce(pred, gt):
    return -(gt * np.maximum(np.log(pred), -100) + (1 - gt) * np.maximum(np.log(1 - pred), -100))


def np_balance(pred, gt, mask, main, ratio=3, eps=1e-6):
    positive = gt * mask
    negative = (1 - gt) * mask
    positive_count = int(positive.sum())
    negative_count = int(min(negative.sum(), positive_count * ratio))
    loss = np_dice(pred, gt, mask, eps) if main == "DiceLoss" else np_bce(pred, gt)
    positive_loss = positive * loss
    negative_loss = (negative * loss).reshape(-1)
    if negative_count > 0:
        negative_loss = np.sort(negative_loss)[::-1][:negative_count]
        return (positive_loss.sum() + negative_loss.sum()) / (positive_count + negative_count + eps)
    return positive_loss.sum() / (positive_count + eps)


def np_db_loss(maps, t_map, t_mask, s_map, s_mask, main="DiceLoss", alpha=5, beta=10):
    shrink, thresh, binary = maps[..., 0], maps[..., 1], maps[..., 2]
    l_s = alpha * np_balance(shrink, s_map, s_mask, main)
    l_t = beta * np.sum(np.abs(thresh - t_map) * t_mask) / (t_mask.sum() + 1e-6)
    l_b = np_dice(binary, s_map, s_mask)
    return {"loss": l_s + l_t + l_b, "loss_shrink_maps": l_s, "loss_threshold_maps": l_t,
            "loss_binary_maps": l_b}


def random_batch(seed, b=2, h=24, w=20, pos_frac=0.15):
    rng = np.random.default_rng(seed)
    maps = rng.uniform(0.01, 0.99, (b, h, w, 3))
    s_map = (rng.random((b, h, w)) < pos_frac).astype(np.float64)
    s_mask = (rng.random((b, h, w)) < 0.9).astype(np.float64)
    t_map = rng.uniform(0.3, 0.7, (b, h, w))
    t_mask = (rng.random((b, h, w)) < 0.5).astype(np.float64)
    return maps, {"threshold_map": t_map, "threshold_mask": t_mask, "shrink_map": s_map,
                  "shrink_mask": s_mask}


def to32(batch):
    return {k: jnp.asarray(v, jnp.float32) for k, v in batch.items()}


@pytest.mark.parametrize("main", ["DiceLoss", "BCELoss"])
@pytest.mark.parametrize("seed,pos_frac", [(0, 0.15), (1, 0.4), (2, 0.02), (3, 0.0)])
def test_db_loss_matches_paddle_transcription(main, seed, pos_frac):
    maps, batch = random_batch(seed, pos_frac=pos_frac)
    want = np_db_loss(maps, batch["threshold_map"], batch["threshold_mask"],
                      batch["shrink_map"], batch["shrink_mask"], main)
    fn = jax.jit(lambda p, b: db_loss(p, b, main_loss_type=main))
    got = fn({"maps": jnp.asarray(maps, jnp.float32)}, to32(batch))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(float(got[k]), want[k], rtol=2e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(float(got["loss"]), sum(float(got[k]) for k in got if k != "loss"),
                               rtol=1e-6)


def test_dice_balance_is_scaled_dice_and_equals_the_long_way():
    maps, batch = random_batch(4)
    s, g, m = (jnp.asarray(x, jnp.float32) for x in (maps[..., 0], batch["shrink_map"],
                                                     batch["shrink_mask"]))
    closed = balance_dice(s, g, m)
    long_way = balance_topk(dice_loss(s, g, m), g, m)
    np.testing.assert_allclose(float(closed), float(long_way), rtol=1e-6)
    # the quirk: BalanceLoss(DiceLoss) is Dice itself, up to (P+N)/(P+N+eps)
    np.testing.assert_allclose(float(closed), float(dice_loss(s, g, m)), rtol=1e-6)


def test_ohem_selection_against_brute_force():
    rng = np.random.default_rng(7)
    for trial in range(6):
        h, w = 12, 15
        gt = (rng.random((2, h, w)) < rng.uniform(0.02, 0.5)).astype(np.float32)
        mask = (rng.random((2, h, w)) < 0.85).astype(np.float32)
        pred = rng.uniform(0.01, 0.99, (2, h, w)).astype(np.float32)
        loss = np.asarray(bce_map(jnp.asarray(pred), jnp.asarray(gt)))
        pos = gt * mask
        neg = (1 - gt) * mask
        p = int(pos.sum())
        n = int(min(neg.sum(), 3 * p))
        # brute force: a negative pixel is kept when fewer than n negative losses beat it
        cand = (neg * loss).reshape(-1)
        kept = [v for v in cand if np.count_nonzero(cand > v) < n]
        assert len(kept) == n  # random losses: no ties among the kept ones
        want = (np.sum(pos * loss) + np.sum(kept)) / (p + n + 1e-6) if n else np.sum(pos * loss) / (p + 1e-6)
        got = balance_topk(jnp.asarray(loss), jnp.asarray(gt), jnp.asarray(mask))
        np.testing.assert_allclose(float(got), want, rtol=1e-5, err_msg=f"trial {trial}")


def test_bce_clamps_logs_and_has_paddles_gradient():
    pred = jnp.asarray([0.0, 1.0, 0.5, 0.0, 0.2], jnp.float32)
    gt = jnp.asarray([1.0, 0.0, 1.0, 0.0, 0.0], jnp.float32)
    np.testing.assert_allclose(np.asarray(bce_map(pred, gt)), [100, 100, np.log(2), 0, -np.log(0.8)],
                               rtol=1e-6)
    grad = np.asarray(jax.grad(lambda p: bce_map(p, gt).sum())(pred))
    # Paddle's kernel: (x - y) / max(x (1 - x), 1e-12)
    want = (np.asarray(pred) - np.asarray(gt)) / np.maximum(np.asarray(pred) * (1 - np.asarray(pred)), 1e-12)
    np.testing.assert_allclose(grad, want, rtol=1e-6)
    assert np.isfinite(grad).all()


def test_soft_maps_truncate_counts_as_paddle():
    # BCELoss path with fractional gt / mask: int() truncation of P and N as Paddle
    rng = np.random.default_rng(11)
    gt = rng.uniform(0, 1, (2, 9, 7)) * (rng.random((2, 9, 7)) < 0.3)
    mask = rng.uniform(0.5, 1, (2, 9, 7))
    pred = rng.uniform(0.01, 0.99, (2, 9, 7))
    want = np_balance(pred, gt, mask, "BCELoss")
    got = balance_topk(bce_map(jnp.asarray(pred, jnp.float32), jnp.asarray(gt, jnp.float32)),
                       jnp.asarray(gt, jnp.float32), jnp.asarray(mask, jnp.float32))
    np.testing.assert_allclose(float(got), want, rtol=2e-5)


def test_ohem_takes_every_negative_when_they_are_few_and_none_without_positives():
    gt = np.zeros((1, 4, 4), np.float32)
    gt[0, :3] = 1  # 12 positives, 4 negatives < 3 * 12
    mask = np.ones_like(gt)
    loss = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    got = balance_topk(jnp.asarray(loss), jnp.asarray(gt), jnp.asarray(mask))
    np.testing.assert_allclose(float(got), loss.sum() / (16 + 1e-6), rtol=1e-6)
    got = balance_topk(jnp.asarray(loss), jnp.zeros_like(gt), jnp.asarray(mask))
    assert float(got) == 0.0  # P = 0 -> N = 0 -> 0 / eps


def test_padding_rows_add_nothing_and_grads_are_finite():
    maps, batch = random_batch(5, b=2)
    first = {k: v[:1] for k, v in batch.items()}
    for main in ("DiceLoss", "BCELoss"):
        alone = db_loss({"maps": jnp.asarray(maps[:1], jnp.float32)}, to32(first), main_loss_type=main)
        padded = dict(to32(batch), mask=jnp.asarray([1.0, 0.0]))
        both = db_loss({"maps": jnp.asarray(maps, jnp.float32)}, padded, main_loss_type=main)
        for k in alone:
            np.testing.assert_allclose(float(both[k]), float(alone[k]), rtol=1e-5, err_msg=k)
        grad = jax.jit(jax.grad(lambda m: db_loss({"maps": m}, padded, main_loss_type=main)["loss"]))(
            jnp.asarray(maps, jnp.float32))
        assert np.isfinite(np.asarray(grad)).all()
        assert float(jnp.abs(grad[1]).max()) == 0.0  # the padding row gets no gradient


def test_det_loss_registry_keeps_ctc_working():
    assert "DBLoss" in DET_LOSSES
    fn = build_det_loss({"name": "DBLoss", "balance_loss": True, "main_loss_type": "DiceLoss",
                         "alpha": 5, "beta": 10, "ohem_ratio": 3})
    maps, batch = random_batch(6)
    out = fn({"maps": jnp.asarray(maps, jnp.float32)}, to32(batch))
    assert set(out) == {"loss", "loss_shrink_maps", "loss_threshold_maps", "loss_binary_maps"}
    ctc = build_loss({"name": "CTCLoss"})
    assert ctc(jnp.zeros((2, 5, 4)), jnp.ones((2, 3), jnp.int32), jnp.asarray([1, 2])).shape == (2,)
    with pytest.raises(ValueError, match="build_det_loss"):
        build_loss({"name": "DBLoss"})
    with pytest.raises(ValueError, match="main_loss_type"):
        db_loss({"maps": jnp.asarray(maps)}, batch, main_loss_type="Euclidean")
    with pytest.raises(ValueError, match="balance_loss"):
        db_loss({"maps": jnp.asarray(maps)}, batch, main_loss_type="BCELoss", balance_loss=False)


# ---------------------------------------------------------------------------------------------
# DBPostProcess on synthetic maps
# ---------------------------------------------------------------------------------------------
def grown_rect(x0, y0, x1, y1, ratio=1.5):
    """Paddle's unclip of the min-area rect of pixel centres x0..x1, y0..y1, as extents."""
    w, h = x1 - x0, y1 - y0
    d = w * h * ratio / (2 * (w + h))
    return x0 - d, y0 - d, x1 + d, y1 + d


def synthetic_map():
    pred = np.zeros((160, 320), np.float32)
    pred[20:50, 30:130] = 0.9      # text: pixel centres x 30..129, y 20..49
    pred[100:140, 200:300] = 0.8   # text
    pred[80:82, 10:12] = 0.95      # 2x2 blob: min side 1 < 3, dropped
    pred[100:130, 20:120] = 0.5    # above thresh 0.3, below box_thresh 0.6: dropped
    return pred


POST = dict(thresh=0.3, box_thresh=0.6, max_candidates=1000, unclip_ratio=1.5)


@pytest.mark.parametrize("score_mode", ["fast", "slow"])
def test_db_postprocess_finds_boxes_in_source_coordinates(score_mode):
    post = DBPostProcess(**POST, score_mode=score_mode)
    pred = synthetic_map()
    shape = (320, 640, 0.5, 0.5)  # source twice the map size
    (res,) = post(pred[None], [shape])
    boxes, scores = res["points"], res["scores"]
    assert boxes.shape == (2, 4, 2) and boxes.dtype == np.int32
    order = np.argsort(boxes[:, 0, 0])
    boxes, scores = boxes[order], np.asarray(scores)[order]
    np.testing.assert_allclose(scores, [0.9, 0.8], atol=1e-6)
    for box, rect in zip(boxes, [(30, 20, 129, 49), (200, 100, 299, 139)]):
        x0, y0, x1, y1 = (2 * v for v in grown_rect(*rect))
        # Paddle's corner order: top-left, top-right, bottom-right, bottom-left
        want = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        np.testing.assert_allclose(box, want, atol=3)


def test_db_postprocess_poly_and_rotated():
    pred = np.zeros((200, 200), np.float32)
    rect = ((100.0, 100.0), (120.0, 30.0), 30.0)
    corners = cv2.boxPoints(rect)
    cv2.fillPoly(pred, [np.round(corners).astype(np.int32)], 0.85)
    (res,) = DBPostProcess(**POST)(pred[None, :, :, None], [(200, 200, 1.0, 1.0)])
    assert len(res["points"]) == 1
    (cx, cy), (w, h), _ = cv2.minAreaRect(res["points"][0].astype(np.float32))
    assert abs(cx - 100) < 2 and abs(cy - 100) < 2
    d = 120 * 30 * 1.5 / (2 * 150)  # unclip distance of the 120 x 30 box (=18)
    assert abs(max(w, h) - (120 + 2 * d)) < 4 and abs(min(w, h) - (30 + 2 * d)) < 4
    (res,) = DBPostProcess(**POST, box_type="poly")({"maps": pred[None]}, [(400, 400, 0.5, 0.5)])
    assert len(res["points"]) == 1 and len(res["points"][0]) >= 4
    poly = np.asarray(res["points"][0], np.float32)
    # the grown polygon contains the original rectangle (scaled to the source)
    for x, y in corners * 2:
        assert cv2.pointPolygonTest(poly.reshape(-1, 1, 2), (float(x), float(y)), False) >= 0


def test_db_postprocess_crops_padding_dilates_and_caps_candidates():
    pred = synthetic_map()
    pred[150:160, 250:320] = 0.99  # in the padding of a (150, 250)-valid map: ignored
    (res,) = DBPostProcess(**POST)(pred[None], [(150, 250, 1.0, 1.0)])
    assert len(res["points"]) == 2
    assert res["points"][..., 0].max() <= 250 and res["points"][..., 1].max() <= 150

    gap = np.zeros((64, 128), np.float32)
    gap[10:40, 10:50] = 0.9
    gap[10:40, 51:90] = 0.9  # one-pixel gap
    (res,) = DBPostProcess(**POST)(gap[None], [(64, 128, 1.0, 1.0)])
    assert len(res["points"]) == 2
    (res,) = DBPostProcess(**POST, use_dilation=True)(gap[None], [(64, 128, 1.0, 1.0)])
    assert len(res["points"]) == 1

    (res,) = DBPostProcess(**dict(POST, max_candidates=1))(synthetic_map()[None], [(160, 320, 1, 1)])
    assert len(res["points"]) <= 1
    post = build_det_postprocess({"name": "DBPostProcess", **POST})
    assert isinstance(post, DBPostProcess) and post.box_thresh == 0.6
    with pytest.raises(ValueError):
        DBPostProcess(score_mode="medium")


# ---------------------------------------------------------------------------------------------
# DetMetric: hand-made cases, numbers from Paddle's DetectionIoUEvaluator rules
# ---------------------------------------------------------------------------------------------
def box(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def image_sums(gts, ignore, dets):
    return DetMetric().evaluate_image(gts, ignore, dets)


def test_det_metric_cases():
    sq = box(0, 0, 10, 10)
    assert image_sums([sq], [False], [sq]) == (1, 1, 1)                          # perfect
    assert image_sums([sq, box(20, 0, 30, 10)], [False, False], [sq]) == (1, 2, 1)  # a miss
    assert image_sums([sq], [False], [sq, box(50, 50, 60, 60)]) == (1, 1, 2)     # false positive
    # don't care: the GT does not count, the detection inside it does not either
    assert image_sums([sq, box(20, 0, 30, 10)], [False, True], [sq, box(21, 1, 29, 9)]) == (1, 1, 1)
    # a detection exactly half inside a don't-care region: not > 0.5 -> a false positive
    assert image_sums([box(20, 0, 30, 10)], [True], [box(15, 0, 25, 10)]) == (0, 0, 1)
    # split box: halves have IoU exactly 0.5, not > 0.5 -> no match
    long = box(0, 0, 10, 4)
    assert image_sums([long], [False], [box(0, 0, 5, 4), box(5, 0, 10, 4)]) == (0, 1, 2)
    # overlapping halves with IoU 0.6 each: the first one (in order) matches, one to one
    assert image_sums([long], [False], [box(0, 0, 6, 4), box(4, 0, 10, 4)]) == (1, 1, 2)
    # greedy in GT then detection order, not optimal: gt0 takes det0 (IoU .82, first), gt1's
    # only partner with IoU > .5 was det0 -> 1 match although 2 were possible
    assert image_sums([box(0, 0, 10, 10), box(4, 0, 14, 10)], [False, False],
                      [box(1, 0, 11, 10), box(0, 0, 10, 10)]) == (1, 2, 2)
    # invalid (bow-tie) and zero-padding GT polygons are skipped entirely
    bowtie = [[0, 0], [10, 10], [10, 0], [0, 10]]
    assert image_sums([bowtie, sq, np.zeros((4, 2))], [False, False, False], [sq]) == (1, 1, 1)
    assert image_sums([], [], []) == (0, 0, 0)


def test_det_metric_totals_merge_and_weights():
    sq = box(0, 0, 10, 10)
    images = [  # (gts, ignore, dets)
        ([sq], [False], [sq]),
        ([sq, box(20, 0, 30, 10)], [False, False], [sq]),
        ([sq], [False], [sq, box(50, 50, 60, 60)]),
        ([sq, box(20, 0, 30, 10)], [False, True], [box(21, 1, 29, 9)]),
    ]
    m = build_metric({"name": "DetMetric", "main_indicator": "hmean"})
    m.update([{"points": np.asarray(d)} for _, _, d in images], [g for g, _, _ in images],
             [t for _, t, _ in images])
    np.testing.assert_array_equal(m.sums, [3, 5, 4])  # matched, gtCare, detCare
    parts = [DetMetric(), DetMetric()]
    for i, (g, t, d) in enumerate(images):
        parts[i % 2].update([d], [g], [t])
    merged = DetMetric()
    for p in parts:
        merged.merge(p.sums)
    np.testing.assert_array_equal(merged.sums, m.sums)
    out = m.get_metric()
    p, r = 3 / 4, 3 / 5
    assert out == pytest.approx({"precision": p, "recall": r, "hmean": 2 * p * r / (p + r)})
    assert m.sums.sum() == 0  # reset
    # weight 0 (a padding image) adds nothing
    m.update([[sq], [sq]], [[sq], [sq]], [[False], [False]], weights=[1, 0])
    np.testing.assert_array_equal(m.sums, [1, 1, 1])
    assert DetMetric().get_metric() == {"precision": 0.0, "recall": 0.0, "hmean": 0.0}
