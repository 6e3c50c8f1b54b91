"""The train step: padding rows (mask 0) add nothing to the loss or the gradients, and a head
that also returns its features (CTCHead return_feats) trains."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from jaxocr.distributed import data_mesh
from jaxocr.losses import build_loss
from jaxocr.tasks.rec import CTCObjective
from jaxocr.training.step import batch_sharding, create_state, make_train_step, replicated

T, C, L = 6, 5, 3
LOSS = build_loss({"name": "CTCLoss"})


class Tiny(nn.Module):
    """No BatchNorm, so padding rows could only act through the loss."""
    feats: bool = False

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Dense(T * 4)(x.reshape(x.shape[0], -1)).reshape(x.shape[0], T, 4)
        logits = nn.Dense(C)(jnp.tanh(h))
        if not train:
            return jax.nn.softmax(logits)
        return (h, logits) if self.feats else logits


def _batch(rng, n):
    lengths = rng.integers(1, L + 1, n).astype(np.int32)
    labels = rng.integers(1, C, (n, L)).astype(np.int32) * (np.arange(L) < lengths[:, None])
    return {"image": rng.normal(size=(n, 4, 4, 1)).astype(np.float32), "label": labels,
            "length": lengths}


def test_masked_rows_do_not_count():
    mesh = data_mesh(jax.devices()[:4])
    model, tx = Tiny(), optax.sgd(0.1)
    rng = np.random.default_rng(0)
    batch = _batch(rng, 8)
    mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)  # one device half, one all padding
    params = jax.device_get(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))["params"])

    def run(b):
        state = jax.device_put(create_state({"params": params}, tx, 0), replicated(mesh))
        b = jax.device_put(b, batch_sharding(mesh))
        state, out = make_train_step(model, tx, CTCObjective(LOSS), mesh)(state, b)
        return jax.device_get(state.params), float(out["loss"])

    garbage = {**_batch(np.random.default_rng(1), 8)}
    other = {k: np.concatenate([batch[k][:5], garbage[k][5:]]) for k in batch}
    p1, loss1 = run({**batch, "mask": mask})
    p2, loss2 = run({**other, "mask": mask})
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert loss1 == loss2

    # the reference: plain gradient descent on the mean loss of the 5 real rows
    real = {k: batch[k][:5] for k in batch}
    def mean_loss(p):
        return jnp.mean(LOSS(model.apply({"params": p}, real["image"], train=True),
                             real["label"], real["length"]))
    ref_loss, grads = jax.value_and_grad(mean_loss)(params)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss1, float(ref_loss), rtol=1e-5)
    # without the mask the padding rows would count: the test can tell
    p3, _ = run(batch)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(p3), jax.tree.leaves(p1)))


def test_a_head_returning_features_trains():
    mesh = data_mesh(jax.devices()[:2])
    model, tx = Tiny(feats=True), optax.sgd(0.1)
    params = jax.device_get(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))["params"])
    state = jax.device_put(create_state({"params": params}, tx, 0), replicated(mesh))
    batch = jax.device_put(_batch(np.random.default_rng(0), 4), batch_sharding(mesh))
    state, out = make_train_step(model, tx, CTCObjective(LOSS), mesh)(state, batch)
    assert np.isfinite(float(out["loss"])) and int(state.step) == 1
