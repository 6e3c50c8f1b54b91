"""The Horovod contract of the train step: per-device compute, one gradient all-reduce."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxocr.distributed import data_mesh
from jaxocr.losses import batch_mean, build_loss
from jaxocr.models import build_model
from jaxocr.data.charset import CharacterDict
from jaxocr.metrics.rec_device import canonical_ids
from jaxocr.metrics.rec_metric import RecMetric
from jaxocr.profile import all_reduce_counts
from jaxocr.tasks.rec import CTCObjective
from jaxocr.training.step import (batch_sharding, count_params, create_state, init_variables,
                                  make_train_step, replicated)

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
OBJECTIVE = CTCObjective(LOSS)
# as the training loop builds it: with the on-device train metric (cal_metric_during_train)
WITH_METRIC = CTCObjective(LOSS, canonical_ids(CharacterDict(), RecMetric()))


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
    step = make_train_step(model, tx, OBJECTIVE, mesh, dtype=jnp.float64)
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


_ALL_REDUCE_LINE = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+all-reduce(?:-start)?\((.*)$", re.M)


def all_reduces(hlo_text):
    """Every all-reduce in compiled HLO: (name, [(dtype, element count), ...] of its result (a
    tuple when XLA combines several), replica groups)."""
    out = []
    for name, result_type, rest in _ALL_REDUCE_LINE.findall(hlo_text):
        shapes = [(dtype, int(np.prod([int(d) for d in dims.split(",") if d])))
                  for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", result_type)]
        groups = re.search(r"replica_groups=(\{[^ ]*\}|\[[^ ]*\][^ ,]*)", rest)
        out.append((name, shapes, groups.group(1) if groups else None))
    return out


def test_all_reduce_parser():
    hlo = ("  %psum.7 = f32[1464156]{0} all-reduce(%concatenate.563), channel_id=1, "
           "replica_groups={{0,1,2,3}}, use_global_device_ids=true, to_apply=%region\n"
           "  %ar = (f32[3,4]{1,0}, f32[]) all-reduce-start(%a, %b), replica_groups={{0,1}}, "
           "to_apply=%add\n  %x = f32[2]{0} add(%y, %z)\n")
    assert all_reduces(hlo) == [("psum.7", [("f32", 1464156)], "{{0,1,2,3}}"),
                                ("ar", [("f32", 12), ("f32", 1)], "{{0,1}}")]


# What the train step all-reduces besides the gradients and BN running statistics, in the same
# flattened f32 buffer (step.pmean_flat): the loss, the share of real (unmasked) rows, and
# RecMetric's 3 sums (correct, edit distance, count). A change to that list changes this number.
EXTRA_REDUCED_VALUES = 1 + 1 + 3


def test_one_gradient_all_reduce_per_step_and_none_inside_loops():
    """The compiled 4-device CRNN step has exactly one all-reduce, over all 4 devices, outside
    every loop: f32[1464160] = 1,451,787 gradients + 12,368 BN running statistics + 5 scalars
    (loss, share of real rows, 3 metric sums).
    (XLA neither splits it nor adds any other; the LSTM scans compile to while loops without one.)"""
    mesh = data_mesh(jax.devices()[:4])
    model = build_model(ARCH)
    tx = optax.adam(1e-3)
    variables = init_variables(model, SHAPE, 0)
    state = jax.device_put(create_state(variables, tx, 0), replicated(mesh))
    batch = jax.device_put(_batch(8), batch_sharding(mesh))
    hlo = make_train_step(model, tx, WITH_METRIC, mesh).lower(state, batch).compile().as_text()
    counts = all_reduce_counts(hlo)
    assert counts["while_loops"] > 0, "the LSTM should compile to while loops"
    assert counts["all_reduces_in_loops"] == 0, counts
    n_params, n_stats = count_params(variables["params"]), count_params(variables["batch_stats"])
    assert (n_params, n_stats) == (1_451_787, 12_368)
    reduces = all_reduces(hlo)
    assert counts["all_reduces"] == len(reduces) == 1, reduces
    (_, shapes, groups), = reduces
    assert shapes == [("f32", n_params + n_stats + EXTRA_REDUCED_VALUES)], shapes
    assert groups == "{{0,1,2,3}}", groups  # over every device of the mesh


def test_lockstep_step_all_reduces_only_two_scalars():
    """sync_grads=False (bench.py scaling's `lockstep`): one all-reduce of f32[2] (the loss and a
    scalar that needs every gradient), no gradient buffer: what separates the cost of running in
    step from the cost of moving the gradients."""
    mesh = data_mesh(jax.devices()[:4])
    model = build_model(TINY_ARCH)
    tx = optax.sgd(0.1)
    state = jax.device_put(create_state(init_variables(model, SHAPE, 0), tx, 0), replicated(mesh))
    batch = jax.device_put(_batch(8), batch_sharding(mesh))
    hlo = make_train_step(model, tx, OBJECTIVE, mesh, sync_grads=False).lower(
        state, batch).compile().as_text()
    reduces = all_reduces(hlo)
    assert [shapes for _, shapes, _ in reduces] == [[("f32", 2)]], reduces
    assert all_reduce_counts(hlo)["all_reduces_in_loops"] == 0
