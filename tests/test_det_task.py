"""DB text detection through the task-generic core: the step's contract, label filtering, the
fixed eval canvas, training that lowers the loss, and the command-line tools on det configs."""
import json
import os
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import DET_MV3_DB, QUICKSTART_DB, ROOT, det_config_file
from test_data_parallel import all_reduces
from jaxocr.config import ConfigError, load_config
from jaxocr.data.det_fixtures import write_det_label_file_dataset
from jaxocr.data.sources import DetLabelFilter, SimpleDataSet
from jaxocr.data.transforms.det_resize import DetResizeForTest
from jaxocr.distributed import data_mesh
from jaxocr.profile import all_reduce_counts
from jaxocr.tasks import build_task
from jaxocr.tasks.det import EvalCanvas, default_canvas
from jax.sharding import PartitionSpec as P
from jaxocr.training.loop import Components
from jaxocr.training.step import (batch_sharding, count_params, create_state, init_variables,
                                  make_train_step, replicated)


def _det_batch(n, size, seed=0):
    rng = np.random.default_rng(seed)
    shrink = (rng.uniform(size=(n, size, size)) > 0.8).astype(np.float32)
    return {"image": rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8),
            "threshold_map": rng.uniform(0.3, 0.7, size=(n, size, size)).astype(np.float32),
            "threshold_mask": (rng.uniform(size=(n, size, size)) > 0.5).astype(np.float32),
            "shrink_map": shrink, "shrink_mask": np.ones((n, size, size), np.float32),
            "mask": np.ones(n, np.float32)}


def test_det_mv3_db_step_has_one_all_reduce_outside_loops():
    """The det_mv3_db step on 4 devices: one all-reduce over every device, f32[params + BN
    statistics + 6]: the loss, the share of devices with real rows, and the 3 DB loss parts
    with that share for the log line. DBLoss's OHEM top-k and the dice sums stay per device."""
    cfg = load_config(DET_MV3_DB, ["Global.pretrained_model="])
    comp = Components(cfg, data_mesh(jax.devices()[:4]))
    tx = optax.adam(1e-3)
    variables = init_variables(comp.model, (64, 64, 3), 0)
    n_params, n_stats = count_params(variables["params"]), count_params(variables["batch_stats"])
    assert n_params == 1_844_136  # PaddleOCR's det_mv3_db (tests/test_db_models.py derives it)
    state = jax.device_put(create_state(variables, tx, 0), replicated(comp.mesh))
    batch = jax.device_put(_det_batch(4, 64), batch_sharding(comp.mesh))
    hlo = make_train_step(comp.model, tx, comp.objective, comp.mesh).lower(
        state, batch).compile().as_text()
    reduces = all_reduces(hlo)
    assert all_reduce_counts(hlo)["all_reduces_in_loops"] == 0
    assert len(reduces) == 1, reduces
    (_, shapes, groups), = reduces
    assert shapes == [("f32", n_params + n_stats + 6)], (shapes, n_params, n_stats)
    assert groups == "{{0,1,2,3}}"


def test_a_few_steps_lower_the_db_loss(tmp_path):
    """The quick-start model on a fixed batch of real synthetic-scene labels (shrink and
    threshold maps from the label makers): 8 Adam steps bring the DB loss well down."""
    cfg = load_config(det_config_file(tmp_path / "c.yml", size=96),
                      [f"Global.save_model_dir={tmp_path}"])
    comp = Components(cfg, data_mesh(jax.devices()[:1]))
    loader = comp.loader("Train")
    rows = [loader.load(i, 0) for i in range(4)]
    batch = {k: np.stack([r[k] for r in rows]) for k in comp.task.device_keys["Train"]}
    assert batch["image"].dtype == np.uint8 and batch["shrink_map"].max() == 1.0
    state, tx, _ = comp.build_state((96, 96, 3))
    tx = optax.adam(2e-3)
    state = jax.device_put(create_state({"params": state.params,
                                         "batch_stats": state.batch_stats}, tx, 0), comp.repl)
    step = comp.train_step(tx)
    device = jax.device_put(batch, comp.batch_sharding)
    losses = []
    for _ in range(8):
        state, out = step(state, device)
        losses.append(float(out["loss"]))
    parts = comp.objective.summarize(np.asarray(out["metric"]))
    assert set(parts) == {"loss_shrink_maps", "loss_threshold_maps", "loss_binary_maps"}
    assert sum(parts.values()) == pytest.approx(losses[-1], rel=1e-5)
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses


def test_a_masked_row_adds_nothing_to_the_db_loss():
    """DBObjective.loss with row 1 masked equals the loss of row 0 alone: the OHEM negatives,
    dice and L1 sums see no pixel of a masked row (through the model, BatchNorm's batch
    statistics still see it, as they see any row of the device's batch)."""
    objective = build_task(load_config(QUICKSTART_DB)).objective()
    rng = np.random.default_rng(0)
    batch = _det_batch(2, 32, seed=1)
    outputs = {"maps": jnp.asarray(rng.uniform(0.01, 0.99, size=(2, 32, 32, 3)), jnp.float32)}
    loss, share, parts = objective.loss(outputs, batch, jnp.asarray([1.0, 0.0]))
    one = {k: v[:1] for k, v in batch.items()}
    alone, share1, parts1 = objective.loss({"maps": outputs["maps"][:1]}, one, jnp.ones(1))
    assert float(share) == float(share1) == 1.0
    np.testing.assert_allclose(float(loss), float(alone), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(parts), np.asarray(parts1), rtol=1e-6)
    none, share0, _ = objective.loss(outputs, batch, jnp.zeros(2))  # a device of padding only
    assert float(none) == 0.0 and float(share0) == 0.0


class GroundTruthImages:
    """A scene source whose images are their own answer: the shrink map DB is trained to
    predict (MakeShrinkMap of the labels: polygons shrunk by 0.4, don't-care and words under 8 px
    left out) as white on black, so that channel 0 / 255 is an oracle's probability map."""

    def __init__(self, source):
        from jaxocr.data.transforms.det_label import DetLabelEncode
        from jaxocr.data.transforms.det_maps import MakeShrinkMap
        self.source = source
        self.num_entries = source.num_entries
        self.encode, self.shrink = DetLabelEncode(), MakeShrinkMap()

    def __len__(self):
        return len(self.source)

    def epoch_indices(self, epoch):
        return self.source.epoch_indices(epoch)

    def load(self, i):
        sample = self.source.load(i)
        target = self.shrink(self.encode(dict(sample)))["shrink_map"]
        mask = (target * 255).astype(np.uint8)
        return {**sample, "image": np.repeat(mask[:, :, None], 3, axis=2)}


def test_sharded_det_eval_equals_one_device(tmp_path):
    """ICDAR eval of an oracle detector on 4 devices equals 1 device: 7 scenes at a global
    batch of 8 on 4 devices (the last device holds 1 real row and 1 padding row), the padding
    counted nowhere; recall strictly between 0 and 1 (the oracle misses the words too small for
    the shrink map), so a lost or doubled row moves it."""
    cfg = load_config(det_config_file(tmp_path / "c.yml", size=160, words_per_image=[3, 8],
                                      font_size=[10, 40]),
                      [f"Global.save_model_dir={tmp_path}", "Eval.dataset.num_samples=7",
                       "PostProcess.box_thresh=0.5"])
    oracle = lambda state, batch: batch["image"][..., 0].astype(jnp.float32) / 255.0  # noqa: E731
    results = []
    for n in (4, 1):
        comp = Components(cfg, data_mesh(jax.devices()[:n]))
        loader = comp.eval_loader()
        loader.maker.source = GroundTruthImages(loader.source)
        step = jax.jit(jax.shard_map(oracle, mesh=comp.mesh, in_specs=(P(), P("data")),
                                     out_specs=P("data")))
        from jaxocr.training.loop import evaluate
        results.append(evaluate(comp, None, step, loader))
        loader.close()
    sharded, single = results
    assert sharded["samples"] == single["samples"] == 7
    for key in ("precision", "recall", "hmean"):
        assert sharded[key] == single[key], (key, sharded, single)
    assert 0 < sharded["recall"] < 1 and 0 < sharded["precision"] <= 1, sharded


def test_default_eval_canvas_is_the_largest_resize():
    assert default_canvas(DetResizeForTest(image_shape=[736, 1280])) == (736, 1280)
    assert default_canvas(DetResizeForTest(limit_side_len=960, limit_type="max")) == (960, 960)
    assert default_canvas(DetResizeForTest()) == (736, 1312)  # min 736: unbounded, 16:9 canvas
    resize = DetResizeForTest(limit_side_len=960, limit_type="max")
    for h, w in ((1080, 1920), (3000, 200), (500, 700), (961, 961)):
        rh, rw = resize.target_size(h, w)
        assert rh <= 960 and rw <= 960, (h, w, rh, rw)


def test_eval_canvas_pads_and_scales_down_keeping_the_box_mapping():
    """An image wider than the canvas is scaled to fit; the post-process still returns boxes in
    source pixels: a text box drawn in the source is found where it was drawn."""
    task = build_task(load_config(QUICKSTART_DB))  # canvas 320 x 320
    src = np.zeros((200, 800, 3), np.uint8)
    sample = EvalCanvas(task.canvas)({"image": src, "shape": np.array([200, 800, 1.0, 1.0])})
    assert sample["image"].shape == (320, 320, 3)
    h, w = sample["valid_shape"]
    assert (h, w) == (80, 320)
    np.testing.assert_allclose(sample["shape"], [200, 800, 0.4, 0.4])
    prob = np.zeros((1, 320, 320), np.float32)
    prob[0, 20:40, 40:200] = 0.9  # the shrunk text region, in canvas (scaled) pixels
    (boxes,) = [r["points"] for r in task.decode(prob, {"shape": sample["shape"][None]})]
    assert len(boxes) == 1
    x0, y0 = boxes[0].min(axis=0)
    x1, y1 = boxes[0].max(axis=0)
    # the contour (pixel centres x 40..199, y 20..39) pushed out by D = area * 1.5 / perimeter
    # in canvas pixels, then scaled by 1 / 0.4 to the source
    d = 159 * 19 * 1.5 / (2 * (159 + 19))
    expect = np.array([40 - d, 20 - d, 199 + d, 39 + d]) / 0.4
    np.testing.assert_allclose([x0, y0, x1, y1], expect, atol=6)


def test_det_label_filter_and_simple_dataset(tmp_path):
    write_det_label_file_dataset(tmp_path, n=6, seed=0, corrupt=1)
    with open(tmp_path / "label.txt", "a") as f:
        f.write("img_x.png\tnot json\n")
        f.write("img_y.png\t[]\n")
    keep = DetLabelFilter()
    src = SimpleDataSet(str(tmp_path), [str(tmp_path / "label.txt")], None, 25,
                        label_filter=keep)
    assert keep.dropped["malformed"] == 1 and keep.dropped["no_text"] == 1
    assert src.num_entries == 6  # the corrupt image is found when read, not at scan
    sample = src.load(0)
    assert json.loads(sample["label"])[0]["points"]


@pytest.fixture(scope="module")
def mv3_run(tmp_path_factory):
    """det_mv3_db.yml as written (640 crops, eval at 736 x 1280) with the synthetic source from
    the command line, 2 steps."""
    tmp = tmp_path_factory.mktemp("mv3")
    base = [sys.executable, "launch/multihost.py", "-c", DET_MV3_DB, "--cpu_devices", "1", "-o",
            "Train.dataset.name=SynthTextScene", "Train.dataset.num_samples=8",
            "Train.dataset.image_size=[320,320]", "Eval.dataset.name=SynthTextScene",
            "Eval.dataset.num_samples=2", "Eval.dataset.image_size=[320,480]",
            "Train.loader.batch_size_per_card=2", "Train.loader.num_workers=1",
            "Eval.loader.num_workers=1", "Global.max_steps=2", "Global.eval_batch_step=[0,2]",
            "Global.print_batch_step=1", "Global.use_tensorboard=false",
            f"Global.save_model_dir={tmp / 'run'}"]
    no_weights = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, timeout=600)
    trained = subprocess.run(base + ["Global.pretrained_model="], capture_output=True,
                             text=True, cwd=ROOT, timeout=900)
    return tmp, no_weights, trained


def test_missing_pretrained_backbone_is_one_line(mv3_run):
    _, r, _ = mv3_run
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("jaxocr: error: Global.pretrained_model ./pretrain_models/"), err
    assert "-o Global.pretrained_model=" in err[-1] and "Traceback" not in r.stderr


def test_det_mv3_db_trains_evaluates_and_infers_from_the_command_line(mv3_run, tmp_path):
    tmp, _, r = mv3_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "params: 1844136" in out
    assert "loss_shrink_maps:" in out and "loss_threshold_maps:" in out
    assert "cur metric, precision:" in out and "samples: 2" in out
    run = tmp / "run"
    metrics = tmp_path / "m.json"
    common = ["-o", "Global.pretrained_model=", f"Global.checkpoints={run}",
              "Eval.dataset.name=SynthTextScene", "Eval.dataset.num_samples=2",
              "Eval.dataset.image_size=[320,480]", "Eval.loader.num_workers=1"]
    e = subprocess.run([sys.executable, "launch/eval.py", "-c", DET_MV3_DB, *common,
                        "--cpu_devices", "1", "--json", str(metrics)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert e.returncode == 0, e.stdout[-3000:] + e.stderr[-3000:]
    for key in ("precision", "recall", "hmean", "fps"):
        assert f"{key}: " in e.stdout
    with open(metrics) as f:
        assert json.load(f)["global_step"] == 2
    images = tmp_path / "imgs"
    images.mkdir()
    from jaxocr.data.synth_scenes import SynthTextScene
    for i in range(2):
        cv2.imwrite(str(images / f"s{i}.png"), SynthTextScene(4, seed=3).load(i)["image"])
    (images / "broken.png").write_bytes(b"no image")
    res = tmp_path / "out" / "det_results.txt"
    i = subprocess.run([sys.executable, "launch/infer.py", "-c", DET_MV3_DB, *common,
                        f"Global.infer_img={images}", f"Global.save_res_path={res}",
                        "--cpu_devices", "1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert i.returncode == 0, i.stdout[-3000:] + i.stderr[-3000:]
    lines = res.read_text().splitlines()
    assert [os.path.basename(line.split("\t")[0]) for line in lines] == ["s0.png", "s1.png"]
    for line in lines:
        boxes = json.loads(line.split("\t", 1)[1])
        assert isinstance(boxes, list) and all(set(b) == {"points"} for b in boxes)
    assert "broken.png" in i.stdout + i.stderr  # skipped with a warning
    assert sorted(os.listdir(tmp_path / "out" / "det_results")) == ["s0.png", "s1.png"]


def test_det_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="Loss.ohem_ration.*ohem_ratio"):
        load_config(QUICKSTART_DB, ["Loss.ohem_ration=3"])
    with pytest.raises(ConfigError, match="PostProcess.name.*DBPostProcess"):
        load_config(QUICKSTART_DB, ["PostProcess.name=CTCLabelDecode"])
