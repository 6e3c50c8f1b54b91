"""A det config on 2 processes x 1 device equals 1 process x 2 devices: the parameters after K
steps and the sharded ICDAR eval, launched with --nproc_per_host as a user would.

Slow (every worker compiles the step); CI runs it."""

import pytest

from conftest import det_config_file, run_multihost
from test_multiprocess import assert_close, eval_metrics, latest_params

pytestmark = pytest.mark.slow

# Momentum keeps the update linear in the gradient (see test_multiprocess.py). Thresholds 0 make
# the untrained detector return boxes (the post-process and metric run on every row). 5 eval
# samples at a global eval batch of 4: the second batch is 1 real row
# and 3 masked ones, and process 1's share of it is padding only.
COMMON = ["Optimizer.name=Momentum", "Optimizer.lr.name=Const",
          "Optimizer.lr.learning_rate=0.01", "Optimizer.lr.warmup_epoch=0",
          "Global.max_steps=3", "Global.eval_batch_step=[0,3]", "Eval.dataset.num_samples=5",
          "PostProcess.thresh=0.0", "PostProcess.box_thresh=0.0"]


def _run(cfg, save_dir, procs):
    return run_multihost(["-c", cfg, "-o", *COMMON, f"Global.save_model_dir={save_dir}"], procs,
                         str(save_dir) + "_log", timeout=900)


def test_two_processes_equal_one_process_for_db(tmp_path):
    cfg = det_config_file(tmp_path / "det.yml", size=64)
    two = _run(cfg, tmp_path / "two", 2)
    one = _run(cfg, tmp_path / "one", 1)
    assert "joined the job: process 0 of 2" in two.stdout
    step_two, params_two = latest_params(tmp_path / "two")
    step_one, params_one = latest_params(tmp_path / "one")
    assert step_two == step_one == 3
    assert_close(params_two, params_one)
    sharded, single = eval_metrics(two.stdout), eval_metrics(one.stdout)
    assert sharded["samples"] == single["samples"] == 5, (sharded, single)
    for key in ("precision", "recall", "hmean"):  # (an untrained detector: zeros here; the
        assert sharded[key] == single[key], (key, sharded, single)  # values are tested in
    # tests/test_det_task.py with an oracle detector on 4 devices against 1)
