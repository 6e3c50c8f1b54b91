"""jaxocr.postprocess.ppyoloe_nms against a plain numpy transcription of Paddle's multiclass_nms3
CPU kernel (paddle/phi/kernels/cpu/multiclass_nms3_kernel.cc: GetMaxScoreIndex, NMSFast,
JaccardOverlap, MultiClassNMS's keep_top_k step), tiny sizes."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxocr.postprocess.ppyoloe_nms import multiclass_nms, ppyoloe_post_process, rescale_boxes

F32 = np.float32


# -- reference -------------------------------------------------------------------------------
def _jaccard_ref(b1, b2, normalized):
    """JaccardOverlap(box1, box2) in float32 scalars, line by line."""
    if b2[0] > b1[2] or b2[2] < b1[0] or b2[1] > b1[3] or b2[3] < b1[1]:
        return F32(0.0)
    norm = F32(0.0) if normalized else F32(1.0)
    inter_w = min(b1[2], b2[2]) - max(b1[0], b2[0]) + norm
    inter_h = min(b1[3], b2[3]) - max(b1[1], b2[1]) + norm
    inter = F32(inter_w * inter_h)

    def area(b):
        if b[2] < b[0] or b[3] < b[1]:
            return F32(0.0)
        w, h = b[2] - b[0], b[3] - b[1]
        return F32(w * h) if normalized else F32((w + F32(1)) * (h + F32(1)))

    return F32(inter / (area(b1) + area(b2) - inter))


def multiclass_nms_reference(boxes, scores, score_threshold=0.01, nms_top_k=1000, keep_top_k=300,
                             nms_threshold=0.7, normalized=False, background_label=-1):
    """One image, Paddle's semantics and Paddle's output order (class-major; within a class
    the NMS order). boxes (N, 4), scores (N, C) -> list of (label, score, box index)."""
    with np.errstate(all="ignore"):
        return _reference(np.asarray(boxes, F32), np.asarray(scores, F32), score_threshold,
                          nms_top_k, keep_top_k, nms_threshold, normalized, background_label)


def _reference(boxes, scores, score_threshold, nms_top_k, keep_top_k, nms_threshold, normalized,
               background_label):
    n, c = scores.shape
    thr, nms_thr = F32(score_threshold), F32(nms_threshold)
    indices = {}
    for cls in range(c):
        if cls == background_label:
            continue
        s = scores[:, cls]
        pairs = [(s[i], i) for i in range(n) if s[i] > thr]                # GetMaxScoreIndex
        pairs.sort(key=lambda p: -p[0])                                     # stable: ties by i
        if -1 < nms_top_k < len(pairs):
            pairs = pairs[:nms_top_k]
        selected = []                                                       # NMSFast, eta 1
        for _, i in pairs:
            keep = True
            for j in selected:
                keep = _jaccard_ref(boxes[i], boxes[j], normalized) <= nms_thr
                if not keep:
                    break
            if keep:
                selected.append(i)
        indices[cls] = selected
    num_det = sum(len(v) for v in indices.values())
    if -1 < keep_top_k < num_det:
        flat = [(scores[i, cls], cls, i) for cls in sorted(indices) for i in indices[cls]]
        flat.sort(key=lambda p: -p[0])                                      # stable
        new = {}
        for _, cls, i in flat[:keep_top_k]:
            new.setdefault(cls, []).append(i)
        indices = new
    return [(cls, scores[i, cls], i) for cls in sorted(indices) for i in indices[cls]]


def _by_score(rows):
    """Paddle's class-major rows in this module's order: a stable sort by score."""
    return sorted(rows, key=lambda r: -r[1])


def _check_equal(out, boxes, scores, **kw):
    out = jax.tree.map(np.asarray, out)
    k = out["valid"].shape[1]
    for b in range(boxes.shape[0]):
        ref = _by_score(multiclass_nms_reference(boxes[b], scores[b], **kw))
        m = int(out["num"][b])
        assert m == len(ref) and out["valid"][b].sum() == m
        assert out["valid"][b, :m].all() and not out["valid"][b, m:].any()
        np.testing.assert_array_equal(out["classes"][b, :m], [r[0] for r in ref])
        np.testing.assert_array_equal(out["index"][b, :m], [r[2] for r in ref])
        np.testing.assert_array_equal(out["scores"][b, :m], np.array([r[1] for r in ref], F32))
        np.testing.assert_array_equal(out["boxes"][b, :m], boxes[b][[r[2] for r in ref]])
        assert (out["classes"][b, m:] == -1).all() and (out["scores"][b, m:] == 0).all()
        assert k >= m


def _random_case(rng, b, n, c, spread=25.0):
    """Clustered boxes (many overlaps, some on integer corners, two inverted) and scores on a
    coarse grid (ties within and across classes)."""
    xy = rng.uniform(0, spread, (b, n, 2))
    wh = rng.uniform(12, 40, (b, n, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(F32)
    boxes[:, : n // 8] = np.round(boxes[:, : n // 8])                       # integer corners
    boxes[:, -2:, 0::2] = boxes[:, -2:, 2::-2]                               # x2 < x1: area 0
    scores = (rng.integers(0, 24, (b, n, c)) / 24.0).astype(F32)
    return boxes, scores


# -- agreement with the reference --------------------------------------------------------------
@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("block_size", [4, 128])
def test_random_matches_reference(normalized, block_size):
    rng = np.random.default_rng(0 if normalized else 1)
    kw = dict(score_threshold=0.3, nms_top_k=14, keep_top_k=18, nms_threshold=0.45,
              normalized=normalized)
    for _ in range(3):
        boxes, scores = _random_case(rng, 2, 40, 3)
        if normalized:
            boxes = boxes / F32(100.0)
        out = multiclass_nms(jnp.asarray(boxes), jnp.asarray(scores), block_size=block_size, **kw)
        _check_equal(out, boxes, scores, **kw)


def test_random_no_truncation_and_unlimited():
    rng = np.random.default_rng(2)
    boxes, scores = _random_case(rng, 2, 30, 4)
    for k_out, kw in ((300, dict(score_threshold=0.5, nms_top_k=1000, keep_top_k=300,
                                 nms_threshold=0.7)),
                      (4 * 30, dict(score_threshold=0.2, nms_top_k=-1, keep_top_k=-1,
                                    nms_threshold=0.3)),
                      (7, dict(score_threshold=0.2, nms_top_k=5, keep_top_k=7, nms_threshold=0.3,
                               background_label=1))):
        out = multiclass_nms(jnp.asarray(boxes), jnp.asarray(scores), block_size=8, **kw)
        assert out["valid"].shape == (2, k_out)
        _check_equal(out, boxes, scores, **kw)


# -- hand-made cases ---------------------------------------------------------------------------
def _run(boxes, scores, **kw):
    out = multiclass_nms(jnp.asarray([boxes], jnp.float32), jnp.asarray([scores], jnp.float32),
                         **kw)
    out = jax.tree.map(lambda a: np.asarray(a[0]), out)
    m = int(out["num"])
    return out, m


def test_overlap_same_class_suppressed_other_class_kept():
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]
    out, m = _run(boxes, [[0.9, 0.0], [0.8, 0.0], [0.0, 0.5]], nms_threshold=0.5)
    assert m == 2
    np.testing.assert_array_equal(out["index"][:2], [0, 2])
    np.testing.assert_array_equal(out["classes"][:2], [0, 1])
    # the same two overlapping boxes in different classes: both kept
    out, m = _run(boxes[:2], [[0.9, 0.0], [0.0, 0.8]], nms_threshold=0.5)
    assert m == 2 and list(out["classes"][:2]) == [0, 1]
    assert out["valid"].shape == (300,) and not out["valid"][2:].any()


def test_below_threshold_dropped_strictly():
    out, m = _run([[0, 0, 5, 5], [20, 20, 30, 30], [40, 40, 50, 50]],
                  [[0.01], [0.0100001], [0.005]], score_threshold=0.01)
    assert m == 1 and out["index"][0] == 1            # score == threshold is dropped (>)


def test_plus_one_iou_convention():
    # [0,0,9,9] and [5,0,14,9]: with +1 areas 100 each, inter 5*10 -> IoU 50/150 = 0.333;
    # normalized (no +1): areas 81, inter 4*9 -> 36/126 = 0.286
    boxes = [[0, 0, 9, 9], [5, 0, 14, 9]]
    sc = [[0.9], [0.8]]
    assert _run(boxes, sc, nms_threshold=0.34)[1] == 2
    assert _run(boxes, sc, nms_threshold=0.33)[1] == 1
    assert _run(boxes, sc, nms_threshold=0.29, normalized=True)[1] == 2
    assert _run(boxes, sc, nms_threshold=0.28, normalized=True)[1] == 1
    # touching boxes overlap by one pixel column with +1; apart by 0.5 px they do not
    assert _run([[0, 0, 9, 9], [9, 0, 18, 9]], sc, nms_threshold=0.05)[1] == 1
    assert _run([[0, 0, 9, 9], [9.5, 0, 18.5, 9]], sc, nms_threshold=0.0)[1] == 2


def test_keep_top_k_truncates_by_score_and_ties():
    boxes = [[i * 20, 0, i * 20 + 10, 10] for i in range(6)]               # disjoint
    sc = [[0.1, 0.6], [0.7, 0.2], [0.6, 0.0], [0.3, 0.9], [0.0, 0.6], [0.5, 0.4]]
    out, m = _run(boxes, sc, keep_top_k=4, nms_top_k=3)
    assert m == 4 and out["valid"].shape == (4,)
    # class 0 candidates (top 3): 0.7 b1, 0.6 b2, 0.5 b5; class 1: 0.9 b3, 0.6 b0, 0.6 b4
    # global: 0.9 (1,b3), 0.7 (0,b1), 0.6 (0,b2), 0.6 (1,b0) -- ties by class, then box order
    np.testing.assert_array_equal(out["classes"], [1, 0, 0, 1])
    np.testing.assert_array_equal(out["index"], [3, 1, 2, 0])
    np.testing.assert_allclose(out["scores"], [0.9, 0.7, 0.6, 0.6])


def test_no_detections_and_nan():
    out, m = _run([[0, 0, 1, 1]] * 3, [[0.0], [np.nan], [0.001]])
    assert m == 0 and not out["valid"].any() and (out["classes"] == -1).all()


# -- jit / vmap / shard_map / rescale ----------------------------------------------------------
def test_jit_fixed_shapes_and_vmap():
    rng = np.random.default_rng(3)
    boxes, scores = _random_case(rng, 4, 24, 3)
    kw = dict(score_threshold=0.4, nms_top_k=10, keep_top_k=12, nms_threshold=0.5, block_size=4)
    f = jax.jit(lambda b, s: multiclass_nms(b, s, **kw))
    full = f(boxes, scores)
    low = f(boxes, scores * F32(0.3))                  # nothing above 0.4: same shapes
    for o in (full, low):
        assert o["boxes"].shape == (4, 12, 4) and o["classes"].dtype == jnp.int32
        assert o["valid"].dtype == jnp.bool_
    assert int(low["num"].sum()) == 0 and int(full["num"].sum()) > 0
    # vmap over a leading axis (2 groups of 2 images) == the batch of 4
    vm = jax.vmap(lambda b, s: multiclass_nms(b, s, **kw))(boxes.reshape(2, 2, 24, 4),
                                                           scores.reshape(2, 2, 24, 3))
    for key in full:
        np.testing.assert_array_equal(np.asarray(vm[key]).reshape(np.shape(full[key])),
                                      np.asarray(full[key]))


def test_shard_map_matches_unsharded():
    from jax.sharding import Mesh, PartitionSpec as P
    from jaxocr.training.step import shard_map
    devs = jax.devices()[:2]
    if len(devs) < 2:
        pytest.skip("needs 2 devices")
    rng = np.random.default_rng(4)
    boxes, scores = _random_case(rng, 4, 24, 3)
    kw = dict(score_threshold=0.4, nms_top_k=10, keep_top_k=12, nms_threshold=0.5, block_size=4)
    mesh = Mesh(np.array(devs), ("data",))
    f = jax.jit(shard_map(lambda b, s: multiclass_nms(b, s, **kw), mesh,
                          in_specs=(P("data"), P("data")), out_specs=P("data")))
    sharded = f(boxes, scores)
    ref = multiclass_nms(boxes, scores, **kw)
    for key in ref:
        np.testing.assert_array_equal(np.asarray(sharded[key]), np.asarray(ref[key]))


def test_rescale_boxes_and_post_process():
    boxes = np.array([[[10, 20, 330, 650], [-8, -4, 16, 30]]], F32)        # input pixels
    sf = np.array([[640 / 480, 640 / 320]], F32)                          # [sy, sx]
    out = np.asarray(rescale_boxes(boxes, sf))
    want = boxes / np.array([sf[0, 1], sf[0, 0], sf[0, 1], sf[0, 0]], F32)
    np.testing.assert_array_equal(out, want)
    clipped = np.asarray(rescale_boxes(boxes, sf, im_shape=np.array([[640, 640]], F32)))
    np.testing.assert_allclose(clipped[0, 0], [5, 15, 165, 480], rtol=1e-6)  # x <= 320, y <= 480
    np.testing.assert_allclose(clipped[0, 1], [0, 0, 8, 22.5], rtol=1e-6)
    scores = np.array([[[0.9, 0.0], [0.0, 0.2]]], F32)
    b, s = ppyoloe_post_process(boxes, scores, sf, exclude_nms=True)
    np.testing.assert_array_equal(np.asarray(b), want)
    res = ppyoloe_post_process(boxes, scores, sf, keep_top_k=5)
    assert int(res["num"][0]) == 2
    np.testing.assert_array_equal(np.asarray(res["boxes"][0, :2]), want[0])
