"""PP-YOLOE through the task-generic core: PaddleDetection's config to the run, the step's one
all-reduce, the loss normalisation on any device count, the assigner phases, the EMA, the
multi-scale sizes, and the exact sharded COCO evaluation."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import PPYOLOE_S, QUICKSTART_YOLO, yolo_overrides
from test_data_parallel import all_reduces
from jaxocr.config import load_config
from jaxocr.distributed import data_mesh
from jaxocr.profile import all_reduce_counts
from jaxocr.training.compile_ahead import shape_key
from jaxocr.training.loop import Components, evaluate, train
from jaxocr.training.optimizer import build_schedule
from jaxocr.training.step import (batch_sharding, count_params, create_state, ema_weights,
                                  init_variables, replicated)


def test_ppyoloe_s_config_is_paddledetections_run():
    cfg = load_config(PPYOLOE_S, ["pretrain_weights="], eval_in_training=True)
    g, arch = cfg["Global"], cfg["Architecture"]
    assert arch["model_type"] == "yolo" and arch["Head"]["num_classes"] == 80
    assert (arch["Backbone"]["width_mult"], arch["Neck"]["depth_mult"]) == (0.5, 0.33)
    assert g["use_sync_bn"] and g["use_ema"] and g["ema_decay"] == 0.9998
    assert g["epoch_num"] == 300 and g["eval_epoch_step"] == 10 == g["save_epoch_step"]
    assert cfg["Train"]["loader"]["batch_size_per_card"] == 8
    assert cfg["Loss"]["static_assigner_epoch"] == 100
    assert cfg["PostProcess"] == {"name": "MultiClassNMS", "nms_top_k": 1000, "keep_top_k": 300,
                                  "score_threshold": 0.01, "nms_threshold": 0.7}
    assert load_config(PPYOLOE_S, ["pretrain_weights="])["Global"]["eval_epoch_step"] is None
    # ppdet's schedule: linear warm-up from 0 over 5 epochs, then cosine over 360 - 5 epochs
    spe = 100
    lr = build_schedule(cfg["Optimizer"]["lr"], spe, 300)
    assert float(lr(0)) == 0.0 and abs(float(lr(250)) - 0.005) < 1e-9
    assert abs(float(lr(500)) - 0.01) < 1e-9
    t = 300 * spe - 1
    want = 0.01 * 0.5 * (1 + np.cos(np.pi * (t - 500) / (360 * spe - 500)))
    assert abs(float(lr(t)) - want) < 1e-7
    # the model: PaddleDetection's PP-YOLOE-s (less its frozen 17-weight proj_conv, a
    # constant here; tests/test_ppyoloe_model.py derives the count), 8,400 points at 640
    comp = Components(cfg, data_mesh(jax.devices()[:1]))
    x = jax.ShapeDtypeStruct((1, 640, 640, 3), jnp.float32)
    out, variables = jax.eval_shape(lambda x: comp.model.init_with_output(
        jax.random.PRNGKey(0), x, train=False), x)
    assert count_params(variables["params"]) == 8_084_605 - 17
    assert out["cls_logits"].shape == (1, 8400, 80) and out["reg_logits"].shape == (1, 8400, 4, 17)


def _batch(comp, n, size, seed=0):
    """Real quick-start samples (synthetic shapes, the config's transforms), global batch n."""
    loader = comp.loader("Train")
    rows = [loader.load(i, 0) for i in range(n)]
    rows = loader.maker.batch_transform(rows, (0, 0), 0)
    keys = ("image", "gt_bbox", "gt_class", "pad_gt_mask")
    batch = {k: np.stack([r[k] for r in rows]) for k in keys}
    batch["mask"] = np.ones(n, np.float32)
    loader.close()
    assert batch["image"].shape == (n, size, size, 3)
    return batch


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = load_config(QUICKSTART_YOLO, yolo_overrides(tmp_path_factory.mktemp("y")))
    return cfg


def _step_result(cfg, devices, batch, steps=1):
    comp = Components(cfg, data_mesh(jax.devices()[:devices]))
    tx = optax.sgd(0.01, momentum=0.9)
    variables = init_variables(comp.model, (64, 64, 3), 0)
    state = jax.device_put(create_state(variables, tx, 0, use_ema=True), replicated(comp.mesh))
    step = comp.train_step(tx)
    b = jax.device_put(batch, batch_sharding(comp.mesh))
    losses = []
    for _ in range(steps):
        state, out = step(state, b)
        losses.append(float(out["loss"]))
    return comp, step, state, b, losses


def test_any_device_count_gives_the_same_step_with_one_gradient_all_reduce(tiny):
    """PP-YOLOE's loss is the global loss sums over the global assigned-scores sum (clipped at
    1): 2 devices take the same step as 1 on the same global batch. The gradients, BN
    statistics, loss, share and the 6 log sums travel in one all-reduce, none in loops; sync BN
    (`norm_type: sync_bn`) adds its per-layer statistics, channel-sized, and nothing else."""
    comp1 = Components(tiny, data_mesh(jax.devices()[:1]))
    batch = _batch(comp1, 4, 64)
    _, _, one, _, loss_one = _step_result(tiny, 1, batch)
    comp, step, two, b, loss_two = _step_result(tiny, 2, batch)
    np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5)
    flat = lambda s: np.concatenate([np.ravel(x) for x in jax.tree.leaves(
        (s.params, s.batch_stats, s.ema))])
    np.testing.assert_allclose(flat(two), flat(one), rtol=2e-4, atol=2e-6)
    tx = optax.sgd(0.01, momentum=0.9)
    variables = init_variables(comp.model, (64, 64, 3), 0)
    state = jax.device_put(create_state(variables, tx, 0, use_ema=True), replicated(comp.mesh))
    hlo = step.lower(state, b).compile().as_text()
    n = count_params(variables["params"]) + count_params(variables["batch_stats"])
    reduces = all_reduces(hlo)
    assert all_reduce_counts(hlo)["all_reduces_in_loops"] == 0
    big = [r for r in reduces if sum(size for _, size in r[1]) > 2048]
    assert [r[1] for r in big] == [[("f32", n + 8)]], (big, n)
    widest = max(x.shape[-1] for x in jax.tree.leaves(variables["batch_stats"]))
    assert all(size <= 2 * widest for r in reduces if r not in big for _, size in r[1])
    assert 0 < len(reduces) - 1 <= 4 * len(jax.tree.leaves(variables["batch_stats"]))


def test_a_few_steps_lower_the_loss_and_the_ema_follows_paddle(tiny):
    """ModelEMA 'threshold': v <- d v + (1 - d) w after every step from v = 0, d = min(0.9998,
    (1 + t) / (10 + t)); applied as v / (1 - d_last ** steps)."""
    comp = Components(tiny, data_mesh(jax.devices()[:1]))
    batch = jax.device_put(_batch(comp, 2, 64, seed=1), batch_sharding(comp.mesh))
    tx = optax.adam(1e-3)
    variables = init_variables(comp.model, (64, 64, 3), 0)
    state = jax.device_put(create_state(variables, tx, 0, use_ema=True), replicated(comp.mesh))
    step = comp.train_step(tx)
    leaf = lambda tree: np.asarray(jax.tree.leaves(tree)[3], np.float64)
    v, losses, d = np.zeros_like(leaf(state.params)), [], 0.0
    for t in range(12):
        state, out = step(state, batch)
        losses.append(float(out["loss"]))
        d = min(0.9998, (1 + t) / (10 + t))
        v = d * v + (1 - d) * leaf(state.params)
    # ATSS's targets are IoUs with the predicted boxes: the loss first rises as they grow
    assert min(losses[-3:]) < 0.7 * losses[0], losses
    np.testing.assert_allclose(leaf(state.ema["params"]), v, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(leaf(ema_weights(state.ema, state.step, 0.9998)["params"]),
                               v / (1 - d ** 12), rtol=1e-5, atol=1e-8)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """train() on 1 device (global batch 2: 4 steps an epoch): epoch 1 with ATSS, epoch 2 with
    TAL (two compiled steps); straight, and stopped after step 3 then resumed."""
    tmp = tmp_path_factory.mktemp("yolo_runs")
    one = data_mesh(jax.devices()[:1])
    straight = train(load_config(QUICKSTART_YOLO, yolo_overrides(tmp / "a")), one)
    cfg = load_config(QUICKSTART_YOLO, yolo_overrides(tmp / "b"))
    cfg["Global"]["max_steps"] = 3
    train(cfg, one)
    cfg["Global"]["max_steps"] = None
    resumed = train(cfg, one)
    return tmp, cfg, straight, resumed


def test_training_phases_and_the_ema_resume_exactly(runs):
    tmp, _, straight, resumed = runs
    assert straight["global_step"] == resumed["global_step"] == 8
    assert np.isfinite(straight["train"]["loss"])
    log = (tmp / "a" / "quickstart_ppyoloe_s" / "train.log").read_text()
    # PaddleDetection's LogPrinter line (epochs from 0, the step in the epoch)
    assert re.search(r"Epoch: \[1\] \[3/4\] learning_rate: [0-9.]+ loss: [0-9.]+ loss_cls: "
                     r"[0-9.]+ loss_iou: [0-9.]+ loss_dfl: [0-9.]+ loss_l1: [0-9.]+ eta: "
                     r"0:00:00 batch_cost: [0-9.]+ data_cost: [0-9.]+ ips: [0-9.]+ images/s",
                     log), log[-2000:]
    for x, y in zip(jax.tree.leaves(straight["state"].ema), jax.tree.leaves(resumed["state"].ema)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-7)


def test_sharded_coco_eval_of_the_ema_equals_one_device(runs):
    """The EMA weights evaluate on 2 devices as on 1: every image once, the COCO stats equal."""
    _, cfg, _, resumed = runs
    results = []
    for devices in (1, 2):
        comp = Components(cfg, data_mesh(jax.devices()[:devices]))
        state = jax.device_put(comp.eval_view(resumed["state"]), replicated(comp.mesh))
        loader = comp.eval_loader()
        results.append(evaluate(comp, state, comp.eval_step(), loader))
        loader.close()
    assert results[0]["samples"] == results[1]["samples"] == 6
    for k in ("AP", "AP50", "AR100"):
        assert results[0][k] == pytest.approx(results[1][k], abs=1e-9), (k, results)


def test_infer_draws_named_boxes_and_writes_coco_results(runs, tmp_path):
    import json
    import subprocess
    import sys

    import cv2
    from conftest import ROOT
    from jaxocr.data.synth_shapes import write_coco
    tmp, _, _, _ = runs
    write_coco(str(tmp_path / "data"), 2, seed=9, image_size=64)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "launch/infer.py", "-c", QUICKSTART_YOLO, "-o",
         *yolo_overrides(tmp / "a"), "weights=" + str(tmp / "a" / "quickstart_ppyoloe_s" /
                                                        "model_final"),
         "--infer_dir", str(tmp_path / "data" / "images"), "--output_dir", str(out),
         "--draw_threshold", "0"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = dict(ln.split("\t", 1) for ln in r.stdout.splitlines() if "\t" in ln)
    assert len(printed) == 2
    results = json.loads((out / "bbox.json").read_text())
    per_image = [json.loads(printed[p]) for p in sorted(printed)]
    assert len(results) == sum(len(v) for v in per_image)
    for k, found in enumerate(per_image):
        assert all({"category_id", "name", "bbox", "score"} <= set(e) for e in found)
        assert [e for e in results if e["image_id"] == k] == [
            {**e, "image_id": k, "file_name": f"{k:06d}.png"} for e in found]
        drawn = cv2.imread(str(out / f"{k:06d}.png"))
        source = cv2.imread(str(tmp_path / "data" / "images" / f"{k:06d}.png"))
        assert drawn.shape == source.shape
        assert np.any(drawn != source) == bool(found)  # the boxes drawn, none where none


def test_eval_script_reads_paddledetections_weights_key(runs, tmp_path):
    """`launch/eval.py -c PPDET_CFG -o weights=RUN/model_final` (PaddleDetection's
    tools/eval.py form) evaluates the EMA weights: the same COCO stats as in-process."""
    import json
    import subprocess
    import sys

    from conftest import ROOT
    tmp, _, straight, _ = runs
    cfg = load_config(QUICKSTART_YOLO, yolo_overrides(tmp / "a"))
    comp = Components(cfg, data_mesh(jax.devices()[:1]))
    loader = comp.eval_loader()
    want = evaluate(comp, jax.device_put(comp.eval_view(straight["state"]), comp.repl),
                    comp.eval_step(), loader)
    loader.close()
    r = subprocess.run(
        [sys.executable, "launch/eval.py", "-c", QUICKSTART_YOLO, "--cpu_devices", "2", "-o",
         *yolo_overrides(tmp / "a"), "weights=" + str(tmp / "a" / "quickstart_ppyoloe_s" /
                                                        "model_final"),
         "--json", str(tmp_path / "m.json")], cwd=ROOT, capture_output=True, text=True,
        timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["global_step"] == 8 and got["samples"] == 6
    assert re.search(r"^AP: [0-9.]+$", r.stdout, re.M), r.stdout
    for k in ("AP", "AP50", "AP75", "APs", "AR1", "AR100"):
        assert got[k] == pytest.approx(want[k], abs=1e-9), (k, got, want)


def test_multi_scale_size_follows_the_data_position(tiny):
    """Every batch's input size is drawn from (seed, epoch, first sample): the same in any
    process and after a resume mid-epoch, and from the config's list only."""
    cfg = load_config(QUICKSTART_YOLO, yolo_overrides("/tmp/unused") + [
        "TrainReader.batch_transforms.0.BatchRandomResize.target_size=[64,96,128]",
        "TrainDataset.num_samples=24"])
    comp = Components(cfg, data_mesh(jax.devices()[:1]))
    loader = comp.loader("Train")
    batches = list(loader.host_batches(1))
    sizes = [b["image"].shape[1:3] for b in batches]
    later = [b["image"].shape[1:3] for b in loader.host_batches(1, start_sample=8)]
    # the shapes compiled ahead: one per size of the list, each batch's among them
    specs = loader.batch_specs(comp.batch_sharding)
    loader.close()
    assert len(sizes) == 12 and later == sizes[4:]
    assert {s[0] for s in sizes} <= {64, 96, 128} and len({s[0] for s in sizes}) > 1
    assert all(h == w for h, w in sizes)
    assert [s["image"].shape for s in specs] == [(2, n, n, 3) for n in (64, 96, 128)]
    keys = {shape_key(s) for s in specs}
    assert len(keys) == 3 and all(
        shape_key({k: b[k] for k in specs[0]}) in keys for b in batches)
