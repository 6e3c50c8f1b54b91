"""Every PaddleOCR recognition config the project ships (configs/rec/, upstream's keys and values
-- test_config.py holds their parameter counts) trains and evaluates as written: only the data
source is swapped for the built-in renderer, and the batch made small for two cores. A few steps
on four lines lower the loss (read off train.log, one line per step).
rec_svtrnet.yml runs the same way from the command line in test_svtr.py. Full-size models:
20-30 s each on two cores with the suite's compile settings (tests/conftest.py)."""
import os
import re

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
STEPS = 6

UPSTREAM = ["rec_mv3_none_bilstm_ctc.yml", "rec_mv3_none_none_ctc.yml", "rec_mv3_tps_bilstm_ctc.yml",
            "rec_r34_vd_none_bilstm_ctc.yml", "rec_svtrnet_ch.yml",
            "ch_ppocr_v2.0/rec_chinese_lite_train_v2.0.yml", "ch_PP-OCRv2/ch_PP-OCRv2_rec.yml",
            "ch_PP-OCRv2/ch_PP-OCRv2_rec_distillation.yml",
            "ch_PP-OCRv2/ch_PP-OCRv2_rec_enhanced_ctc_loss.yml", "PP-OCRv3/en_PP-OCRv3_rec.yml", "PP-OCRv3/ch_PP-OCRv3_rec.yml",
            "PP-OCRv3/ch_PP-OCRv3_rec_distillation.yml"]


def test_every_upstream_config_is_walked_here_or_in_test_svtr():
    from test_config import shipped_rec_configs
    shipped = {n for n in shipped_rec_configs() if not n.startswith("quickstart")}
    assert shipped == set(UPSTREAM) | {"rec_svtrnet.yml"}


def step_losses(log_file) -> list[float]:
    with open(log_file) as f:
        return [float(m.group(1)) for m in re.finditer(r"global_step: \d+, lr: \S+, loss: (\S+?),",
                                                       f.read())]


@pytest.mark.parametrize("name", UPSTREAM)
def test_upstream_config_trains_lowering_the_loss_and_evaluates(name, tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs/rec", name), SMALL_SYNTHETIC + [
        f"Global.save_model_dir={tmp_path}", f"Global.max_steps={STEPS}",
        f"Global.eval_batch_step=[0,{STEPS}]", "Global.log_smooth_window=1",
        "Optimizer.lr.warmup_epoch=0"])  # the loss must move within the few steps
    result = train(cfg, mesh=data_mesh(jax.devices()[:1]))
    assert result["global_step"] == STEPS
    losses = step_losses(tmp_path / "train.log")
    assert len(losses) == STEPS and np.isfinite(losses).all(), losses
    assert min(losses[-2:]) < 0.95 * max(losses[:2]), losses
    assert result["best"]["samples"] == 3 and 0.0 <= result["best"]["acc"] <= 1.0
    assert os.path.isdir(tmp_path / "latest" / str(STEPS))
