"""DB text-detection models: det MobileNetV3, DBFPN / RSEFPN, DBHead.

Shapes and parameter counts use ``jax.eval_shape`` (nothing compiles); the numeric tests run
on tiny inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxocr.models import build_model
from jaxocr.models.backbones.mobilenet_v3 import MobileNetV3, MobileNetV3Det
from jaxocr.models.heads.db_head import ConvTranspose, DBHead
from jaxocr.models.necks.db_fpn import DBFPN, RSEFPN, upsample_nearest

# Architecture sections of PaddleOCR's configs/det/det_mv3_db.yml and
# configs/det/ch_PP-OCRv3/ch_PP-OCRv3_det_student.yml.
DET_MV3_DB = {
    "model_type": "det", "algorithm": "DB", "Transform": None,
    "Backbone": {"name": "MobileNetV3", "scale": 0.5, "model_name": "large"},
    "Neck": {"name": "DBFPN", "out_channels": 256},
    "Head": {"name": "DBHead", "k": 50},
}
PPOCRV3_DET_STUDENT = {
    "model_type": "det", "algorithm": "DB", "Transform": None,
    "Backbone": {"name": "MobileNetV3", "scale": 0.5, "model_name": "large", "disable_se": True},
    "Neck": {"name": "RSEFPN", "out_channels": 96, "shortcut": True},
    "Head": {"name": "DBHead", "k": 50},
}
DET_MV3_DB_PARAMS = 1_844_136
PPOCRV3_DET_STUDENT_PARAMS = 603_418


# ------------------------------------------------------------------ Paddle's layer table, by hand
# An independent count over PaddleOCR's layer definitions (det_mobilenet_v3.py, db_fpn.py,
# det_db_head.py): conv weights k*k*Cin/groups*Cout, conv biases, BN scale + bias (running
# mean / variance are not trainable and not counted).

_PADDLE_LARGE = [  # k, exp, c, se, s  (det_mobilenet_v3.py, model_name large)
    (3, 16, 16, 0, 1), (3, 64, 24, 0, 2), (3, 72, 24, 0, 1), (5, 72, 40, 1, 2),
    (5, 120, 40, 1, 1), (5, 120, 40, 1, 1), (3, 240, 80, 0, 2), (3, 200, 80, 0, 1),
    (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 1, 1), (3, 672, 112, 1, 1),
    (5, 672, 160, 1, 2), (5, 960, 160, 1, 1), (5, 960, 160, 1, 1)]


def _md(v, d=8):
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


def _conv(cin, cout, k, groups=1, bias=False):
    return k * k * (cin // groups) * cout + (cout if bias else 0)


def _bn(c):
    return 2 * c


def _se(c):
    return _conv(c, c // 4, 1, bias=True) + _conv(c // 4, c, 1, bias=True)


def paddle_mv3_large_det(scale, disable_se):
    """Returns (param count, stage out_channels)."""
    inp = _md(16 * scale)
    n = _conv(3, inp, 3) + _bn(inp)
    stage_ch = []
    for i, (k, exp, c, se, s) in enumerate(_PADDLE_LARGE):
        if s == 2 and i > 2:
            stage_ch.append(inp)
        mid, out = _md(scale * exp), _md(scale * c)
        n += _conv(inp, mid, 1) + _bn(mid) + _conv(mid, mid, k, groups=mid) + _bn(mid)
        n += _se(mid) if se and not disable_se else 0
        n += _conv(mid, out, 1) + _bn(out)
        inp = out
    last = _md(scale * 960)
    n += _conv(inp, last, 1) + _bn(last)
    return n, stage_ch + [last]


def paddle_dbfpn(in_ch, c):
    return sum(_conv(ci, c, 1) for ci in in_ch) + 4 * _conv(c, c // 4, 3)


def paddle_rsefpn(in_ch, c):
    ins = sum(_conv(ci, c, 1) + _se(c) for ci in in_ch)
    inp = 4 * (_conv(c, c // 4, 3) + _se(c // 4))
    return ins + inp


def paddle_dbhead(c):
    q = c // 4
    branch = (_conv(c, q, 3) + _bn(q)
              + q * q * 2 * 2 + q + _bn(q)  # Conv2DTranspose weight (Cin, Cout, 2, 2) + bias
              + q * 1 * 2 * 2 + 1)
    return 2 * branch


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def _init_shapes(model, shape, train=False):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda k, x: model.init(k, x, train=train), jax.random.PRNGKey(0), x)


# ------------------------------------------------------------------ counts

def test_paddle_table_counts():
    bb, ch = paddle_mv3_large_det(0.5, disable_se=False)
    assert ch == [16, 24, 56, 480]
    assert bb == 778_022  # the rec backbone's count too: same layers, only strides differ
    assert bb + paddle_dbfpn(ch, 256) + paddle_dbhead(256) == DET_MV3_DB_PARAMS
    bb, ch = paddle_mv3_large_det(0.5, disable_se=True)
    assert bb + paddle_rsefpn(ch, 96) + paddle_dbhead(96) == PPOCRV3_DET_STUDENT_PARAMS


@pytest.mark.parametrize("arch,total,neck", [
    (DET_MV3_DB, DET_MV3_DB_PARAMS, lambda ch: paddle_dbfpn(ch, 256)),
    (PPOCRV3_DET_STUDENT, PPOCRV3_DET_STUDENT_PARAMS, lambda ch: paddle_rsefpn(ch, 96)),
])
def test_det_param_counts_and_shapes(arch, total, neck):
    model = build_model(arch)
    variables = _init_shapes(model, (2, 640, 640, 3))
    assert set(variables) == {"params", "batch_stats"}
    p = variables["params"]
    assert _count(p) == total
    bb, ch = paddle_mv3_large_det(0.5, arch["Backbone"].get("disable_se", False))
    assert _count(p["backbone"]) == bb
    assert _count(p["neck"]) == neck(ch)
    c = arch["Neck"]["out_channels"]
    assert _count(p["head"]) == paddle_dbhead(c)
    # Paddle layouts: ConvTranspose (Cin, Cout, 2, 2) is stored (2, 2, Cin, Cout) here
    assert p["head"]["binarize"]["conv2"]["kernel"].shape == (2, 2, c // 4, c // 4)
    assert p["head"]["thresh"]["conv3"]["kernel"].shape == (2, 2, c // 4, 1)
    assert p["head"]["thresh"]["conv3"]["bias"].shape == (1,)

    x = jax.ShapeDtypeStruct((2, 640, 640, 3), jnp.float32)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert set(out) == {"maps"} and out["maps"].shape == (2, 640, 640, 1)
    out, _ = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
    assert out["maps"].shape == (2, 640, 640, 3) and out["maps"].dtype == jnp.float32


def test_det_backbone_stages_and_strides():
    m = MobileNetV3Det(model_name="large", scale=0.5)
    assert m.out_channels == [16, 24, 56, 480]
    x = jax.ShapeDtypeStruct((1, 640, 640, 3), jnp.float32)
    v = jax.eval_shape(lambda k, x: m.init(k, x, train=False), jax.random.PRNGKey(0), x)
    outs = jax.eval_shape(lambda v, x: m.apply(v, x, train=False), v, x)
    assert [o.shape for o in outs] == [(1, 160, 160, 16), (1, 80, 80, 24), (1, 40, 40, 56),
                                       (1, 20, 20, 480)]
    # Paddle's stage split (stage0 = blocks 0-2, ..., stage3 = blocks 12-14 + conv)
    assert sorted(k for k in v["params"] if k.startswith("stage3")) == [
        "stage3_0", "stage3_1", "stage3_2", "stage3_3"]
    assert sum(k.startswith("stage2") for k in v["params"]) == 6
    assert "mid_se" in v["params"]["stage1_0"]

    small = MobileNetV3Det(model_name="small", scale=1.0)
    assert small.out_channels == [16, 24, 48, 576]
    outs = jax.eval_shape(lambda k, x: small.init_with_output(k, x, train=False)[0],
                          jax.random.PRNGKey(0), x)
    assert [o.shape[1:] for o in outs] == [(160, 160, 16), (80, 80, 24), (40, 40, 48),
                                           (20, 20, 576)]

    no_se = MobileNetV3Det(model_name="large", scale=0.5, disable_se=True)
    v = jax.eval_shape(lambda k, x: no_se.init(k, x, train=False), jax.random.PRNGKey(0), x)
    assert "mid_se" not in v["params"]["stage1_0"]


def test_necks_shapes_and_in_channels_check():
    feats = [jnp.zeros((1, 160 // 2 ** i, 160 // 2 ** i, c)) for i, c in
             enumerate([16, 24, 56, 480])]
    feats = [jax.ShapeDtypeStruct(f.shape, f.dtype) for f in feats]
    for neck, c in ((DBFPN(out_channels=256), 256), (RSEFPN(out_channels=96), 96),
                    (RSEFPN(out_channels=96, shortcut=False), 96),
                    (DBFPN(out_channels=256, use_asf=True), 256)):
        y = jax.eval_shape(lambda k, f: neck.init_with_output(k, f)[0], jax.random.PRNGKey(0),
                           feats)
        assert y.shape == (1, 160, 160, c)
    with pytest.raises(ValueError, match="in_channels"):
        jax.eval_shape(lambda k, f: DBFPN(out_channels=256, in_channels=[16, 24, 56, 960]).init(
            k, f), jax.random.PRNGKey(0), feats)
    odd = [jax.ShapeDtypeStruct((1, 1 + 160 // 2 ** i, 160 // 2 ** i, 8), jnp.float32)
           for i in range(4)]
    with pytest.raises(ValueError, match="multiples of 32"):
        jax.eval_shape(lambda k, f: DBFPN(out_channels=32).init(k, f), jax.random.PRNGKey(0), odd)


def test_asf_param_count():
    # ASFBlock(256, 64): conv 3x3 256->64 with bias; 3x3 1->1, 1x1 1->1, 1x1 64->4, no biases
    feats = [jax.ShapeDtypeStruct((1, 32 // 2 ** i, 32 // 2 ** i, c), jnp.float32)
             for i, c in enumerate([16, 24, 56, 480])]
    v = jax.eval_shape(lambda k, f: DBFPN(out_channels=256, use_asf=True).init(k, f),
                       jax.random.PRNGKey(0), feats)
    assert _count(v["params"]["asf"]) == 9 * 256 * 64 + 64 + 9 + 1 + 64 * 4
    assert _count(v["params"]) == paddle_dbfpn([16, 24, 56, 480], 256) + _count(
        v["params"]["asf"])


def test_upsample_nearest_is_paddle_nearest():
    x = jnp.arange(6.0).reshape(1, 2, 3, 1)
    y = np.asarray(upsample_nearest(x, 2))[0, :, :, 0]
    np.testing.assert_array_equal(y, np.repeat(np.repeat(np.arange(6.0).reshape(2, 3), 2, 0),
                                               2, 1))


def _np_conv_transpose(x, w, b, s):
    """out[i*s + a, j*s + c] += x[i, j] @ w[a, c] (Paddle / torch Conv2DTranspose, pad 0)."""
    n, h, wd, _ = x.shape
    kh, kw, _, co = w.shape
    out = np.zeros((n, (h - 1) * s + kh, (wd - 1) * s + kw, co))
    for i in range(h):
        for j in range(wd):
            for a in range(kh):
                for c in range(kw):
                    out[:, i * s + a, j * s + c] += x[:, i, j] @ w[a, c]
    return out + b


@pytest.mark.parametrize("k,impls", [(2, ("fast", "xla")), (3, ("fast", "xla"))])
def test_conv_transpose_matches_definition(k, impls):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 5))
    params = None
    for impl in impls:
        m = ConvTranspose(6, k, 2, impl=impl)
        if params is None:
            params = m.init(jax.random.PRNGKey(1), x)
            params = jax.tree_util.tree_map(
                lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
        y = np.asarray(m.apply(params, x))
        ref = _np_conv_transpose(np.asarray(x, np.float64),
                                 np.asarray(params["params"]["kernel"], np.float64),
                                 np.asarray(params["params"]["bias"], np.float64), 2)
        assert y.shape == ref.shape == (2, 2 * 2 + k, 3 * 2 + k, 6)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_db_head_train_and_eval_outputs():
    head = DBHead(k=50)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 32))
    v_eval = jax.eval_shape(lambda k, x: head.init(k, x, train=False), jax.random.PRNGKey(0), x)
    v = head.init(jax.random.PRNGKey(0), x, train=True)
    assert jax.tree_util.tree_structure(v_eval) == jax.tree_util.tree_structure(v)
    assert set(v["params"]) == {"binarize", "thresh"}
    p = v["params"]["binarize"]
    # inits: BN gamma 1 / beta 1e-4; ConvTranspose biases within +-1/sqrt(C/4)
    np.testing.assert_array_equal(p["conv_bn1"]["scale"], 1.0)
    np.testing.assert_allclose(p["conv_bn2"]["bias"], 1e-4)
    assert np.abs(p["conv2"]["bias"]).max() <= 1 / np.sqrt(8)
    assert np.abs(p["conv3"]["bias"]).max() <= 1 / np.sqrt(8)
    assert np.abs(p["conv3"]["kernel"]).max() <= np.sqrt(6 / 4)  # Kaiming fan_in = Cout*2*2

    out = head.apply(v, x, train=False)
    assert set(out) == {"maps"} and out["maps"].shape == (2, 16, 24, 1)
    (tr, _) = head.apply(v, x, train=True, mutable=["batch_stats"])
    m = np.asarray(tr["maps"])
    assert m.shape == (2, 16, 24, 3)
    assert ((m >= 0) & (m <= 1)).all()
    shrink, thresh, binary = m[..., 0], m[..., 1], m[..., 2]
    np.testing.assert_allclose(binary, 1 / (1 + np.exp(-50 * (shrink - thresh))), rtol=1e-5,
                               atol=1e-6)
    # eval shrink == binarize branch with running stats; same weights as the train shrink
    ev = head.apply(v, x, train=False)["maps"][..., 0]
    assert ev.shape == shrink.shape


def test_det_model_small_forward():
    """Whole det_mv3_db on a 64x64 input, eval and train (runs the real computation)."""
    model = build_model(DET_MV3_DB)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 64, 64, 3))
    v = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.PRNGKey(1), x)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
    assert out["maps"].shape == (1, 64, 64, 1)
    assert bool(jnp.all(jnp.isfinite(out["maps"])))


def test_model_type_selects_mobilenet_v3():
    rec = build_model({"model_type": "rec", "Backbone": {"name": "MobileNetV3"}})
    det = build_model({"model_type": "det", "Backbone": {"name": "MobileNetV3"}})
    default = build_model({"Backbone": {"name": "MobileNetV3"}})
    assert type(rec.backbone) is MobileNetV3 and type(default.backbone) is MobileNetV3
    assert type(det.backbone) is MobileNetV3Det
    assert rec.backbone.model_name == "small" and det.backbone.model_name == "large"  # Paddle
    with pytest.raises(ValueError, match="SVTRNet.*'det'"):
        build_model({"model_type": "det", "Backbone": {"name": "SVTRNet"}})
    with pytest.raises(ValueError, match="model_type.*'e2e'"):
        build_model({"model_type": "e2e", "Backbone": {"name": "MobileNetV3"}})
    with pytest.raises(ValueError, match="large_stride"):  # a rec-only option under det
        build_model({"model_type": "det", "Backbone": {"name": "MobileNetV3",
                                                       "large_stride": [1, 2, 2, 2]}})


def test_rec_models_unchanged():
    arch = {"model_type": "rec", "algorithm": "CRNN", "Transform": None,
            "Backbone": {"name": "MobileNetV3", "scale": 0.5, "model_name": "large"},
            "Neck": {"name": "SequenceEncoder", "encoder_type": "rnn", "hidden_size": 96},
            "Head": {"name": "CTCHead", "fc_decay": 0, "out_channels": 37}}
    model = build_model(arch)
    v = _init_shapes(model, (2, 32, 100, 3))
    assert _count(v["params"]) == 1_451_787
    assert sorted(v["params"]["backbone"])[:3] == ["blocks_0", "blocks_1", "blocks_10"]
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), v,
                         jax.ShapeDtypeStruct((2, 32, 100, 3), jnp.float32))
    assert out.shape == (2, 25, 37)


def test_det_model_bfloat16_and_sync_bn_under_shard_map():
    from jax.sharding import Mesh, PartitionSpec as P

    model = build_model(PPOCRV3_DET_STUDENT, bn_axis_name="data", dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    variables = _init_shapes(model, x.shape)
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(variables))
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))

    def step(v, x):
        def loss(p):
            y, upd = model.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                                 mutable=["batch_stats"])
            return jnp.mean(y["maps"]), (y["maps"], upd)
        (_, (maps, upd)), g = jax.value_and_grad(loss, has_aux=True)(v["params"])
        return jax.lax.pmean(g, "data"), maps

    f = jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P("data")))
    grads, maps = jax.eval_shape(f, variables, x)
    assert _count(grads) == PPOCRV3_DET_STUDENT_PARAMS
    assert maps.shape == (2, 64, 64, 3) and maps.dtype == jnp.float32
