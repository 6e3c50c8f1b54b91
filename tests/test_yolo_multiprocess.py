"""PP-YOLOE on 2 processes x 1 device equals 1 process x 2 devices, launched as a
PaddleDetection user would (`--eval`, `--nproc_per_host`): the parameters and EMA after both
assigner phases, and the COCO evaluation over detections gathered from both processes.

Slow (every worker compiles both phases); CI runs it."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import QUICKSTART_YOLO, ROOT, yolo_overrides
from test_multiprocess import assert_close, eval_metrics
from jaxocr.training.checkpoint import read_state, resolve

pytestmark = pytest.mark.slow

# Momentum keeps the update linear in the gradient (see test_multiprocess.py); 8 images at a
# global batch of 4: 2 steps of ATSS (epoch 1), 2 of TAL (epoch 2), an eval after each epoch
# of 6 images at a global eval batch of 4 (process 1's half of the second batch is padding).
# Two input sizes: every process must draw the same one for each global batch, or no global
# array could be assembled from their halves.
COMMON = ["OptimizerBuilder.optimizer.type=Momentum", "OptimizerBuilder.optimizer.momentum=0.9",
          "OptimizerBuilder.optimizer.weight_decay=~",
          "PPYOLOEHead.nms.score_threshold=0.0",
          "TrainReader.batch_transforms.0.BatchRandomResize.target_size=[64,96]"]


def _run(save_dir, procs):
    cmd = [sys.executable, "launch/multihost.py", "-c", QUICKSTART_YOLO, "--eval", "-o",
           *yolo_overrides(save_dir), *COMMON]
    if procs > 1:
        cmd += ["--nproc_per_host", str(procs), "--cpu_devices_per_process", "1",
                "--log_dir", str(save_dir) + "_log", "--shutdown_timeout", "60"]
    else:
        cmd += ["--cpu_devices", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_two_processes_equal_one_process_for_ppyoloe(tmp_path):
    two = _run(tmp_path / "two", 2)
    one = _run(tmp_path / "one", 1)
    assert "joined the job: process 0 of 2" in two.stdout
    run = "quickstart_ppyoloe_s"
    states = [read_state(str(tmp_path / d / run)) for d in ("two", "one")]
    assert [resolve(str(tmp_path / d / run))[1] for d in ("two", "one")] == [4, 4]
    assert_close(states[0]["params"], states[1]["params"])
    assert_close(states[0]["ema"], states[1]["ema"])
    sharded, single = eval_metrics(two.stdout), eval_metrics(one.stdout)
    assert sharded["samples"] == single["samples"] == 6, (sharded, single)
    assert single["AR100"] > 0  # score threshold 0: the untrained detector's boxes count
    for key in ("AP", "AP50", "AR1", "AR10", "AR100"):
        assert sharded[key] == pytest.approx(single[key], abs=1e-6), (key, sharded, single)
    assert np.isfinite(sharded["AP"])
