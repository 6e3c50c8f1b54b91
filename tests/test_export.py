"""Serving exports (launch/export.py, jaxocr/export.py): the StableHLO file of every model family
reloads and gives the JAX model's outputs for other batch sizes and image sizes."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from conftest import QUICKSTART_YOLO, det_config_file, tiny_config, yolo_overrides
from jaxocr.config import load_config
from jaxocr.export import export_stablehlo, load_stablehlo
from jaxocr.training.loop import Components
from jaxocr.training.step import init_variables


def _exported(cfg, tmp_path, image_shape):
    comp = Components(cfg, mesh=None)
    variables = init_variables(comp.model, image_shape, 3)
    out = str(tmp_path / f"{comp.task.name}.stablehlo")
    card = export_stablehlo(comp, variables, image_shape, out)
    return comp, variables, load_stablehlo(out), card


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_det_export_gives_the_probability_map_for_any_multiple_of_32(tmp_path):
    cfg = load_config(det_config_file(tmp_path / "c.yml", size=64),
                      [f"Global.save_model_dir={tmp_path / 'run'}"])
    comp, variables, served, card = _exported(cfg, tmp_path, (64, 64, 3))
    assert card["inputs"][0]["shape"] == ["B", "3", "32*h", "32*w"]
    rng = np.random.default_rng(1)
    for shape in ((1, 3, 64, 64), (2, 3, 96, 128)):
        x = rng.normal(size=shape).astype(np.float32)
        got = served(x)
        assert got.shape == (shape[0], 1, shape[2], shape[3])
        maps = comp.model.apply(variables, jnp.transpose(x, (0, 2, 3, 1)), train=False)["maps"]
        _close(got, jnp.transpose(maps[..., :1], (0, 3, 1, 2)))


def test_ppyoloe_export_gives_the_nms_rows_in_source_pixels(tmp_path):
    # 21 anchors per 32-px cell: 84 in a 64-px image, enough for the top 50
    cfg = load_config(QUICKSTART_YOLO, yolo_overrides(tmp_path) + ["PPYOLOEHead.nms.nms_top_k=50"])
    comp, variables, served, card = _exported(cfg, tmp_path, (64, 64, 3))
    assert [i["name"] for i in card["inputs"]] == ["image", "scale_factor"]
    assert card["constraints"] == ["21*h*w >= 50"]
    rng = np.random.default_rng(2)
    for batch, size in ((1, 64), (2, 96)):
        x = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
        scale = np.full((batch, 2), 0.5, np.float32)
        got = served(x, scale)
        images = jnp.transpose(x, (0, 2, 3, 1))
        want = comp.objective.predictions(comp.model.apply(variables, images, train=False),
                                          {"image": images, "scale_factor": scale})
        assert set(got) == {"boxes", "scores", "classes", "valid"}
        for k in got:
            _close(got[k], want[k])


def test_rec_export_of_a_checkpoint_takes_any_batch_and_width_and_gives_the_softmax(tmp_path):
    from conftest import QUICKSTART, ROOT, TINY
    import subprocess
    import sys
    from jaxocr.tasks.rec import logits_of
    from jaxocr.training.loop import train
    run = tmp_path / "run"
    state = train(tiny_config(run, "Global.max_steps=2"))["state"]
    out = tmp_path / "served" / "crnn.stablehlo"
    r = subprocess.run([sys.executable, "launch/export.py", "-c", QUICKSTART, "-o", *TINY,
                        f"Global.checkpoints={run}", "--format", "stablehlo", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote {out} (rec, global_step 2" in r.stderr
    card = json.load(open(str(out) + ".json"))
    comp = Components(tiny_config(run), mesh=None)
    assert card["task"] == "rec" and card["layout"] == "NCHW"
    assert card["inputs"] == [{"name": "x", "shape": ["B", "3", "32", "4*w"],
                               "dtype": "float32"}]
    assert card["characters"] == list(comp.task.charset.characters)
    assert card["platforms"] == ["cpu", "cuda"]  # one file for CPU and GPU serving
    served = load_stablehlo(str(out))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    rng = np.random.default_rng(0)
    for batch, width in ((1, 100), (3, 160)):
        x = rng.uniform(-1, 1, (batch, 3, 32, width)).astype(np.float32)
        got = served(x)
        assert got.shape[0] == batch and got.shape[2] == comp.task.charset.num_classes
        np.testing.assert_allclose(np.asarray(got).sum(-1), 1.0, rtol=1e-5)
        # the softmax of the trained model's eval-mode logits, NCHW in
        logits = logits_of(comp.model.apply(variables, jnp.transpose(x, (0, 2, 3, 1)),
                                            train=False))
        _close(got, jax.nn.softmax(logits, -1))
