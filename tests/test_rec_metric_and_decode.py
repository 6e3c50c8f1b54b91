import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxocr.losses import build_loss
from jaxocr.metrics import RecMetric
from jaxocr.postprocess import ctc_greedy_decode


class Chars:
    chars = "0123456789abcdefghijklmnopqrstuvwxyz"

    def decode(self, ids):
        return "".join(self.chars[i - 1] for i in ids)


def test_greedy_decode_merges_repeats_and_drops_blank():
    ids = np.array([[1, 1, 0, 1, 2, 2, 0], [0, 0, 0, 0, 0, 0, 0]])
    probs = np.array([[0.9, 0.7, 0.99, 0.5, 0.6, 0.8, 1.0], [1.0] * 7])
    (t0, s0), (t1, s1) = ctc_greedy_decode(ids, probs, Chars())
    assert t0 == "001" and s0 == pytest.approx((0.9 + 0.5 + 0.6) / 3)
    assert t1 == "" and s1 == 0.0


def test_rec_metric_acc_and_edit_distance():
    m = RecMetric()
    m.update(["abc", "a b", "xyz", "abcd"], ["abc", "ab", "xya", "abce"])
    out = m.get_metric()
    assert out["acc"] == pytest.approx(2 / 4, rel=1e-4)  # ignore_space makes "a b" == "ab"
    assert out["norm_edit_dis"] == pytest.approx(1 - (1 / 3 + 1 / 4) / 4, rel=1e-4)
    m = RecMetric(ignore_space=False, is_filter=True)
    m.update(["A-b", "a-c", "zz"], ["ab", "ab", "zz"], weights=[1, 1, 0])
    assert m.get_metric()["acc"] == pytest.approx(0.5, rel=1e-4)


def test_metric_sums_merge_exactly():
    a, b, whole = RecMetric(), RecMetric(), RecMetric()
    preds, targets = ["ab", "cd", "ef", "gh"], ["ab", "cx", "ef", "zz"]
    a.update(preds[:1], targets[:1])
    b.update(preds[1:], targets[1:])
    whole.update(preds, targets)
    a.merge(b.sums)
    assert a.get_metric() == whole.get_metric()


def test_ctc_loss_is_per_sample_and_matches_optax():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 10, 5)), jnp.float32)
    labels = jnp.array([[1, 2, 0, 0], [3, 3, 4, 0], [2, 0, 0, 0]], jnp.int32)
    lengths = jnp.array([2, 3, 1])
    loss = build_loss({"name": "CTCLoss"})(logits, labels, lengths)
    pad = (jnp.arange(4)[None] >= lengths[:, None]).astype(jnp.float32)
    ref = optax.ctc_loss(logits, jnp.zeros((3, 10)), labels, pad)
    assert loss.shape == (3,) and np.allclose(loss, ref)
    # a sample's loss does not depend on the padding after its label
    labels2 = labels.at[0, 3].set(4)
    assert np.allclose(build_loss({"name": "CTCLoss"})(logits, labels2, lengths)[0], loss[0])
    with pytest.raises(ValueError, match="Loss.name"):
        build_loss({"name": "CTC"})
    assert jax.numpy.all(jnp.isfinite(loss))
