"""Real multi-process training on CPU: workers launched by launch/multihost.py, gloo collectives.

Slow (each run compiles the step in every worker); CI runs them.
"""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import QUICKSTART, ROOT, TINY
from jaxocr.training.checkpoint import read_state, resolve

pytestmark = pytest.mark.slow

# Momentum keeps the update linear in the gradient, so float32 noise stays at float32 size
# (Adam's first steps turn any ~0 gradient's sign noise into a full learning-rate step).
# 4 samples per device keep per-device BN well conditioned: what remains is the all-reduce's
# float32 summation order (gloo across processes vs. in-process), ~1e-7 relative. A one-step
# warm-up (lr 0 at step 0) leaves two updates for that noise to grow through the tiny per-device
# BN batches; with three it reaches ~3e-5 here, twice the tolerance, in both directions alike.
COMMON = TINY + ["Optimizer.name=Momentum", "Optimizer.lr.name=Const",
                 "Optimizer.lr.learning_rate=0.01", "Optimizer.lr.warmup_epoch=0.25",
                 "Train.loader.batch_size_per_card=4",
                 "Global.eval_batch_step=[0,3]"]


def run(save_dir, *overrides, procs=2, devices_per_proc=2, flags=(), env=None, timeout=600):
    cmd = [sys.executable, "launch/multihost.py", "-c", QUICKSTART, "-o", *COMMON,
           f"Global.save_model_dir={save_dir}", *overrides]
    if procs > 1:
        cmd += ["--nproc_per_host", str(procs), "--cpu_devices_per_process", str(devices_per_proc),
                "--log_dir", str(save_dir) + "_log", "--shutdown_timeout", "60"]
    else:
        cmd += ["--cpu_devices", str(devices_per_proc)]
    r = subprocess.run(cmd + list(flags), capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, **(env or {})}, timeout=timeout)
    return r


def latest_params(run_dir):
    directory, step = resolve(str(run_dir))
    return step, read_state(str(run_dir))["params"]


def eval_line(text):
    line = [l for l in text.splitlines() if "cur metric" in l][-1]
    return line.split("cur metric, ")[1].split(", fps")[0]


def assert_close(a, b):
    """rtol 1e-5, with an absolute floor of 1e-5 of the largest parameter: the BN biases whose
    exact gradient is 0 sit at ~1e-10 and carry pure summation noise. A wrong average or other
    data would move parameters by ~lr * grad, 1e-3 here."""
    scale = max(float(np.abs(y).max()) for y in jax.tree.leaves(b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 3 steps as 2 processes x 2 devices and as 1 process x 4 devices."""
    tmp = tmp_path_factory.mktemp("mp")
    two = run(tmp / "two", "Global.max_steps=3")
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = run(tmp / "one", "Global.max_steps=3", procs=1, devices_per_proc=4)
    assert one.returncode == 0, one.stderr[-3000:]
    return tmp, two, one


def test_two_processes_equal_one_process_with_the_same_devices(runs):
    tmp, two, one = runs
    assert "joined the job: process 0 of 2" in two.stdout  # worker 0 is echoed
    assert os.path.exists(tmp / "two_log" / "workerlog.1")
    with open(tmp / "two_log" / "workerlog.1") as f:
        assert "joined the job: process 1 of 2" in f.read()
    step_two, params_two = latest_params(tmp / "two")
    step_one, params_one = latest_params(tmp / "one")
    assert step_two == step_one == 3
    assert_close(params_two, params_one)


def test_sharded_eval_equals_single_process_eval(runs):
    _, two, one = runs
    # 10 eval samples, global batch 8: the second batch is 2 real + 6 masked padding rows
    assert eval_line(two.stdout) == eval_line(one.stdout)
    assert "norm_edit_dis: 0.000000" not in eval_line(one.stdout)  # a value that can differ


def test_save_on_two_processes_restore_on_one_and_back(runs):
    tmp, _, _ = runs
    a = run(tmp / "two_then_one", "Global.max_steps=5", f"Global.checkpoints={tmp / 'two'}",
            procs=1, devices_per_proc=4)
    assert a.returncode == 0, a.stderr[-3000:]
    b = run(tmp / "one_then_two", "Global.max_steps=5", f"Global.checkpoints={tmp / 'one'}")
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    assert "(global_step 3)" in a.stdout and "(global_step 3)" in b.stdout
    for source, resumed in (("two", "two_then_one"), ("one", "one_then_two")):
        step, params = latest_params(tmp / resumed)
        assert step == 5
        _, before = latest_params(tmp / source)
        moved = [float(np.abs(x - y).max()) for x, y in
                 zip(jax.tree.leaves(params), jax.tree.leaves(before))]
        assert max(moved) > 1e-4 and all(np.isfinite(moved))  # it trained on from there
    # (1 vs 2 processes on the same state is equal to float noise: the first test. Over more
    # steps at this learning rate that noise grows chaotically, so no equality is asserted here.)
