import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxocr.training.optimizer import (build_optimizer, build_schedule, l2_factors,
                                      with_schedule_step)


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


def test_piecewise_warmup_ends_at_its_first_value_and_zero_values_work():
    s = build_schedule({"name": "Piecewise", "learning_rate": 0.1, "warmup_epoch": 1,
                        "decay_epochs": [2, 3], "values": [1e-3, 0.0, 1e-5]}, 10, 4)
    assert float(s(5)) == pytest.approx(5e-4)  # halfway to values[0], not to learning_rate
    assert [float(s(t)) for t in (10, 29, 30, 39, 40)] == pytest.approx([1e-3, 1e-3, 0, 0, 1e-5])
    assert np.isfinite([float(s(t)) for t in range(60)]).all()


def test_schedule_counter_moves_to_a_new_step_and_adam_count_stays():
    params = {"w": jnp.ones(2)}
    tx, schedule = build_optimizer({"name": "Adam", "lr": {"name": "Cosine", "learning_rate": 1.0}},
                                   {}, params, 10, 2)
    state = tx.init(params)
    for _ in range(3):
        _, state = tx.update({"w": jnp.ones(2)}, state, params)
    moved = with_schedule_step(state, 15)
    counts = [int(x) for x in jax.tree.leaves(moved) if x.ndim == 0]
    assert sorted(counts) == [3, 15]  # Adam's bias correction 3, the schedule 15
    # the next update uses the lr at step 15: cosine over 20 steps
    u, _ = tx.update({"w": jnp.ones(2)}, moved, params)
    ref, _ = tx.update({"w": jnp.ones(2)}, state, params)
    ratio = float(u["w"][0] / ref["w"][0])
    assert ratio == pytest.approx(float(schedule(15)) / float(schedule(3)), rel=1e-5)


def _shapes(arch, image):
    from jaxocr.models import build_model
    model = build_model(arch)
    x = jax.ShapeDtypeStruct((1, *image), jnp.float32)
    return jax.eval_shape(lambda k, x: model.init(k, x), jax.random.PRNGKey(0), x)["params"]


def test_l2_scope_on_the_real_crnn_and_svtr_trees():
    from jaxocr.config import load_config
    from conftest import ROOT
    crnn = load_config(f"{ROOT}/configs/rec/rec_mv3_none_bilstm_ctc.yml")
    arch = crnn["Architecture"]
    arch["Head"]["out_channels"], arch["Head"]["fc_decay"] = 37, 4e-5
    params = _shapes(arch, (32, 100, 3))
    factors = l2_factors(params, {"regularizer": {"name": "L2", "factor": 1e-5}}, arch)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(factors)[0]}
    head = {k: v for k, v in flat.items() if k.startswith("['head']")}
    assert len(head) == 2 and set(head.values()) == {4e-5}  # fc kernel and bias
    rest = set(v for k, v in flat.items() if k not in head)
    assert rest == {1e-5}  # every other tensor, BatchNorm scale/bias and the LSTM included
    assert any("bn" in k.lower() or "batchnorm" in k.lower() for k in flat if k not in head)

    svtr = load_config(f"{ROOT}/configs/rec/rec_svtrnet.yml")
    arch = svtr["Architecture"]
    arch["Head"]["out_channels"] = 37
    params = _shapes(arch, (64, 256, 3))
    factors = l2_factors(params, svtr["Optimizer"], arch)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(factors)[0]}
    stn = {k: v for k, v in flat.items() if "stn_head" in k}
    assert stn and set(stn.values()) == {0.0}  # the STN's head is not the CTC head
    assert {v for k, v in flat.items() if k.startswith("['head']")} == {0.0004}
    n_stn = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["transform"]))
    assert n_stn == 1_854_760  # none of the STN's parameters take fc_decay


def test_coupled_l2_with_head_fc_decay_and_bn_decay_as_paddle():
    params = {"backbone": {"conv": {"kernel": jnp.ones((2, 2))},
                           "BatchNorm_0": {"scale": jnp.ones(2), "bias": jnp.ones(2)}},
              "head": {"fc": {"kernel": jnp.ones((2, 2))}}}
    arch = {"Head": {"name": "CTCHead", "fc_decay": 0.5}}
    factors = l2_factors(params, {"regularizer": {"name": "L2", "factor": 0.1}}, arch)
    assert factors["backbone"]["conv"]["kernel"] == 0.1
    assert factors["backbone"]["BatchNorm_0"]["scale"] == 0.1  # no own regularizer in Paddle
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
    assert np.allclose(updates["backbone"]["BatchNorm_0"]["bias"], -0.1)
    assert np.allclose(updates["head"]["fc"]["kernel"], -0.5)


def test_adam_matches_optax_adam_without_regularizer():
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.3, 0.1])}
    tx, _ = build_optimizer({"name": "Adam", "lr": {"learning_rate": 0.01}}, {}, params, 1, 1)
    ref = optax.adam(0.01)
    u, _ = tx.update(grads, tx.init(params), params)
    r, _ = ref.update(grads, ref.init(params), params)
    assert np.allclose(u["w"], r["w"])
