"""PP-YOLOE-s model: CSPResNet + CustomCSPPAN + PPYOLOEHead (PaddleDetection release/2.7.1).

Shapes at 640 and parameter counts use ``jax.eval_shape`` (nothing runs); the numeric tests
run on 64x64 / 96x96 inputs, batch 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxocr.models.backbones.cspresnet import CSPResNet, RepVggBlock, fuse_repvgg
from jaxocr.models.heads.ppyoloe_head import (PPYOLOEHead, bias_init_with_prob, decode_boxes,
                                              dfl_project, generate_anchors)
from jaxocr.models.necks.custom_pan import CustomCSPPAN

S = dict(width_mult=0.50, depth_mult=0.33)  # configs/ppyoloe/ppyoloe_crn_s_300e_coco.yml


class PPYOLOE(nn.Module):
    """backbone -> neck -> head, as PaddleDetection's YOLOv3 architecture wires them."""

    width_mult: float = 0.5
    depth_mult: float = 0.33
    deploy: bool = False

    @nn.compact
    def __call__(self, x, train=False):
        m = dict(width_mult=self.width_mult, depth_mult=self.depth_mult, deploy=self.deploy)
        feats = CSPResNet(name="backbone", **m)(x, train)
        feats = CustomCSPPAN(name="neck", **m)(feats, train)
        return PPYOLOEHead(deploy=self.deploy, name="head")(feats, train)


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def _shapes(model, size=64):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, size, size, 3)), False))


# ------------------------------------------------------------- Paddle's parameter table, by hand
# An independent count following the constructors of PaddleDetection release/2.7.1
# (backbones/cspresnet.py, necks/custom_pan.py, heads/ppyoloe_head.py) with the crn config
# (_base_/ppyoloe_crn.yml): conv weights k*k*Cin*Cout, conv biases, BN weight + bias; BN
# _mean / _variance are buffers, not parameters, and are not counted.  This is the convention
# of Paddle's ``sum(p.numel() for p in model.parameters())`` and of the README's "Params(M)",
# which the fused numbers reproduce: s 7.93, m 23.43, l 52.20, x 98.42.  ``model.parameters()``
# includes the head's frozen proj_conv weight (reg_max + 1 = 17, stop_gradient): counted here
# in _paddle_count, while the Flax model keeps it as a constant, so its count is 17 less.

def _convbn(cin, cout, k):
    return k * k * cin * cout + 2 * cout


def _repvgg(c, fused):  # fused (convert_to_deploy): one 3x3 conv with bias
    return 9 * c * c + c if fused else _convbn(c, c, 3) + _convbn(c, c, 1)


def _basic(c, fused):
    return _convbn(c, c, 3) + _repvgg(c, fused)


def _ese(c):  # EffectiveSELayer.fc / ESEAttn.fc: 1x1 conv with bias
    return c * c + c


def _paddle_count(width_mult, depth_mult, fused, num_classes=80, reg_max=16):
    ch = [max(round(c * width_mult), 1) for c in (64, 128, 256, 512, 1024)]
    layers = [max(round(n * depth_mult), 1) for n in (3, 6, 6, 3)]
    # CSPResNet, large stem
    total = _convbn(3, ch[0] // 2, 3) + _convbn(ch[0] // 2, ch[0] // 2, 3) + _convbn(
        ch[0] // 2, ch[0], 3)
    for i in range(4):  # CSPResStage
        mid = (ch[i] + ch[i + 1]) // 2
        total += (_convbn(ch[i], mid, 3) + 2 * _convbn(mid, mid // 2, 1)
                  + layers[i] * _basic(mid // 2, fused) + _ese(mid) + _convbn(mid, ch[i + 1], 1))
    # CustomCSPPAN
    out = [max(round(c * width_mult), 1) for c in (768, 384, 192)]
    n = max(round(3 * depth_mult), 1)

    def csp_stage(cin, cout, spp):
        mid = cout // 2
        return (2 * _convbn(cin, mid, 1) + n * _basic(mid, fused)
                + (_convbn(4 * mid, mid, 1) if spp else 0) + _convbn(2 * mid, cout, 1))

    ins = ch[2:][::-1]
    for i, (cin, cout) in enumerate(zip(ins, out)):
        total += csp_stage(cin + (out[i - 1] // 2 if i else 0), cout, i == 0)
        if i < 2:
            total += _convbn(cout, cout // 2, 1)  # fpn_routes
    for i in (1, 0):
        total += _convbn(out[i + 1], out[i + 1], 3) + csp_stage(out[i] + out[i + 1], out[i],
                                                                 False)
    # PPYOLOEHead
    bins = reg_max + 1
    for c in out:
        total += 2 * (_ese(c) + _convbn(c, c, 1))  # stem_cls, stem_reg
        total += 9 * c * num_classes + num_classes + 9 * c * 4 * bins + 4 * bins
    return total + bins  # proj_conv.weight


# The numbers for s: 8,084,605 trained / 7,926,277 fused in Paddle's convention (the facts
# sheet's "8.08 M / 7.93 M"); the Flax model has 17 fewer (proj_conv is a constant).
PADDLE_S_TRAINED, PADDLE_S_FUSED = 8_084_605, 7_926_277
PROJ_CONV = 17
FLAX_S_TRAINED, FLAX_S_FUSED = PADDLE_S_TRAINED - PROJ_CONV, PADDLE_S_FUSED - PROJ_CONV


def test_paddle_count_table_matches_readme():
    assert _paddle_count(0.50, 0.33, False) == PADDLE_S_TRAINED
    assert _paddle_count(0.50, 0.33, True) == PADDLE_S_FUSED
    # README_legacy Params(M) of the deploy models s / m / l / x
    for (w, d), readme in {(0.50, 0.33): 7.93, (0.75, 0.67): 23.43, (1.0, 1.0): 52.20,
                           (1.25, 1.33): 98.42}.items():
        assert round(_paddle_count(w, d, True) / 1e6, 2) == readme


@pytest.mark.parametrize("deploy,expected", [(False, FLAX_S_TRAINED), (True, FLAX_S_FUSED)])
def test_param_count_s(deploy, expected):
    v = _shapes(PPYOLOE(deploy=deploy))
    assert _count(v["params"]) == expected == _paddle_count(0.5, 0.33, deploy) - PROJ_CONV
    # BN running mean + var: the same number of buffers as Paddle's _mean / _variance
    n_bn = _count(v["batch_stats"]) // 2
    assert n_bn == (10456 if not deploy else 8200)


def test_param_count_l():  # the unscaled model: the scaling rules are not special-cased for s
    v = _shapes(PPYOLOE(width_mult=1.0, depth_mult=1.0, deploy=True))
    assert _count(v["params"]) == _paddle_count(1.0, 1.0, True) - PROJ_CONV


def test_fuse_repvgg_matches_deploy_tree():
    v = _shapes(PPYOLOE())
    fused = jax.eval_shape(fuse_repvgg, v)
    deploy = _shapes(PPYOLOE(deploy=True))
    shp = lambda t: jax.tree_util.tree_map(lambda a: tuple(a.shape), t)  # noqa: E731
    assert shp(fused) == shp(deploy)


# --------------------------------------------------------------------------------- shapes at 640


def test_backbone_neck_channels_and_strides_at_640():
    x = jax.ShapeDtypeStruct((1, 640, 640, 3), jnp.float32)
    bb, neck = CSPResNet(**S), CustomCSPPAN(**S)
    assert bb.out_channels == [128, 256, 512]
    assert neck.scaled_out_channels == [384, 192, 96]

    def run(x):
        variables = bb.init(jax.random.PRNGKey(0), x, False)
        feats = bb.apply(variables, x, False)
        nv = neck.init(jax.random.PRNGKey(1), feats, False)
        return feats, neck.apply(nv, feats, False)

    feats, outs = jax.eval_shape(run, x)
    assert [tuple(f.shape) for f in feats] == [(1, 80, 80, 128), (1, 40, 40, 256),
                                               (1, 20, 20, 512)]
    # Paddle returns pan_feats[::-1]: [s32, s16, s8]
    assert [tuple(f.shape) for f in outs] == [(1, 20, 20, 384), (1, 40, 40, 192),
                                              (1, 80, 80, 96)]


def test_head_outputs_at_640():
    m = PPYOLOE()
    x = jnp.zeros((2, 640, 640, 3))
    v = _shapes(m)
    out = jax.eval_shape(lambda v, x: m.apply(v, x, False), v, x)
    assert out["cls_logits"].shape == (2, 8400, 80)
    assert out["reg_logits"].shape == (2, 8400, 4, 17)
    assert out["anchor_points"].shape == (8400, 2)
    assert out["stride_tensor"].shape == (8400, 1)
    assert all(o.dtype == jnp.float32 for o in out.values())


def test_anchor_order_levels_and_rows():
    _, pts, nums, strides = generate_anchors([(20, 20), (40, 40), (80, 80)], (32, 16, 8))
    assert nums == (400, 1600, 6400)
    np.testing.assert_array_equal(strides[:, 0], np.repeat([32, 16, 8], nums))
    np.testing.assert_array_equal(pts[:3], [[16, 16], [48, 16], [80, 16]])  # x fastest
    np.testing.assert_array_equal(pts[20], [16, 48])
    np.testing.assert_array_equal(pts[400:402], [[8, 8], [24, 8]])
    np.testing.assert_array_equal(pts[-1], [636, 636])
    anchors, _, _, _ = generate_anchors([(2, 3)], (8,), 5.0, 0.5)
    np.testing.assert_array_equal(anchors[0], [4 - 20, 4 - 20, 4 + 20, 4 + 20])


# ------------------------------------------------------------------------------- numeric tests


def _random_variables(shapes, seed):
    """Variables of the given shapes filled from numpy (no per-shape compiles, unlike a real
    ``init`` of the whole model: ~20 s on 2 cores): Paddle-like conv kernels, random BN
    statistics / affine parameters, small non-zero head weights, so fusion and the head are
    exercised away from their trivial init values.  ``alpha`` 0.7."""
    rng = np.random.default_rng(seed)

    def fill(path, a):
        name = jax.tree_util.keystr(path)
        if name.endswith("['var']"):
            v = rng.uniform(0.5, 2.0, a.shape)
        elif name.endswith("['mean']") or name.endswith("['bias']"):
            v = 0.1 * rng.normal(size=a.shape)
        elif name.endswith("['scale']"):
            v = rng.uniform(0.5, 1.5, a.shape)
        elif name.endswith("['alpha']"):
            v = np.full(a.shape, 0.7)
        elif "pred_" in name:
            v = 0.01 * rng.normal(size=a.shape)
        else:  # conv kernel (kh, kw, cin, cout): Paddle's Normal(0, sqrt(2 / fan_in))
            v = rng.normal(size=a.shape) * np.sqrt(2.0 / np.prod(a.shape[:3]))
        return jnp.asarray(v, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def test_init_outputs_s_head():
    """Paddle's init, on the s head's real ``init`` (channels 384, 192, 96; a 64x64 image's
    levels 2x2, 4x4, 8x8, random features): pred weights 0, so every cls logit is -log(99)
    (sigmoid 0.01) and every reg logit 1.0 -> uniform over the 17 bins -> DFL distance 8.0
    (the mean of 0..16) per side: boxes = anchor point -/+ 8 * stride."""
    head = PPYOLOEHead()
    ks = jax.random.split(jax.random.PRNGKey(0), 4)
    feats = [jax.random.normal(k, (1, h, h, c))
             for k, (h, c) in zip(ks[1:], ((2, 384), (4, 192), (8, 96)))]
    v = jax.jit(head.init, static_argnums=2)(ks[0], feats, False)
    out = jax.jit(head.apply, static_argnums=2)(v, feats, False)
    n = 4 + 16 + 64
    assert out["cls_logits"].shape == (1, n, 80)
    np.testing.assert_allclose(out["cls_logits"], bias_init_with_prob(0.01), rtol=0, atol=1e-6)
    np.testing.assert_allclose(jax.nn.sigmoid(out["cls_logits"]), 0.01, rtol=1e-6)
    np.testing.assert_array_equal(out["reg_logits"], 1.0)
    np.testing.assert_allclose(dfl_project(out["reg_logits"]), 8.0, rtol=1e-6)
    boxes = decode_boxes(out["anchor_points"], out["reg_logits"], out["stride_tensor"])
    pts, s = np.asarray(out["anchor_points"]), np.asarray(out["stride_tensor"])
    want = np.concatenate([pts - 8 * s, pts + 8 * s], axis=-1)[None]
    np.testing.assert_allclose(boxes, want, rtol=1e-6)
    # ESEAttn.fc: Normal(0, 0.001); BN scale 1, bias 0
    fc = v["params"]["stem_cls_0"]["fc"]
    assert 0.0005 < float(np.std(fc["kernel"])) < 0.002 and not np.asarray(fc["bias"]).any()


def test_head_level_order_and_reg_layout():
    """cls rows follow fpn_strides level order, row-major; reg channel = side * 17 + bin."""
    head = PPYOLOEHead(num_classes=3)
    feats = [jnp.ones((1, h, h, c)) for h, c in ((2, 16), (4, 8), (8, 8))]
    v = jax.jit(head.init, static_argnums=2)(jax.random.PRNGKey(0), feats, False)
    p = jax.tree_util.tree_map(lambda a: a, v["params"])
    for i in range(3):
        p[f"pred_cls_{i}"]["bias"] = jnp.full((3,), float(i))
        p[f"pred_reg_{i}"]["bias"] = jnp.arange(68, dtype=jnp.float32) + 100 * i
    out = jax.jit(head.apply, static_argnums=2)({**v, "params": p}, feats, False)
    cls = np.asarray(out["cls_logits"][0, :, 0])
    np.testing.assert_array_equal(cls, np.repeat([0.0, 1.0, 2.0], [4, 16, 64]))
    reg = np.asarray(out["reg_logits"][0])
    np.testing.assert_array_equal(reg[0], np.arange(68).reshape(4, 17))
    np.testing.assert_array_equal(reg[4], 100 + np.arange(68).reshape(4, 17))
    np.testing.assert_array_equal(np.asarray(out["stride_tensor"][:, 0]),
                                  np.repeat([32, 16, 8], [4, 16, 64]))


def test_decode_boxes_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 4, 17)).astype(np.float32) * 3
    pts = rng.uniform(0, 64, size=(5, 2)).astype(np.float32)
    stride = np.array([[8], [8], [16], [32], [32]], np.float32)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    d = (p * np.arange(17)).sum(-1) * stride  # (2, 5, 4) pixels
    want = np.concatenate([pts - d[..., :2], pts + d[..., 2:]], axis=-1)
    np.testing.assert_allclose(decode_boxes(pts, logits, stride), want, rtol=1e-5, atol=1e-4)


def test_fused_equals_unfused_eval():
    """The whole s model at 64x64, eval: trained form vs ``fuse_repvgg`` + ``deploy=True``."""
    x = jax.random.normal(jax.random.PRNGKey(3), (1, 64, 64, 3))
    v = _random_variables(_shapes(PPYOLOE()), 1)
    ref = jax.jit(PPYOLOE().apply, static_argnums=2)(v, x, False)
    fused = jax.jit(fuse_repvgg)(v)
    got = jax.jit(PPYOLOE(deploy=True).apply, static_argnums=2)(fused, x, False)
    assert ref["cls_logits"].shape == (1, 84, 80) and ref["reg_logits"].shape == (1, 84, 4, 17)
    for k in ("cls_logits", "reg_logits"):
        assert float(jnp.std(ref[k])) > 1e-2  # not a constant output
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-4)


def test_fuse_repvgg_alpha_and_train_mode():
    """The PP-YOLOE+ variant (the 1x1 branch times a learnable alpha), and BN in train mode."""
    blk = RepVggBlock(8, act="swish", alpha=True)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 8))
    v0 = blk.init(jax.random.PRNGKey(1), x, False)
    assert set(v0["params"]) == {"conv1", "conv2", "alpha"}
    np.testing.assert_array_equal(v0["params"]["alpha"], [1.0])
    v = _random_variables(v0, 2)
    fused = fuse_repvgg(v)
    assert set(fused["params"]) == {"conv"} and not fused["batch_stats"]
    got = RepVggBlock(8, act="swish", alpha=True, deploy=True).apply(fused, x, False)
    np.testing.assert_allclose(got, blk.apply(v, x, False), rtol=1e-4, atol=1e-5)
    _, upd = blk.apply(v, x, True, mutable=["batch_stats"])
    mean = upd["batch_stats"]["conv1"]["bn"]["mean"]
    assert not np.allclose(mean, v["batch_stats"]["conv1"]["bn"]["mean"])


def test_drop_block_refused():
    feats = [jnp.zeros((1, 8, 8, 16)), jnp.zeros((1, 4, 4, 32)), jnp.zeros((1, 2, 2, 64))]
    with pytest.raises(NotImplementedError, match="drop_block"):
        CustomCSPPAN(drop_block=True, **S).init(jax.random.PRNGKey(0), feats, False)
