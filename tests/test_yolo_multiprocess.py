"""PP-YOLOE-s on 2 processes x 1 device equals 1 process x 2 devices: the parameters, sync-BN
statistics and EMA after K steps, and the sharded COCO eval, launched as a PaddleDetection user
would (`-c CONFIG --eval`, PaddleDetection's `-o` keys).

Slow (every worker compiles the step); CI runs it."""
import re

import jax
import numpy as np
import pytest

from conftest import QUICKSTART_YOLO, run_multihost
from jaxocr.training.checkpoint import read_state, resolve
from test_multiprocess import eval_metrics

pytestmark = pytest.mark.slow

# Task-aligned assignment from the first step (the assigner trained after epoch 100). Momentum
# keeps the update linear in the gradient (see test_multiprocess.py); the warm-up starts at
# lr 0, so of 3 steps two move the weights. 6 eval images at a global batch of 4: the second
# batch is 2 real rows and 2 masked ones, and process 1's share of it is padding only.
COMMON = ["width_mult=0.25", "epoch=1", "TrainDataset.num_samples=12",
          "EvalDataset.num_samples=6", "TrainDataset.image_size=64", "EvalDataset.image_size=64",
          "TrainReader.batch_size=2", "EvalReader.batch_size=2", "worker_num=1",
          "TrainReader.batch_transforms.0.BatchRandomResize.target_size=[64]",
          "EvalReader.sample_transforms.1.Resize.target_size=[64,64]",
          "PPYOLOEHead.static_assigner_epoch=0", "snapshot_epoch=1", "log_iter=1",
          "OptimizerBuilder.optimizer.type=Momentum", "OptimizerBuilder.optimizer.momentum=0.9",
          "OptimizerBuilder.optimizer.weight_decay=~"]


def _run(save_dir, procs):
    return run_multihost(["-c", QUICKSTART_YOLO, "--eval", "-o", *COMMON, f"save_dir={save_dir}"],
                         procs, str(save_dir) + "_log")


def _latest(save_dir):
    run_dir = str(save_dir / "quickstart_ppyoloe_s")
    _, step = resolve(run_dir)
    state = read_state(run_dir)
    return step, {k: state[k] for k in ("params", "batch_stats", "ema")}


def _losses(text):
    return [float(m) for m in re.findall(r"Epoch: \[0\] \[\d/3\] .*? loss: ([0-9.]+)", text)]


def test_two_processes_equal_one_process_for_ppyoloe(tmp_path):
    two = _run(tmp_path / "two", 2)
    one = _run(tmp_path / "one", 1)
    assert "joined the job: process 0 of 2" in two.stdout
    assert "global batch 4 (2 per card), 3 steps per epoch" in two.stdout
    step_two, state_two = _latest(tmp_path / "two")
    step_one, state_one = _latest(tmp_path / "one")
    assert step_two == step_one == 3
    leaves_two, leaves_one = jax.tree.leaves(state_two), jax.tree.leaves(state_one)
    assert len(leaves_two) == len(leaves_one) > 0
    for a, b in zip(leaves_two, leaves_one):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
    # the logged losses (normalised by the target-score sum over every device) agree step by step
    losses_two, losses_one = _losses(two.stdout), _losses(one.stdout)
    assert len(losses_two) == len(losses_one) == 3 and len(set(losses_one)) == 3, losses_one
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-4)
    sharded, single = eval_metrics(two.stdout), eval_metrics(one.stdout)
    assert sharded["samples"] == single["samples"] == 6, (sharded, single)
    for key in ("AP", "AP50", "AR1", "AR100"):
        assert sharded[key] == single[key], (key, sharded, single)
