import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxocr.training.optimizer import build_optimizer, build_schedule, l2_factors


def test_const_and_warmup_schedules():
    s = build_schedule({"learning_rate": 0.0005}, 100, 72)
    assert float(s(0)) == pytest.approx(0.0005) and float(s(7000)) == pytest.approx(0.0005)
    s = build_schedule({"name": "Cosine", "learning_rate": 0.001, "warmup_epoch": 2}, 10, 5)
    assert float(s(0)) == 0.0
    assert float(s(10)) == pytest.approx(0.0005)  # halfway through the 20 warmup steps
    assert float(s(20)) == pytest.approx(0.001)
    # after warmup the cosine runs at (t - warmup) over T_max = all 50 steps: never reaches 0
    assert float(s(45)) == pytest.approx(0.001 * 0.5 * (1 + np.cos(np.pi * 25 / 50)), rel=1e-5)


def test_piecewise_boundaries_in_epochs():
    s = build_schedule({"name": "Piecewise", "decay_epochs": [2, 4], "values": [1e-3, 1e-4, 1e-5]},
                       10, 6)
    assert [float(s(t)) for t in (0, 19, 20, 39, 40)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])


def test_unknown_optimizer_and_schedule_named():
    with pytest.raises(ValueError, match="Optimizer.name"):
        build_optimizer({"name": "Adamm"}, {}, {"w": jnp.ones(2)}, 1, 1)
    with pytest.raises(ValueError, match="Optimizer.lr.name"):
        build_schedule({"name": "Cosin"}, 1, 1)


def test_coupled_l2_with_head_fc_decay_and_no_bn_decay():
    params = {"backbone": {"conv": {"kernel": jnp.ones((2, 2))},
                           "BatchNorm_0": {"scale": jnp.ones(2), "bias": jnp.ones(2)}},
              "head": {"fc": {"kernel": jnp.ones((2, 2))}}}
    arch = {"Head": {"name": "CTCHead", "fc_decay": 0.5}}
    factors = l2_factors(params, {"regularizer": {"name": "L2", "factor": 0.1}}, arch)
    assert factors["backbone"]["conv"]["kernel"] == 0.1
    assert factors["backbone"]["BatchNorm_0"]["scale"] == 0.0
    assert factors["head"]["fc"]["kernel"] == 0.5
    # a CTCHead without fc_decay keeps Paddle's default (SVTR's config relies on it)
    default = l2_factors(params, {"name": "AdamW"}, {"Head": {"name": "CTCHead"}})
    assert default["head"]["fc"]["kernel"] == 0.0004 and default["backbone"]["conv"]["kernel"] == 0
    # SGD lr 1 with zero gradient: the update is exactly -factor * w
    tx, _ = build_optimizer({"name": "SGD", "lr": {"learning_rate": 1.0},
                             "regularizer": {"name": "L2", "factor": 0.1}}, arch, params, 1, 1)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert np.allclose(updates["backbone"]["conv"]["kernel"], -0.1)
    assert np.allclose(updates["backbone"]["BatchNorm_0"]["bias"], 0.0)
    assert np.allclose(updates["head"]["fc"]["kernel"], -0.5)


def test_adam_matches_optax_adam_without_regularizer():
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.3, 0.1])}
    tx, _ = build_optimizer({"name": "Adam", "lr": {"learning_rate": 0.01}}, {}, params, 1, 1)
    ref = optax.adam(0.01)
    u, _ = tx.update(grads, tx.init(params), params)
    r, _ = ref.update(grads, ref.init(params), params)
    assert np.allclose(u["w"], r["w"])
