"""STAR-Net's TPS and the rec ResNet_vd (PaddleOCR's rec_tps.py / rec_resnet_vd.py). Their
parameter counts are in test_config.py (SHIPPED); here their arithmetic and the TPS's
learning-rate multipliers."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxocr.models.backbones.rec_resnet_vd import ResNet, avg_pool_ceil
from jaxocr.models.transforms.stn import grid_sample
from jaxocr.models.transforms.tps import TPS, grid_matrices, target_fiducials
from jaxocr.training.optimizer import build_optimizer


@pytest.mark.parametrize("transform,backbone,neck,count", [
    (None, "mv3", None, 795_819),  # Rosetta, rec_mv3_none_none_ctc
    (None, "r34", None, 21_327_109),  # rec_r34_vd_none_none_ctc
    ("large", "r34", 256, 26_174_819),  # STAR-Net, rec_r34_vd_tps_bilstm_ctc
])
def test_paddleocrs_other_ctc_models_have_its_parameter_counts(transform, backbone, neck, count):
    """The configs/rec models not shipped as files (37 classes, 3 x 32 x 100)."""
    from jaxocr.models import build_model
    arch = {"model_type": "rec",
            "Backbone": {"name": "MobileNetV3", "scale": 0.5, "model_name": "large"}
            if backbone == "mv3" else {"name": "ResNet", "layers": 34},
            "Neck": {"name": "SequenceEncoder", "encoder_type": "rnn", "hidden_size": neck}
            if neck else {"name": "SequenceEncoder", "encoder_type": "reshape"},
            "Head": {"name": "CTCHead", "out_channels": 37}}
    if transform:
        arch["Transform"] = {"name": "TPS", "num_fiducial": 20, "loc_lr": 0.1,
                             "model_name": transform}
    model = build_model(arch)
    x = jax.ShapeDtypeStruct((1, 32, 100, 3), jnp.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)["params"]
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == count


def test_tps_through_the_target_fiducials_is_the_pixel_centre_grid():
    """The TPS that maps the target fiducials onto themselves is the identity: at every output
    pixel centre it returns that centre (Paddle's grid, before align_corners sampling)."""
    n, h, w = 20, 8, 30
    inverse, p_hat = grid_matrices(n, h, w)
    padded = np.concatenate([target_fiducials(n), np.zeros((3, 2))])
    grid = p_hat @ inverse @ padded
    xs, ys = (np.arange(w) * 2 + 1 - w) / w, (np.arange(h) * 2 + 1 - h) / h
    expected = np.stack(np.meshgrid(xs, ys), axis=2).reshape(-1, 2)
    np.testing.assert_allclose(grid, expected, atol=1e-9)


def test_tps_bends_the_line_as_its_fiducials_say():
    """At initialisation the localisation net outputs RARE's curved fiducials whatever the
    image. Sampling an image whose channels are its own x and y ramps shows where each output
    pixel reads: the top edge's middle from y = -0.5 (a quarter down), the bottom edge's middle
    from y = 0.5, both at x = 0."""
    h, w = 32, 100
    ramps = np.stack(np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h)), axis=2)
    image = jnp.asarray(np.broadcast_to(np.concatenate([ramps, ramps[..., :1]], 2),
                                        (2, h, w, 3)), jnp.float32)
    model = TPS(20, 0.1, "small", conv_impl="xla")
    variables = model.init(jax.random.PRNGKey(0), image)
    assert variables["params"]["ex_fc"]["kernel"].shape == (40, 6)
    out = np.asarray(model.apply(variables, image))
    assert out.shape == image.shape
    np.testing.assert_allclose(out[:, 0, w // 2, :2], [[0.5, 0.25]] * 2, atol=0.02)
    np.testing.assert_allclose(out[:, -1, w // 2, :2], [[0.5, 0.75]] * 2, atol=0.02)


def test_grid_sample_is_bilinear_with_zeros_outside():
    image = jnp.arange(12.0).reshape(1, 3, 4, 1)
    points = jnp.asarray([[[[0.0, 0.0], [1.0, 1.0], [0.5, 0.5], [1 / 6, 0.25], [-1 / 3, 0.0],
                            [7 / 6, 0.5]]]])  # (x, y) in [0, 1] spanning the pixel centres
    got = np.asarray(grid_sample(image, points)).reshape(-1)
    # (0, 0) -> 0; (3, 2) -> 11; (1.5, 1) -> 5.5; (0.5, 0.5) -> 2.5; x = -1 -> outside: 0;
    # x = 3.5 between column 3 (value 7 at y = 1) and outside: half of 7
    np.testing.assert_allclose(got, [0.0, 11.0, 5.5, 2.5, 0.0, 3.5], atol=1e-6)


def test_avg_pool_with_ceil_mode_averages_a_partial_last_window():
    x = jnp.arange(10.0).reshape(1, 5, 2, 1)  # rows [0,1], [2,3], ..., [8,9]
    got = np.asarray(avg_pool_ceil(x, (2, 1)))[0, :, :, 0]
    np.testing.assert_allclose(got, [[1, 2], [5, 6], [8, 9]])


@pytest.mark.parametrize("layers,channels", [(34, 512), (50, 2048)])
def test_resnet_vd_keeps_the_sequence_length(layers, channels):
    """32 x 100 -> 1 x 25: only the stem's pool and the last one halve the width."""
    x = jax.ShapeDtypeStruct((1, 32, 100, 3), jnp.float32)
    model = ResNet(layers)
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0], x)
    assert out.shape == (1, 1, 25, channels)


def test_tps_loc_lr_scales_its_localisation_net_and_ex_fc_stays_zero():
    """Paddle's ParamAttr(learning_rate=loc_lr): one Momentum step (with coupled L2) moves the
    localisation net by loc_lr times what it would move at rate 1; ex_fc (rate 0) never moves;
    the other parts keep the full rate."""
    tps = jax.eval_shape(lambda: TPS(20, 0.1, "small").init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 100, 3)))["params"])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32),
                          {"transform": tps, "backbone": {"conv": {"kernel": jnp.zeros((3, 3))}}})
    grads = jax.tree.map(jnp.ones_like, params)

    def updates(loc_lr):
        arch = {"model_type": "rec", "Transform": {"name": "TPS", "loc_lr": loc_lr},
                "Backbone": {"name": "MobileNetV3"}, "Head": {"name": "CTCHead"}}
        tx, _ = build_optimizer({"name": "Momentum", "lr": {"name": "Const", "learning_rate": 0.1},
                                 "regularizer": {"name": "L2", "factor": 1e-2}},
                                arch, params, 10, 1)
        return tx.update(grads, tx.init(params), params)[0]

    full, tenth = updates(1.0), updates(0.1)
    for a, b in zip(jax.tree.leaves(full["transform"]["loc_net"]),
                    jax.tree.leaves(tenth["transform"]["loc_net"])):
        assert np.abs(np.asarray(a)).min() > 0
        np.testing.assert_allclose(np.asarray(b), 0.1 * np.asarray(a), rtol=1e-6)
    for u in jax.tree.leaves(full["transform"]["ex_fc"]):
        assert not np.asarray(u).any()
    np.testing.assert_allclose(tenth["backbone"]["conv"]["kernel"],
                               full["backbone"]["conv"]["kernel"])
    assert np.abs(np.asarray(full["backbone"]["conv"]["kernel"])).min() > 0


@pytest.mark.parametrize("options,shape,out", [
    ({}, (32, 320), (1, 1, 80, 512)),  # PP-OCRv2 (ch_PP-OCRv2_rec.yml)
    ({"last_conv_stride": [1, 2], "last_pool_type": "avg"}, (48, 320), (1, 1, 40, 512)),  # v3
])
def test_mobilenet_v1_enhance_has_paddleocrs_count_and_shapes(options, shape, out):
    """PaddleOCR's rec_mv1_enhance.py at scale 0.5: 1,016,160 parameters either way (its layers
    summed, BN statistics aside); outputs as Paddle's (and, checked once against paddle 3.0 with
    shared random weights, the same values to 1.4e-6)."""
    from jaxocr.models.backbones.mobilenet_v1_enhance import MobileNetV1Enhance
    model = MobileNetV1Enhance(scale=0.5, **options)
    x = jax.ShapeDtypeStruct((1, *shape, 3), jnp.float32)
    y, variables = jax.eval_shape(lambda x: model.init_with_output(
        jax.random.PRNGKey(0), x, train=False), x)
    assert y.shape == out and model.out_channels == 512
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"])) == 1_016_160
    with pytest.raises(ValueError, match="last_pool_type must be max or avg"):
        MobileNetV1Enhance(last_pool_type="min").init(jax.random.PRNGKey(0),
                                                      jnp.zeros((1, 32, 64, 3)), train=False)


def test_a_feature_map_taller_than_one_row_is_a_config_error_naming_the_image_height():
    import jax.numpy as jnp
    from jaxocr.config import ConfigError
    from jaxocr.models.necks.rnn import im2seq
    assert im2seq(jnp.zeros((2, 1, 5, 3))).shape == (2, 5, 3)
    with pytest.raises(ConfigError, match=r"height 1 \(B, 1, W, C\), got \(2, 2, 5, 3\): the "
                                          r"images' height \(RecResizeImg image_shape\)"):
        im2seq(jnp.zeros((2, 2, 5, 3)))
