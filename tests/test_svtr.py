"""SVTR-Tiny (configs/rec/rec_svtrnet.yml): STN_ON + SVTRNet + CTCHead, against PaddleOCR."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from jaxocr.config import load_config
from jaxocr.models import build_model
from jaxocr.models.backbones.svtrnet import adaptive_avg_pool_matrix, local_attention_mask
from jaxocr.models.transforms.stn import (_ctrl_points, grid_sample, resize_align_corners_matrix,
                                          tps_matrices)
from jaxocr.tasks.rec import CTCObjective
from jaxocr.training.optimizer import _decay_mask

SVTR = os.path.join(ROOT, "configs/rec/rec_svtrnet.yml")


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def svtr_arch(**backbone):
    arch = load_config(SVTR)["Architecture"]
    arch["Head"]["out_channels"] = 37  # 0-9a-z + blank
    arch["Backbone"].update(backbone)
    return arch


def test_svtr_tiny_has_paddleocrs_shapes_and_parameter_count():
    model = build_model(svtr_arch())
    x = jax.ShapeDtypeStruct((2, 64, 256, 3), jnp.float32)  # SVTRRecResizeImg [3, 64, 256]
    variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.PRNGKey(0), x)
    params = variables["params"]
    # Paddle's layers, trainable parameters (BN running statistics are buffers there too):
    # STN: convs 3-32-64-128-256-256-256 (3x3, bias, BN) 1,570,560 + fc1 512x512 + BN1D 263,680
    #      + fc2 512x40 20,520
    assert _count(params["transform"]) == 1_854_760
    # SVTRNet: patch embed 19,584 + pos_embed 200x64 + blocks 12d^2 + 13d each (3 at 64, 6 at
    # 128, 3 at 256) + patch merging 74,112 + 295,680 + final LN 512 + last conv 256x192
    assert _count(params["backbone"]) == 4_160_704
    assert _count(params["head"]) == 192 * 37 + 37
    assert _count(params) == 6_022_605
    assert params["backbone"]["pos_embed"].shape == (1, 200, 64)
    assert params["backbone"]["blocks2_5"]["mixer"]["qkv"]["fc"]["kernel"].shape == (128, 384)
    assert params["transform"]["stn_head"]["fc1"]["kernel"].shape == (512, 512)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert out.shape == (2, 25, 37)


def test_local_mixer_mask_is_paddles_window():
    h, w, kh, kw = 4, 25, 7, 11
    # Paddle's construction: a zero window on a padded canvas per token, cropped, 0 -> 0, 1 -> -inf
    canvas = np.ones((h * w, h + kh - 1, w + kw - 1), np.float32)
    for i in range(h):
        for j in range(w):
            canvas[i * w + j, i:i + kh, j:j + kw] = 0.0
    paddle = canvas[:, kh // 2:h + kh // 2, kw // 2:w + kw // 2].reshape(h * w, h * w)
    paddle = np.where(paddle < 1, paddle, -np.inf)
    np.testing.assert_array_equal(local_attention_mask(h, w, kh, kw), paddle)


def test_adaptive_pool_bins_follow_paddle():
    m = adaptive_avg_pool_matrix(25, 25)
    np.testing.assert_array_equal(m, np.eye(25))
    m = adaptive_avg_pool_matrix(5, 3)  # bins [0,2) [1,4) [3,5)
    np.testing.assert_allclose(m[:, 1], [0, 1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(m.sum(0), 1.0)


def test_tps_with_the_target_points_as_source_is_an_aligned_resize():
    """Source control points equal to the target ones make the TPS the identity map, so the
    output is the input resized (align_corners) to the output size."""
    (h, w), n, margins = (32, 100), 20, (0.05, 0.05)
    inverse_kernel, target_repr = tps_matrices((h, w), n, margins)
    ctrl = np.concatenate([_ctrl_points(n, *margins), np.zeros((3, 2))]).astype(np.float32)
    grid = (target_repr @ (inverse_kernel @ ctrl)).reshape(1, h, w, 2)
    ys, xs = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    identity = np.stack([xs, ys], axis=-1)[None]
    np.testing.assert_allclose(grid, identity, atol=2e-5)  # float32 solve of the TPS system
    image = jax.random.normal(jax.random.PRNGKey(0), (1, 64, 256, 3))
    warped = grid_sample(image, jnp.asarray(identity, jnp.float32))
    ry, rx = resize_align_corners_matrix(64, h), resize_align_corners_matrix(256, w)
    resized = np.einsum("oh,bhwc,pw->bopc", ry, np.asarray(image), rx)
    np.testing.assert_allclose(np.asarray(warped), resized, atol=1e-4)  # float32 coordinates


def test_adamw_skips_norms_pos_embed_and_one_dim_parameters():
    model = build_model(svtr_arch())
    x = jax.ShapeDtypeStruct((1, 64, 256, 3), jnp.float32)
    params = jax.eval_shape(lambda k, x: model.init(k, x), jax.random.PRNGKey(0), x)["params"]
    cfg = load_config(SVTR)["Optimizer"]
    mask = _decay_mask(params, cfg)
    b = mask["backbone"]
    assert b["blocks1_0"]["mixer"]["qkv"]["fc"]["kernel"] is True
    assert b["blocks1_0"]["mixer"]["qkv"]["fc"]["bias"] is False      # one-dimensional
    assert b["blocks1_0"]["norm1"]["scale"] is False
    assert b["pos_embed"] is False
    assert b["sub_sample1_conv"]["kernel"] is True
    assert mask["transform"]["stn_head"]["conv0"]["kernel"] is True
    assert mask["head"]["fc"]["kernel"] is True


@pytest.fixture(scope="module")
def small_svtr():
    """The real SVTR code at a small size (narrow, one block per stage), for training tests."""
    return svtr_arch(embed_dim=[32, 64, 96], depth=[1, 1, 1], num_heads=[2, 2, 4],
                     mixer=["Local", "Local", "Global"])


def test_svtr_learns_a_batch_with_dropout_and_drop_path(small_svtr):
    import optax
    from jaxocr.losses.ctc import ctc_loss
    model = build_model(small_svtr)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 64, 256, 3)).astype(np.float32))
    labels = jnp.asarray(rng.integers(1, 37, size=(4, 25)))
    lengths = jnp.asarray([3, 5, 4, 6])
    labels = jnp.where(jnp.arange(25)[None] < lengths[:, None], labels, 0)
    variables = model.init(jax.random.PRNGKey(0), x)
    tx = optax.adam(1e-3)
    opt = tx.init(variables["params"])

    @jax.jit
    def step(params, stats, opt, key):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"], rngs={"dropout": key})
            return ctc_loss(logits, labels, lengths).mean(), upd["batch_stats"]
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt, loss

    params, stats = variables["params"], variables["batch_stats"]
    losses = []
    for i in range(30):
        params, stats, opt, loss = step(params, stats, opt, jax.random.PRNGKey(i))
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
    # eval mode is deterministic (no dropout) and gives probabilities
    probs = model.apply({"params": params, "batch_stats": stats}, x, train=False)
    np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, rtol=1e-5)


def test_rec_svtrnet_config_trains_and_evaluates_from_the_command_line(tmp_path):
    """PaddleOCR's SVTR-Tiny config as shipped (AdamW, cosine warm-up, SVTRRecResizeImg 64x256,
    STN), on the built-in renderer instead of the LMDBs."""
    import subprocess
    import sys
    r = subprocess.run(
        [sys.executable, "launch/multihost.py", "-c", SVTR, "-o",
         "Train.dataset.name=SynthTextLine", "Eval.dataset.name=SynthTextLine",
         "Train.dataset.num_samples=32", "Eval.dataset.num_samples=6",
         "Train.loader.batch_size_per_card=4", "Eval.loader.batch_size_per_card=4",
         "Train.loader.num_workers=1", "Eval.loader.num_workers=1", "Global.max_steps=4",
         "Global.print_batch_step=2", "Global.eval_batch_step=[0,4]",
         f"Global.save_model_dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "params: 6022605" in out
    assert "global_step: 4," in out and "cur metric, acc:" in out
    assert os.path.isdir(tmp_path / "latest")


def test_svtr_step_keeps_the_horovod_contract_on_4_devices(small_svtr):
    """Dropout and drop path draw per-device keys inside shard_map; still one fused gradient
    all-reduce per step, none inside a loop."""
    import optax
    from jaxocr.distributed import data_mesh
    from jaxocr.losses import build_loss
    from jaxocr.profile import all_reduce_counts
    from jaxocr.training.step import (batch_sharding, create_state, init_variables,
                                      make_train_step, replicated)
    mesh = data_mesh(jax.devices()[:4])
    model = build_model(small_svtr)
    tx = optax.adamw(1e-3)
    state = jax.device_put(create_state(init_variables(model, (64, 256, 3), 0), tx, 0),
                           replicated(mesh))
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (8, 64, 256, 3)).astype(np.float32),
             "label": rng.integers(1, 37, (8, 25)).astype(np.int32),
             "length": np.full(8, 25, np.int32)}
    batch = jax.device_put(batch, batch_sharding(mesh))
    step = make_train_step(model, tx, CTCObjective(build_loss({"name": "CTCLoss"})), mesh)
    counts = all_reduce_counts(step.lower(state, batch).compile().as_text())
    assert 1 <= counts["all_reduces"] <= 3 and counts["all_reduces_in_loops"] == 0, counts
    new_state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
