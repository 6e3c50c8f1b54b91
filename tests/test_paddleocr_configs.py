"""Every PaddleOCR recognition config the project ships (configs/rec/, upstream's keys and values
-- test_config.py holds their parameter counts) trains a step and evaluates as written: only the
data source is swapped for the built-in renderer, and the batch made small for two cores.
rec_svtrnet.yml runs the same way from the command line in test_svtr.py. Full-size models:
20-30 s each on two cores with the suite's compile settings (tests/conftest.py)."""
import os

import jax
import numpy as np
import pytest

from conftest import ROOT
from jaxocr.config import load_config
from jaxocr.distributed import data_mesh
from jaxocr.training.loop import train

SMALL_SYNTHETIC = [
    "Train.dataset.name=SynthTextLine", "Eval.dataset.name=SynthTextLine",
    "Train.dataset.num_samples=4", "Eval.dataset.num_samples=3",
    "Train.loader.batch_size_per_card=2", "Eval.loader.batch_size_per_card=2",
    "Train.loader.num_workers=1", "Eval.loader.num_workers=1",
    "Global.max_steps=1", "Global.eval_batch_step=[0,1]", "Global.print_batch_step=1",
    "Global.use_tensorboard=false"]

UPSTREAM = ["rec_mv3_none_bilstm_ctc.yml", "rec_mv3_none_none_ctc.yml", "rec_mv3_tps_bilstm_ctc.yml",
            "rec_r34_vd_none_bilstm_ctc.yml", "rec_svtrnet_ch.yml",
            "ch_ppocr_v2.0/rec_chinese_lite_train_v2.0.yml", "ch_PP-OCRv2/ch_PP-OCRv2_rec.yml",
            "PP-OCRv3/en_PP-OCRv3_rec.yml", "PP-OCRv3/ch_PP-OCRv3_rec.yml",
            "PP-OCRv3/ch_PP-OCRv3_rec_distillation.yml"]


def test_every_upstream_config_is_walked_here_or_in_test_svtr():
    from test_config import shipped_rec_configs
    shipped = {n for n in shipped_rec_configs() if not n.startswith("quickstart")}
    assert shipped == set(UPSTREAM) | {"rec_svtrnet.yml"}


@pytest.mark.parametrize("name", UPSTREAM)
def test_upstream_config_trains_a_step_and_evaluates(name, tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs/rec", name),
                      SMALL_SYNTHETIC + [f"Global.save_model_dir={tmp_path}"])
    result = train(cfg, mesh=data_mesh(jax.devices()[:1]))
    assert result["global_step"] == 1
    assert np.isfinite(result["train"]["loss"])
    assert result["best"]["samples"] == 3 and 0.0 <= result["best"]["acc"] <= 1.0
    assert os.path.isdir(tmp_path / "latest" / "1")
