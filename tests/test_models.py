"""Model tests: CRNN-MV3 architecture, fast conv == lax conv, Paddle LSTM, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxocr.models import build_model
from jaxocr.models.backbones.mobilenet_v3 import MobileNetV3, make_divisible
from jaxocr.models.layers import Conv
from jaxocr.models.necks.rnn import LSTM, SequenceEncoder

CRNN_ARCH = {
    "model_type": "rec",
    "algorithm": "CRNN",
    "Transform": None,
    "Backbone": {"name": "MobileNetV3", "scale": 0.5, "model_name": "large"},
    "Neck": {"name": "SequenceEncoder", "encoder_type": "rnn", "hidden_size": 96},
    "Head": {"name": "CTCHead", "fc_decay": 0, "out_channels": 37},
}


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def test_make_divisible():
    assert [make_divisible(v) for v in (8, 16 * 0.35, 12, 480, 0.5 * 960, 0.5 * 576)] == [
        8, 8, 16, 480, 480, 288]
    assert make_divisible(0.35 * 88) == 32  # 30.8 -> 32


def test_crnn_mv3_param_count_and_shape():
    model = build_model(CRNN_ARCH)
    x = jax.ShapeDtypeStruct((2, 32, 100, 3), jnp.float32)
    variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False),
                               jax.random.PRNGKey(0), x)
    assert set(variables) == {"params", "batch_stats"}
    # PaddleOCR's own count for rec_mv3_none_bilstm_ctc (trainable params; BN running stats
    # are not parameters in Paddle either).
    assert _count(variables["params"]) == 1_451_787
    assert _count(variables["params"]["backbone"]) == 778_022
    assert _count(variables["params"]["neck"]) == 666_624
    lstm = variables["params"]["neck"]["lstm"]
    assert lstm["layer_0_cell_fw"]["weight_ih"].shape == (384, 480)
    assert lstm["layer_1_cell_bw"]["weight_ih"].shape == (384, 192)
    assert lstm["layer_0_cell_fw"]["bias_hh"].shape == (384,)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert out.shape == (2, 25, 37)


def test_crnn_eval_probabilities_and_train_logits():
    model = build_model(CRNN_ARCH)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 100, 3))
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.PRNGKey(0), x)
    probs = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert probs.shape == (2, 25, 37)
    assert bool(jnp.all(probs >= 0))
    np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, rtol=1e-5)

    logits, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    assert logits.shape == (2, 25, 37)
    assert not np.allclose(np.asarray(logits.sum(-1)), 1.0)
    # train mode updated the BN running statistics (momentum 0.9)
    old = jax.tree_util.tree_leaves(variables["batch_stats"])
    new = jax.tree_util.tree_leaves(upd["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(old, new))


def test_mobilenet_v3_small_rec_strides():
    m = MobileNetV3(model_name="small", scale=0.5, small_stride=[1, 2, 2, 2])
    assert m.out_channels == 288
    x = jax.ShapeDtypeStruct((2, 32, 320, 3), jnp.float32)
    variables = jax.eval_shape(lambda k, x: m.init(k, x, train=False), jax.random.PRNGKey(0), x)
    y = jax.eval_shape(lambda v, x: m.apply(v, x, train=False), variables, x)
    assert y.shape == (2, 1, 80, 288)


@pytest.mark.parametrize(
    "k,stride,depthwise",
    [(3, 1, True), (3, 2, True), (3, (2, 1), True), (5, 1, True), (5, 2, True),
     (5, (2, 1), True), (1, 1, False), (1, 2, False), (3, 1, False), (2, 1, False),
     (3, 2, False), (3, (2, 1), False)])
# dense k x k convs: their kernel gradient is computed by taps (layers.dense_conv_fast)
def test_fast_conv_matches_xla(k, stride, depthwise):
    cin, cout = (6, 6) if depthwise else (5, 7) if k % 2 else (7, 5)  # dense: both slicings
    groups = cin if depthwise else 1
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 11, cin))
    fast = Conv(cout, k, stride, groups=groups, use_bias=True, impl="fast")
    xla = Conv(cout, k, stride, groups=groups, use_bias=True, impl="xla")
    params = fast.init(jax.random.PRNGKey(1), x)
    params = jax.tree_util.tree_map(  # random non-zero bias too
        lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
    assert params["params"]["kernel"].shape == (k, k, cin // groups, cout)

    y_fast, y_xla = fast.apply(params, x), xla.apply(params, x)
    assert y_fast.shape == y_xla.shape
    np.testing.assert_allclose(y_fast, y_xla, rtol=1e-5, atol=1e-5)

    w = jax.random.normal(jax.random.PRNGKey(3), y_xla.shape)

    def loss(module):
        return lambda p, x: jnp.sum(module.apply(p, x) * w)

    gp_f, gx_f = jax.grad(loss(fast), argnums=(0, 1))(params, x)
    gp_x, gx_x = jax.grad(loss(xla), argnums=(0, 1))(params, x)
    np.testing.assert_allclose(gx_f, gx_x, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(gp_f), jax.tree_util.tree_leaves(gp_x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def _np_lstm_dir(x, w_ih, w_hh, b_ih, b_hh, reverse):
    """Straight Paddle LSTMCell loop: gates i, f, g, o."""
    sig = lambda z: 1 / (1 + np.exp(-z))
    b, t, _ = x.shape
    hdim = w_hh.shape[1]
    h, c = np.zeros((b, hdim)), np.zeros((b, hdim))
    out = np.zeros((b, t, hdim))
    steps = range(t - 1, -1, -1) if reverse else range(t)
    for s in steps:
        gates = x[:, s] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = np.split(gates, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        out[:, s] = h
    return out


@pytest.mark.parametrize("unroll", [1, 3])
def test_paddle_lstm_matches_numpy_loop(unroll):
    hdim, din, t = 4, 3, 7
    lstm = LSTM(hdim, num_layers=2, direction="bidirectional", unroll=unroll)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, t, din))
    params = lstm.init(jax.random.PRNGKey(1), x)
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    bound = 1 / np.sqrt(hdim)
    assert all(np.abs(a).max() <= bound for a in jax.tree_util.tree_leaves(p))
    y = np.asarray(lstm.apply(params, x))
    assert y.shape == (2, t, 2 * hdim)

    h = np.asarray(x, np.float64)
    for layer in range(2):
        outs = []
        for d, rev in (("fw", False), ("bw", True)):
            q = p[f"layer_{layer}_cell_{d}"]
            outs.append(_np_lstm_dir(h, q["weight_ih"], q["weight_hh"], q["bias_ih"],
                                     q["bias_hh"], rev))
        h = np.concatenate(outs, -1)
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-6)


def test_sequence_encoder_reshape_and_height_check():
    enc = SequenceEncoder(encoder_type="reshape")
    x = jnp.ones((2, 1, 5, 8))
    assert enc.apply({}, x).shape == (2, 5, 8)
    with pytest.raises(ValueError, match="height 1"):
        enc.apply({}, jnp.ones((2, 2, 5, 8)))


def test_build_model_errors():
    bad = dict(CRNN_ARCH, Backbone={"name": "ResNeXt", "layers": 34})
    with pytest.raises(ValueError, match="ResNeXt.*MobileNetV3"):
        build_model(bad)
    bad = dict(CRNN_ARCH, Neck={"name": "SequenceEncoder", "encoder_type": "rnn", "hiden": 9})
    with pytest.raises(ValueError, match="hiden"):
        build_model(bad)
    bad = dict(CRNN_ARCH, Head={"name": "CTCHead", "fc_decay": 0})
    with pytest.raises(ValueError, match="out_channels"):
        build_model(bad)


def test_crnn_traces_inside_shard_map_with_sync_bn():
    """The trainer runs the model per device under shard_map (vma checks on) with sync BN."""
    from jax.sharding import Mesh, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    model = build_model(CRNN_ARCH, bn_axis_name="data")
    x = jax.ShapeDtypeStruct((2, 32, 100, 3), jnp.float32)
    variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False),
                               jax.random.PRNGKey(0), x)

    def step(v, x):
        def loss(p):
            y, upd = model.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                                 mutable=["batch_stats"])
            return jnp.mean(y), upd
        (l, upd), g = jax.value_and_grad(loss, has_aux=True)(v["params"])
        return jax.lax.pmean(g, "data"), upd

    f = jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P()))
    grads, _ = jax.eval_shape(f, variables, x)
    assert _count(grads) == 1_451_787


def test_small_default_strides_on_32px_input_give_clear_error():
    # Paddle's default small_stride [2,2,2,2] leaves height 1 before the 2x2 pool on 32 px.
    m = MobileNetV3(model_name="small", scale=0.35)
    x = jax.ShapeDtypeStruct((1, 32, 100, 3), jnp.float32)
    with pytest.raises(ValueError, match="small_stride"):
        jax.eval_shape(lambda k, x: m.init(k, x, train=False), jax.random.PRNGKey(0), x)


def test_lstm_cell_state_stays_float32_under_bfloat16():
    from jaxocr.models.necks.rnn import lstm_recurrence
    xw = jnp.zeros((2, 5, 16), jnp.bfloat16)
    w = jnp.zeros((16, 4), jnp.bfloat16)
    jaxpr = jax.make_jaxpr(lambda a, b: lstm_recurrence(a, b))(xw, w)
    scan = next(e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan")
    carry = scan.params["num_carry"]
    dtypes = sorted(str(v.aval.dtype) for v in scan.outvars[:carry])
    assert dtypes == ["bfloat16", "float32"]  # h in the compute dtype, c in float32
    assert lstm_recurrence(xw, w).dtype == jnp.bfloat16
