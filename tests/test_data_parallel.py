"""The Horovod contract of the train step: per-device compute, one gradient all-reduce."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxocr.distributed import data_mesh
from jaxocr.losses import batch_mean, build_loss
from jaxocr.models import build_model
from jaxocr.profile import all_reduce_counts
from jaxocr.training.step import (batch_sharding, create_state, init_variables, make_train_step,
                                  replicated)

ARCH = {"model_type": "rec", "algorithm": "CRNN", "Transform": None,
        "Backbone": {"name": "MobileNetV3", "scale": 0.5, "model_name": "large"},
        "Neck": {"name": "SequenceEncoder", "encoder_type": "rnn", "hidden_size": 96},
        "Head": {"name": "CTCHead", "fc_decay": 0, "out_channels": 37}}
# The equivalence tests run the real CRNN code at its smallest scale, in float64, so that the
# comparison tests the math and not float32 summation order (BN over 2 samples amplifies it).
TINY_ARCH = {**ARCH, "Backbone": {"name": "MobileNetV3", "scale": 0.35, "model_name": "small",
                                  "small_stride": [1, 2, 2, 2]},
             "Neck": {"name": "SequenceEncoder", "encoder_type": "rnn", "hidden_size": 48}}
SHAPE = (32, 100, 3)
LOSS = build_loss({"name": "CTCLoss"})


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 8, size=n).astype(np.int32)
    labels = np.where(np.arange(25)[None] < lengths[:, None], rng.integers(1, 37, size=(n, 25)), 0)
    return {"image": rng.uniform(-1, 1, size=(n, *SHAPE)).astype(np.float32),
            "label": labels.astype(np.int32), "length": lengths}


def _f64_variables(model):
    return jax.tree.map(lambda x: x.astype(jnp.float64), init_variables(model, SHAPE, 0))


def _run_step(devices, batch, sync_bn, tx):
    mesh = data_mesh(devices)
    model = build_model(TINY_ARCH, bn_axis_name="data" if sync_bn else None, dtype=jnp.float64)
    state = create_state(_f64_variables(model), tx, 0)
    state = jax.device_put(state, replicated(mesh))
    step = make_train_step(model, tx, LOSS, mesh, dtype=jnp.float64)
    dev_batch = jax.device_put(batch, batch_sharding(mesh))
    new_state, out = step(state, dev_batch)
    return jax.device_get(new_state), float(out["loss"])


def _close(a, b, rtol, atol=1e-12):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@jax.enable_x64(True)
def test_sync_bn_step_on_4_devices_equals_1_device():
    batch = jax.tree.map(lambda x: x.astype(np.float64) if x.dtype == np.float32 else x, _batch(8))
    tx = optax.sgd(0.1)
    four, loss4, *_ = _run_step(jax.devices()[:4], batch, True, tx)
    one, loss1, *_ = _run_step(jax.devices()[:1], batch, True, tx)
    assert loss4 == pytest.approx(loss1, rel=1e-5)
    _close(four.params, one.params, rtol=1e-5)
    _close(four.batch_stats, one.batch_stats, rtol=1e-5)


@jax.enable_x64(True)
def test_per_device_bn_gradients_are_the_mean_of_per_device_gradients():
    batch = jax.tree.map(lambda x: x.astype(np.float64) if x.dtype == np.float32 else x,
                         _batch(8, seed=1))
    lr = 0.1
    tx = optax.sgd(lr)
    four, *_ = _run_step(jax.devices()[:4], batch, False, tx)
    model = build_model(TINY_ARCH, dtype=jnp.float64)
    variables = _f64_variables(model)  # the same init the step started from
    params0, stats0 = variables["params"], variables["batch_stats"]

    def loss_on(params, part):
        logits, _ = model.apply({"params": params, "batch_stats": stats0}, part["image"],
                                train=True, mutable=["batch_stats"])
        return batch_mean(LOSS(logits, part["label"], part["length"]))

    grad_fn = jax.jit(jax.grad(loss_on))
    grads = [grad_fn(params0, {k: v[i * 2:(i + 1) * 2] for k, v in batch.items()})
             for i in range(4)]
    mean_grad = jax.tree.map(lambda *g: sum(g) / 4, *grads)
    expected = jax.tree.map(lambda p, g: p - lr * g, params0, mean_grad)
    _close(four.params, expected, rtol=1e-5)


def test_one_gradient_all_reduce_per_step_and_none_inside_loops():
    mesh = data_mesh(jax.devices()[:4])
    model = build_model(ARCH)
    tx = optax.adam(1e-3)
    state = jax.device_put(create_state(init_variables(model, SHAPE, 0), tx, 0), replicated(mesh))
    batch = jax.device_put(_batch(8), batch_sharding(mesh))
    hlo = make_train_step(model, tx, LOSS, mesh).lower(state, batch).compile().as_text()
    counts = all_reduce_counts(hlo)
    assert 1 <= counts["all_reduces"] <= 3, counts
    assert counts["while_loops"] > 0, "the LSTM should compile to while loops"
    assert counts["all_reduces_in_loops"] == 0, counts
