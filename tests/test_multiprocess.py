"""Real multi-process training on CPU: workers launched by launch/multihost.py, gloo collectives.

Slow (each run compiles the step in every worker); CI runs them.
"""
import json
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


def run(save_dir, *overrides, procs=2, devices_per_proc=2, flags=(), env=None, timeout=1200):
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


def eval_metrics(text):
    """The last `cur metric, acc: ..., norm_edit_dis: ..., fps: ..., samples: N` line."""
    lines = [l for l in text.splitlines() if "cur metric, " in l]
    assert lines, "no eval line:\n" + text[-3000:]
    body = lines[-1].split("cur metric, ", 1)[1]
    return {k: float(v) for k, v in (kv.split(": ", 1) for kv in body.split(", "))}


def flat_state(state):
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def read_meta(run_dir):
    import orbax.checkpoint as ocp
    directory, step = resolve(str(run_dir))
    with ocp.CheckpointManager(directory, item_handlers={"meta": ocp.JsonCheckpointHandler()}) as m:
        return dict(m.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


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


def test_sharded_eval_counts_every_sample_once_and_equals_an_unpadded_eval(runs, tmp_path):
    """10 eval samples, global eval batch 8 (2 per card x 4 devices): the second batch is 2 real
    rows + 6 masked padding rows, and on 2 processes process 1's share of it is padding only.
    Counting the padding would give 16 samples and move the metrics."""
    tmp, two, one = runs
    sharded, single = eval_metrics(two.stdout), eval_metrics(one.stdout)
    assert sharded["samples"] == single["samples"] == 10, (sharded, single)
    for key in ("acc", "norm_edit_dis"):
        assert sharded[key] == single[key], (key, sharded, single)
    assert 0 < sharded["norm_edit_dis"] < 1  # a value that moves when the count is wrong
    # The same checkpoint (the state both evals ran on, step 3) on 1 device at batch 1:
    # no padding at all, so nothing for a mask to hide.
    out = tmp_path / "metrics.json"
    r = subprocess.run([sys.executable, "launch/eval.py", "-c", QUICKSTART, "-o", *COMMON,
                        f"Global.checkpoints={tmp / 'two'}", "Eval.loader.batch_size_per_card=1",
                        "--cpu_devices", "1", "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(out) as f:
        unpadded = json.load(f)
    assert unpadded["global_step"] == 3 and unpadded["samples"] == 10, unpadded
    for key in ("acc", "norm_edit_dis"):  # the log line rounds to 6 decimals
        assert unpadded[key] == pytest.approx(sharded[key], abs=1e-6), (key, unpadded, sharded)


def test_restore_on_another_layout_equals_the_saved_state(runs):
    """A checkpoint saved by 2 processes x 2 devices, restored by 1 process x 4 devices (and the
    reverse), is the saved state exactly: every leaf of params, batch_stats, opt_state, step and
    rng, and the loop metadata. The restoring run has max_steps 3 = the checkpoint's step, so it
    trains no step and saves what it restored, from its own layout."""
    tmp, _, _ = runs
    restored = {
        "two": run(tmp / "two_restored_on_one", "Global.max_steps=3",
                   f"Global.checkpoints={tmp / 'two'}", procs=1, devices_per_proc=4),
        "one": run(tmp / "one_restored_on_two", "Global.max_steps=3",
                   f"Global.checkpoints={tmp / 'one'}"),
    }
    for r in restored.values():
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "(global_step 3)" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    for source, again in (("two", "two_restored_on_one"), ("one", "one_restored_on_two")):
        step_saved, step_again = resolve(str(tmp / source))[1], resolve(str(tmp / again))[1]
        assert step_saved == step_again == 3
        saved, back = flat_state(read_state(str(tmp / source))), flat_state(
            read_state(str(tmp / again)))
        assert saved.keys() == back.keys(), sorted(saved.keys() ^ back.keys())
        for part in ("['params']", "['batch_stats']", "['opt_state']", "['rng']"):
            assert any(k.startswith(part) for k in saved), (part, sorted(saved)[:5])
        assert int(saved["['step']"]) == 3
        for key, value in saved.items():
            assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
            np.testing.assert_array_equal(back[key], value, err_msg=f"{source} -> {again}: {key}")
        meta_saved, meta_again = read_meta(tmp / source), read_meta(tmp / again)
        for key in ("global_step", "data_epoch", "data_offset", "global_batch"):
            assert meta_again[key] == meta_saved[key], (key, meta_saved, meta_again)
        # a trained state, not an init that any restore would reproduce: momentum is non-zero
        assert any(np.abs(v).max() > 0 for k, v in saved.items() if k.startswith("['opt_state']")
                   and v.dtype.kind == "f")


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
