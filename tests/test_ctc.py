"""CTC loss (jaxocr/losses/ctc.py, a wrapper of optax.ctc_loss) against an independent reference:
the negative log-likelihood by brute force, summing the probability of every length-T path over
the alphabet that collapses (repeats merged, then blanks dropped) to the label."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxocr.losses import batch_mean, build_loss, ctc_loss

BLANK = 0


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _collapse(path):
    merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
    return tuple(c for c in merged if c != BLANK)


def brute_force_nll(logits, label):
    """-log sum over all C**T paths that collapse to `label` of prod_t softmax(logits)[t, path_t].
    Float64 numpy, nothing shared with optax's forward recursion."""
    probs = _softmax(np.asarray(logits, np.float64))
    t, c = probs.shape
    label = tuple(int(x) for x in label)
    total = 0.0
    hits = 0
    for path in itertools.product(range(c), repeat=t):
        if _collapse(path) == label:
            total += np.prod(probs[np.arange(t), path])
            hits += 1
    return -np.log(total) if total > 0 else np.inf, hits


def _padded(labels, width, pad=0):
    out = np.full((len(labels), width), pad, np.int32)
    for i, lab in enumerate(labels):
        out[i, :len(lab)] = lab
    return out, np.array([len(lab) for lab in labels], np.int32)


def _loss(logits, labels, width, pad=0, **kw):
    lab, lengths = _padded(labels, width, pad)
    return np.asarray(ctc_loss(jnp.asarray(logits), jnp.asarray(lab), jnp.asarray(lengths), **kw))


def test_collapse_rule_of_the_reference():
    assert _collapse((1, 1, 0, 1)) == (1, 1)
    assert _collapse((1, 1, 1)) == (1,)
    assert _collapse((0, 2, 0, 0, 3, 3)) == (2, 3)
    assert _collapse((0, 0, 0)) == ()


# (T, C, label): repeats that need a blank between them, a label that fills every frame, the
# empty label (only the all-blank path), a label with no slack at all ([1, 1] in T=3: 1 0 1).
CASES = [
    (4, 3, [1]),
    (4, 3, [1, 1]),
    (4, 3, [1, 2]),
    (4, 3, [2, 1, 2]),
    (4, 3, [1, 2, 1, 2]),  # T == label length: the one path 1 2 1 2
    (4, 4, [3, 3]),
    (5, 3, [1, 1, 1]),  # needs exactly 5 frames: 1 0 1 0 1
    (5, 4, [1, 1, 2]),
    (5, 4, [3, 1, 3]),
    (5, 4, [2, 2, 2]),
    (5, 3, []),  # empty label
    (3, 3, [1, 1]),
]


@pytest.mark.parametrize("t,c,label", CASES)
@jax.enable_x64(True)
def test_ctc_equals_brute_force_over_all_paths(t, c, label):
    rng = np.random.default_rng([t, c, *label])
    logits = rng.normal(scale=2.0, size=(1, t, c))
    expected, hits = brute_force_nll(logits[0], label)
    assert hits >= 1 and np.isfinite(expected)
    got = _loss(logits, [label], width=max(len(label), 1) + 2)
    assert got.dtype == np.float64  # float64 in, float64 computed: tight tolerance below
    np.testing.assert_allclose(got[0], expected, rtol=1e-10)


@pytest.mark.parametrize("t,c,label", CASES)
def test_ctc_float32_equals_brute_force(t, c, label):
    """The dtype training uses: the same within float32 rounding."""
    rng = np.random.default_rng([t, c, *label])
    logits = rng.normal(scale=2.0, size=(1, t, c)).astype(np.float32)
    got = _loss(logits, [label], width=len(label) + 2)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[0], brute_force_nll(logits[0], label)[0], rtol=2e-5)


def test_reference_path_counts_match_combinatorics():
    """The brute force itself: path counts that can be derived by hand."""
    logits = np.zeros((3, 3))
    assert brute_force_nll(logits, [1, 1])[1] == 1  # only 1 0 1
    # T=2, label [1]: 1 1, 1 0, 0 1
    assert brute_force_nll(np.zeros((2, 3)), [1])[1] == 3
    assert brute_force_nll(np.zeros((4, 3)), [])[1] == 1  # all blanks
    # uniform probabilities: p = hits / C**T exactly
    nll, hits = brute_force_nll(np.zeros((5, 4)), [1, 2])
    np.testing.assert_allclose(nll, -np.log(hits / 4**5), rtol=1e-12)


@jax.enable_x64(True)
def test_hand_computed_closed_forms():
    rng = np.random.default_rng(7)
    # T=2, label [1]: p = y1(1) y2(1) + y1(1) y2(0) + y1(0) y2(1)
    logits = rng.normal(size=(1, 2, 3))
    y = _softmax(logits[0])
    p = y[0, 1] * y[1, 1] + y[0, 1] * y[1, 0] + y[0, 0] * y[1, 1]
    np.testing.assert_allclose(_loss(logits, [[1]], width=3)[0], -np.log(p), rtol=1e-12)
    # T=3, label [1, 1]: the blank between the repeats is forced, p = y1(1) y2(0) y3(1)
    logits = rng.normal(size=(1, 3, 3))
    y = _softmax(logits[0])
    p = y[0, 1] * y[1, 0] * y[2, 1]
    np.testing.assert_allclose(_loss(logits, [[1, 1]], width=3)[0], -np.log(p), rtol=1e-12)
    # T=3, empty label: p = y1(0) y2(0) y3(0)
    p = y[0, 0] * y[1, 0] * y[2, 0]
    np.testing.assert_allclose(_loss(logits, [[]], width=3)[0], -np.log(p), rtol=1e-12)
    # uniform logits, T=2, C=3, label [1]: p = 3/9, so the loss is log 3 (not length-normalised)
    np.testing.assert_allclose(_loss(np.zeros((1, 2, 3)), [[1]], width=2)[0], np.log(3.0),
                               rtol=1e-12)


@jax.enable_x64(True)
def test_batch_with_different_lengths_and_garbage_padding():
    """Per-sample losses in a batch of mixed label lengths (empty, short, full), each equal to its
    own brute force; what sits in the label row past `length` does not matter."""
    t, c, width = 5, 4, 5
    labels = [[1, 1, 2], [], [3], [2, 3, 2], [1, 2, 3, 1, 2]]
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=1.5, size=(len(labels), t, c))
    expected = [brute_force_nll(logits[i], lab)[0] for i, lab in enumerate(labels)]
    zero_padded = _loss(logits, labels, width)
    np.testing.assert_allclose(zero_padded, expected, rtol=1e-10)
    garbage = _loss(logits, labels, width, pad=3)  # a valid class id, not the blank
    np.testing.assert_allclose(garbage, zero_padded, rtol=1e-12)
    # and the batch mean the step trains on is the plain mean of those
    np.testing.assert_allclose(float(batch_mean(jnp.asarray(zero_padded))), np.mean(expected),
                               rtol=1e-12)


@jax.enable_x64(True)
def test_focal_loss_formula():
    """use_focal_loss (PaddleOCR's CTCLoss): loss * (1 - exp(-loss))**2 = -log p * (1 - p)**2."""
    labels = [[1, 1], [2], [1, 2, 1]]
    rng = np.random.default_rng(11)
    logits = rng.normal(scale=2.0, size=(3, 5, 3))
    plain = _loss(logits, labels, 3)
    focal = _loss(logits, labels, 3, use_focal_loss=True)
    for i, lab in enumerate(labels):
        nll = brute_force_nll(logits[i], lab)[0]
        p = np.exp(-nll)
        np.testing.assert_allclose(focal[i], nll * (1 - p) ** 2, rtol=1e-10)
    assert np.all(focal < plain)  # down-weighted, every p in (0, 1)
    # through build_loss (the config path): Loss: {name: CTCLoss, use_focal_loss: true}
    lab, lengths = _padded(labels, 3)
    via_cfg = build_loss({"name": "CTCLoss", "use_focal_loss": True})(
        jnp.asarray(logits), jnp.asarray(lab), jnp.asarray(lengths))
    np.testing.assert_allclose(np.asarray(via_cfg), focal, rtol=1e-12)
    # a near-certain label gives a near-zero focal loss (p -> 1), far below the plain loss
    sure = np.full((1, 2, 3), -20.0)
    sure[0, :, 1] = 20.0
    f, l = _loss(sure, [[1]], 2, use_focal_loss=True)[0], _loss(sure, [[1]], 2)[0]
    assert abs(l) < 1e-12 and abs(f) < 1e-30, (f, l)  # l: 4e-18 to within rounding


def test_infeasible_label_gives_a_huge_finite_loss():
    """A label that needs more frames than T (len + repeats > T) has probability 0. optax works in
    log space with log(0) replaced by log_epsilon = -1e5, so its loss is about 1e5 (1e5 plus the
    -log probability of the best partial alignment), finite, with finite gradients: not inf/nan.
    (PaddleOCR's warpctc would return inf; the training loop then sees a loss of ~1e5.)"""
    rng = np.random.default_rng(5)
    t, c = 3, 4
    logits = rng.normal(size=(3, t, c)).astype(np.float32)
    labels = [[1, 1, 1], [1, 2, 3, 1], [1, 1]]  # need 5, 4 and 3 frames; T = 3
    for lab in labels:
        assert brute_force_nll(logits[0], lab)[1] == (0 if lab != [1, 1] else 1)
    loss = _loss(logits, labels, 4)
    assert np.all(np.isfinite(loss)), loss
    assert np.all((loss[:2] >= 1e5) & (loss[:2] < 1e5 + 100)), loss
    np.testing.assert_allclose(loss[2], brute_force_nll(logits[2], [1, 1])[0], rtol=1e-5)
    lab, lengths = _padded(labels, 4)
    grads = jax.grad(lambda x: ctc_loss(x, jnp.asarray(lab), jnp.asarray(lengths)).sum())(
        jnp.asarray(logits))
    assert np.all(np.isfinite(np.asarray(grads)))
    focal = _loss(logits, labels, 4, use_focal_loss=True)
    np.testing.assert_allclose(focal[:2], loss[:2], rtol=1e-6)  # (1 - e^-1e5)^2 == 1


def test_bfloat16_logits_are_computed_in_float32():
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(2, 5, 4)).astype(np.float32)
    as_bf16 = jnp.asarray(logits, jnp.bfloat16)
    lab, lengths = _padded([[1, 2], [3, 3]], 3)
    got = ctc_loss(as_bf16, jnp.asarray(lab), jnp.asarray(lengths))
    assert got.dtype == jnp.float32
    want = [brute_force_nll(np.asarray(as_bf16[i], np.float64), l)[0]
            for i, l in enumerate([[1, 2], [3, 3]])]
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5)
