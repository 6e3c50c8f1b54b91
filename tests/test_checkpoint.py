"""Checkpoints on small pytrees (no model compiles): where a run resumes from, save cadence,
failed asynchronous saves, and restoring across optimizer changes and foreign checkpoints."""
import logging
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import flax.serialization
import pytest

from jaxocr.training import checkpoint
from jaxocr.training.checkpoint import (Cadence, Checkpointer, CheckpointError,
                                        CheckpointSaveError, resolve, resume_source)
from jaxocr.training.optimizer import build_optimizer
from jaxocr.training.step import create_state

from orbax.checkpoint._src.checkpointers import async_checkpointer

SHARDING = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _variables(classes=5, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {"params": {"backbone": {"conv": {"kernel": jax.random.normal(k[0], (3, 3, 1, 4))}},
                       "head": {"fc": {"kernel": jax.random.normal(k[1], (4, classes)),
                                       "bias": jax.random.normal(k[2], (classes,))}}},
            "batch_stats": {"bn": {"mean": jnp.arange(4.0)}}}


def _state(opt=None, classes=5, seed=0, step=0):
    variables = _variables(classes, seed)
    tx, _ = build_optimizer(opt or {"name": "Adam", "lr": {"learning_rate": 0.01}}, {},
                            variables["params"], 10, 1)
    state = create_state(variables, tx, 0)
    if step:  # a few real updates, so moments and counters are not at their initial values
        grads = jax.tree.map(jnp.ones_like, state.params)
        opt_state = state.opt_state
        for _ in range(step):
            _, opt_state = tx.update(grads, opt_state, state.params)
        state = state.replace(step=jnp.asarray(step, jnp.int32), opt_state=opt_state)
    return state


def _meta(step):
    return {"global_step": step, "best_metric": {}, "data_epoch": 0, "data_offset": step * 8,
            "global_batch": 8}


def _assert_tree_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _save(run, step, kind="latest", state=None):
    ckpt = Checkpointer(str(run))
    ckpt.save(state if state is not None else _state(seed=step), _meta(step), kind)
    ckpt.close()


# ---------------------------------------------------------------- where a run resumes

def test_resume_source_prefers_the_run_directory_over_global_checkpoints(tmp_path, caplog):
    start, run = tmp_path / "pretrain", tmp_path / "run"
    _save(start, 7)
    # a fresh run directory starts from Global.checkpoints
    assert resume_source(str(run), str(start), True) == str(start)
    assert resume_source(str(run), None, True) is None
    _save(run, 3)
    with caplog.at_level(logging.INFO, "jaxocr"):
        got = resume_source(str(run), str(start), True)
    # a restart of the same command continues its own run, not the older starting point
    assert got == str(run / "latest" / "3")
    assert "auto_resume" in caplog.text and str(start) in caplog.text
    assert resume_source(str(run), str(start), False) == str(start)
    assert resume_source(str(run), None, False) is None
    state, meta = checkpoint.restore(got, _state(), SHARDING)
    assert meta["global_step"] == 3


def test_newest_finished_step_of_latest_best_and_snapshots(tmp_path):
    run = tmp_path / "run"
    _save(run, 5, "best")  # crashed before the first `latest` save
    assert resolve(str(run)) == (str(run / "best_accuracy"), 5)
    _save(run, 4, "latest")
    assert resolve(str(run)) == (str(run / "best_accuracy"), 5)
    _save(run, 5, "latest")  # equal steps: latest/ wins
    assert resolve(str(run)) == (str(run / "latest"), 5)
    _save(run, 6, "snapshot")
    assert resume_source(str(run), None, True) == str(run / "snapshots" / "6")
    # an unfinished step (orbax's temporary directory) never counts
    (run / "latest" / "9.orbax-checkpoint-tmp-1700000000").mkdir()
    (run / "latest" / "9.orbax-checkpoint-tmp-1700000000" / "state").mkdir()
    assert resolve(str(run)) == (str(run / "snapshots"), 6)
    assert resolve(str(run / "latest")) == (str(run / "latest"), 5)
    with pytest.raises(FileNotFoundError):
        resolve(str(run / "latest" / "9.orbax-checkpoint-tmp-1700000000"))
    assert checkpoint.has_checkpoint(str(run)) and not checkpoint.has_checkpoint(str(tmp_path))


def test_snapshots_are_kept_latest_and_best_keep_one(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    state = _state()
    for step in (1, 2, 3):
        ckpt.save(state, _meta(step), "latest")
        ckpt.save(state, _meta(step), "snapshot")
        ckpt.save(state, _meta(step), best=True)  # the old signature
    assert not ckpt.save(state, _meta(3), "snapshot")  # a step is written once
    ckpt.close()
    assert sorted(os.listdir(tmp_path / "latest")) == ["3"]
    assert sorted(os.listdir(tmp_path / "best_accuracy")) == ["3"]
    assert sorted(os.listdir(tmp_path / "snapshots")) == ["1", "2", "3"]
    with pytest.raises(ValueError):
        Checkpointer(str(tmp_path)).save(state, _meta(4), "iter_epoch")


# ---------------------------------------------------------------- completion and failures

class _Background:
    """Wraps orbax's background commit (the part that writes to storage) to hold or fail it."""

    def __init__(self, monkeypatch, fail=0, hold=False):
        self.original = async_checkpointer._background_wait_for_commit_futures
        self.fail, self.release = fail, threading.Event()
        if not hold:
            self.release.set()
        monkeypatch.setattr(async_checkpointer, "_background_wait_for_commit_futures", self)

    def __call__(self, *args, **kwargs):
        self.release.wait(30)
        if self.fail:
            self.fail -= 1
            raise OSError(5, "Input/output error")  # transient (a network filesystem's hiccup)
        return self.original(*args, **kwargs)


def _poll_until(ckpt, *args, timeout=30):
    import time
    end = time.monotonic() + timeout
    while ckpt._pending is not None and time.monotonic() < end:
        got = ckpt.poll(*args)
        if got:
            return got
        time.sleep(0.05)
    return None


def test_saved_is_logged_when_the_save_has_completed(tmp_path, monkeypatch, caplog):
    background = _Background(monkeypatch, hold=True)
    ckpt = Checkpointer(str(tmp_path))
    with caplog.at_level(logging.INFO, "jaxocr"):
        assert ckpt.save(_state(), _meta(2))
        assert ckpt.poll() is None and ckpt.poll() is None  # still writing
        assert "saved checkpoint" not in caplog.text
        assert not checkpoint.has_checkpoint(str(tmp_path))
        background.release.set()
        assert _poll_until(ckpt) == str(tmp_path / "latest" / "2")
        assert caplog.text.count(f"saved checkpoint {tmp_path / 'latest' / '2'}") == 1
        assert ckpt.poll() is None  # nothing in flight: nothing logged again
    ckpt.close()
    assert resolve(str(tmp_path)) == (str(tmp_path / "latest"), 2)


def test_failed_async_save_is_reported_and_saved_again_synchronously(tmp_path, monkeypatch,
                                                                       caplog):
    _Background(monkeypatch, fail=1)
    ckpt = Checkpointer(str(tmp_path))
    state = _state(step=3)
    with caplog.at_level(logging.INFO, "jaxocr"):
        ckpt.save(_state(step=2), _meta(2))
        got = _poll_until(ckpt, state, _meta(3))  # the loop passes its current state
    assert got == str(tmp_path / "latest" / "3")
    assert f"checkpoint save failed: {tmp_path / 'latest' / '2'}: OSError" in caplog.text
    assert "Input/output error" in caplog.text
    assert f"saved checkpoint {tmp_path / 'latest' / '3'}" in caplog.text
    assert f"saved checkpoint {tmp_path / 'latest' / '2'}" not in caplog.text
    # the failed step stays an unfinished temporary directory: never resumed from
    assert any(d.startswith("2.orbax-checkpoint-tmp") for d in os.listdir(tmp_path / "latest"))
    assert resolve(str(tmp_path)) == (str(tmp_path / "latest"), 3)
    ckpt.save(state, _meta(4))  # the manager keeps working after a failure
    ckpt.close()
    assert resolve(str(tmp_path)) == (str(tmp_path / "latest"), 4)
    restored, meta = checkpoint.restore(str(tmp_path), _state(), SHARDING)
    _assert_tree_equal(restored, state)  # step 4's save of `state`
    assert meta["global_step"] == 4


def test_failed_save_and_failed_retry_raise_one_clear_error(tmp_path, monkeypatch):
    _Background(monkeypatch, fail=2)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(_state(), _meta(2), "best")
    with pytest.raises(CheckpointSaveError) as e:
        _poll_until(ckpt, _state(), _meta(3))
    assert isinstance(e.value, RuntimeError)
    text = str(e.value)
    assert "\n" not in text and str(tmp_path / "best_accuracy" / "2") in text
    assert "Input/output error" in text and str(tmp_path / "best_accuracy" / "3") in text
    assert e.value.path == str(tmp_path / "best_accuracy" / "2")
    assert isinstance(e.value.cause, OSError)
    ckpt.close()
    assert not checkpoint.has_checkpoint(str(tmp_path))


def test_a_failure_surfaces_at_the_next_save_or_close_too(tmp_path, monkeypatch, caplog):
    _Background(monkeypatch, fail=1)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(_state(), _meta(2))
    with caplog.at_level(logging.INFO, "jaxocr"):
        ckpt.save(_state(), _meta(3), "snapshot")  # retries latest at step 3 first
    assert "checkpoint save failed" in caplog.text
    ckpt.close()
    assert os.listdir(tmp_path / "snapshots") == ["3"]
    assert "3" in os.listdir(tmp_path / "latest")
    _Background(monkeypatch, fail=1)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(_state(), _meta(5))
    with pytest.raises(CheckpointSaveError):  # at the end, without a state to save again
        ckpt.close()


def test_a_failure_on_another_process_makes_every_process_save_again(tmp_path, monkeypatch,
                                                                     caplog):
    # this process's save succeeds, another one's fails: all must save again at the same step
    others = [checkpoint.FAILED]  # the other process's first report; then it succeeds

    def gather(code):
        return [code, others.pop(0) if others else code]

    monkeypatch.setattr(checkpoint, "_gather", gather)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(_state(), _meta(2))
    with caplog.at_level(logging.INFO, "jaxocr"):
        assert ckpt.wait(_state(), _meta(3)) == str(tmp_path / "latest" / "3")
    assert "failed on another process" in caplog.text
    ckpt.close()
    assert resolve(str(tmp_path)) == (str(tmp_path / "latest"), 3)


# ---------------------------------------------------------------- restoring

def test_restore_whole_state(tmp_path):
    saved = _state(step=3)
    _save(tmp_path, 3, state=saved)
    restored, meta = checkpoint.restore(str(tmp_path), _state(), SHARDING)
    _assert_tree_equal(restored, saved)
    assert meta == _meta(3)


@pytest.mark.parametrize("opt", [{"clip_norm": 10.0}, {"regularizer": {"name": "L2",
                                                                        "factor": 1e-4}}])
def test_restore_reinitialises_an_optimizer_state_that_changed(tmp_path, caplog, opt):
    saved = _state(step=3)
    _save(tmp_path, 3, state=saved)
    fresh = _state({"name": "Adam", "lr": {"learning_rate": 0.01}, **opt})
    with caplog.at_level(logging.INFO, "jaxocr"):
        restored, meta = checkpoint.restore(str(tmp_path), fresh, SHARDING)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "optimizer state re-initialised" in warnings[0].getMessage()
    _assert_tree_equal(restored.params, saved.params)
    _assert_tree_equal(restored.batch_stats, saved.batch_stats)
    assert int(restored.step) == 3 and meta["global_step"] == 3
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(fresh.opt_state)
    adam = [s for s in jax.tree.leaves(restored.opt_state, is_leaf=lambda n: hasattr(n, "mu"))
            if hasattr(s, "mu")][0]
    assert all(float(jnp.abs(m).max()) == 0 for m in jax.tree.leaves(adam.mu))  # fresh moments


def test_foreign_checkpoint_is_one_clear_error(tmp_path):
    _save(tmp_path, 2, state=_state(classes=7))
    with pytest.raises(CheckpointError) as e:
        checkpoint.restore(str(tmp_path), _state(classes=5), SHARDING)
    text = str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in text
    assert "['params']['head']['fc']['bias'] (7,) in the checkpoint vs (5,) here" in text
    assert "does not fit this model" in text and str(tmp_path / "latest" / "2") in text
    with pytest.raises(CheckpointError):
        checkpoint.restore_weights(str(tmp_path), _variables(5), SHARDING)
    other = _variables()
    other["params"]["neck"] = {"w": jnp.zeros(3)}
    with pytest.raises(CheckpointError, match=r"\['params'\]\['neck'\]\['w'\] missing"):
        checkpoint.restore_weights(str(tmp_path), other, SHARDING)


def test_a_checkpoint_of_another_model_or_dictionary_is_refused_before_reading_arrays(tmp_path):
    arch = {"model_type": "rec", "Backbone": {"name": "MobileNetV3", "scale": 0.5},
            "Head": {"name": "CTCHead", "out_channels": 5}}
    saved = checkpoint.model_identity(arch, list("abcd"))
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(_state(), {**_meta(2), "model": saved})
    ckpt.close()
    same = checkpoint.model_identity(json_copy(arch), list("abcd"))
    restored, meta = checkpoint.restore(str(tmp_path), _state(seed=9), SHARDING, same)
    assert meta["model"] == saved
    _assert_tree_equal(restored.params, _state().params)

    wider = json_copy(arch)
    wider["Backbone"]["scale"] = 0.35
    with pytest.raises(CheckpointError) as e:
        checkpoint.restore(str(tmp_path), _state(), SHARDING, checkpoint.model_identity(
            wider, list("abcd")), advice="train in a new Global.save_model_dir")
    text = str(e.value)
    assert "\n" not in text and str(tmp_path / "latest" / "2") in text
    assert ("belongs to another model: Architecture.Backbone.scale: 0.5 in the checkpoint, "
            "0.35 here; train in a new Global.save_model_dir") in text
    # the same shapes, another dictionary of the same size: no shape error would catch it
    with pytest.raises(CheckpointError, match="the character dictionary differs"):
        checkpoint.restore(str(tmp_path), _state(), SHARDING,
                           checkpoint.model_identity(arch, list("abce")))
    # a checkpoint saved before the identity was: taken as it is
    _save(tmp_path / "old", 2)
    checkpoint.restore(str(tmp_path / "old"), _state(), SHARDING, same)


def json_copy(x):
    import json
    return json.loads(json.dumps(x))


def test_damaged_checkpoint_is_one_clear_error(tmp_path):
    _save(tmp_path, 2)
    state_dir = tmp_path / "latest" / "2" / "state"
    for name in os.listdir(state_dir):
        p = state_dir / name
        if p.is_file():
            p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as e:
        checkpoint.restore(str(tmp_path), _state(), SHARDING)
    assert "\n" not in str(e.value) and str(tmp_path / "latest" / "2") in str(e.value)


def test_restore_weights_needs_only_params_and_batch_stats(tmp_path):
    saved = _state({"name": "Momentum", "clip_norm": 1.0, "lr": {"learning_rate": 0.1}}, step=2)
    _save(tmp_path, 2, state=saved)
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _variables(seed=9))
    variables, meta = checkpoint.restore_weights(str(tmp_path / "latest"), template, SHARDING)
    assert set(variables) == {"params", "batch_stats"} and meta["global_step"] == 2
    _assert_tree_equal(variables["params"], saved.params)
    _assert_tree_equal(variables["batch_stats"], saved.batch_stats)


def test_checkpoints_written_by_the_previous_code_still_restore(tmp_path):
    saved = _state(step=1)
    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=True,
                                           create=True)
    with ocp.CheckpointManager(str(tmp_path / "latest"), options=options) as manager:
        manager.save(1, args=ocp.args.Composite(
            state=ocp.args.StandardSave(flax.serialization.to_state_dict(saved)),
            meta=ocp.args.JsonSave(_meta(1))))
    restored, meta = checkpoint.restore(str(tmp_path), _state(), SHARDING)
    _assert_tree_equal(restored, saved)
    host = checkpoint.read_state(str(tmp_path))
    _assert_tree_equal(host["params"], saved.params)
    loaded = checkpoint.load_pretrained(str(tmp_path), _variables(classes=6))
    _assert_tree_equal(loaded["params"]["backbone"], saved.params["backbone"])
    assert loaded["params"]["head"]["fc"]["kernel"].shape == (4, 6)  # skipped: another shape


# ---------------------------------------------------------------- cadence

class _Clock:
    def __init__(self, step_s, offset=0.0):
        self.t, self.step_s = offset, step_s

    def __call__(self):
        return self.t

    def tick(self):
        self.t += self.step_s


def test_cadence_on_the_step_grid():
    c = Cadence(every_steps=4)
    assert [s for s in range(1, 13) if c.due(s)] == [4, 8, 12]
    assert not any(Cadence().due(s) for s in range(1, 50))


def test_cadence_in_minutes_few_checks_and_the_same_decisions_on_every_process():
    # two processes in lockstep, with different clocks and speeds: only process 0's counts
    clocks = [_Clock(0.5), _Clock(0.9, offset=1000.0)]
    shared = []

    def agree(rank):
        def f(values):
            if rank == 0:
                shared.append(np.asarray(values))
                return shared[-1]
            return shared[-1]  # process 0 went first at this check step
        return f

    cadences = [Cadence(every_minutes=1, start_step=0, clock=clocks[r], agree=agree(r))
                for r in range(2)]
    due = [[], []]
    for step in range(1, 601):
        for r in range(2):
            clocks[r].tick()
            if cadences[r].due(step):
                due[r].append(step)
    assert due[0] == due[1]
    # 0.5 s a step on process 0: every 120 steps (60 s)
    assert due[0] == [120, 240, 360, 480, 600]
    assert cadences[0].checks <= 3 * len(due[0]) + 2  # not a collective per step


def test_cadence_follows_a_change_of_speed_and_reset():
    clock = _Clock(1.0)
    c = Cadence(every_minutes=1, clock=clock)
    due = []
    for step in range(1, 1000):
        clock.step_s = 1.0 if step <= 100 else 0.25  # 4x faster after step 100
        clock.tick()
        if c.due(step):
            due.append(clock())
    assert due[0] == 60
    assert all(60 <= b - a <= 61 for a, b in zip(due, due[1:]))
    assert c.checks <= 2 * len(due) + 4
    c.reset(2000)
    clock.tick()
    assert not c.due(2001)


def test_no_batch_stats_and_a_replicated_mesh(tmp_path):
    from jaxocr.distributed import data_mesh
    from jaxocr.training.step import replicated
    variables = _variables()
    variables["batch_stats"] = {}  # a model without BatchNorm
    tx, _ = build_optimizer({"name": "Adam"}, {}, variables["params"], 10, 1)
    saved = create_state(variables, tx, 0)
    _save(tmp_path, 1, state=saved)
    repl = replicated(data_mesh())
    restored, _ = checkpoint.restore(str(tmp_path), saved, repl)
    _assert_tree_equal(restored, saved)
    assert restored.params["head"]["fc"]["kernel"].sharding == repl
    weights, _ = checkpoint.restore_weights(str(tmp_path), {"params": variables["params"],
                                                            "batch_stats": {}}, repl)
    assert weights["batch_stats"] == {}
    _assert_tree_equal(weights["params"], saved.params)


def test_two_processes_save_with_no_device_collective_and_wait_for_a_late_one(tmp_path):
    """Orbax's barriers and the save-status agreement go through the coordination service:
    a process 40 s late to a save (past gloo's 30 s rendezvous deadline, which failed it) is
    waited for, and no gloo communicator is ever set up (a device collective would)."""
    import subprocess
    import sys

    from conftest import ROOT
    from test_faults import free_port
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "tests/two_process_save.py", str(p), port,
                               str(tmp_path / "run"), "40"], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for p in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert "gathered [[0, 1], [10, 11], [20, 21]]" in out and "saved" in out, out[-3000:]
        assert "Gloo" not in out, out[-3000:]
    assert resolve(str(tmp_path / "run")) == (str(tmp_path / "run" / "latest"), 2)


# ---------------------------------------------------------------- a save cut short

def _big_state(seed):
    """A train state of 16 MiB of weights, so that a save takes a while and fills a disk."""
    k = jax.random.PRNGKey(seed)
    variables = {"params": {"w": jax.random.normal(k, (1024, 4096))}, "batch_stats": {}}
    tx, _ = build_optimizer({"name": "SGD", "lr": {"learning_rate": 0.1}}, {},
                            variables["params"], 10, 1)
    return create_state(variables, tx, 0)


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MiB tmpfs the test may fill (root only: skipped, with the reason, otherwise)."""
    import subprocess
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)])


def test_a_full_disk_ends_the_save_with_one_clear_line_and_the_previous_checkpoint_intact(
        small_disk):
    run = small_disk / "run"
    ckpt = Checkpointer(str(run))
    first = _big_state(1)
    ckpt.save(first, _meta(2))
    ckpt.wait()
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    with open(small_disk / "filler", "wb") as f:  # leave 4 MiB: logs fit, a checkpoint not
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, free - 4 * 2**20)
    with pytest.raises(CheckpointSaveError) as e:
        ckpt.save(_big_state(2), _meta(4))
        ckpt.close(_big_state(2), _meta(4))
    text = str(e.value)
    assert "\n" not in text and str(run / "latest" / "4") in text
    assert "the disk is full (No space left on device" in text, text
    assert f"the previous checkpoint, {run / 'latest' / '2'}, is intact" in text
    assert e.value.retry_path is None  # no synchronous retry into a full disk
    assert checkpoint.newest(str(run)) == str(run / "latest" / "2")
    restored, meta = checkpoint.restore(str(run), _big_state(3), SHARDING)
    assert meta["global_step"] == 2
    _assert_tree_equal(restored.params, first.params)


KILLED_MID_SAVE = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
from test_checkpoint import _big_state, _meta
from jaxocr.training.checkpoint import Checkpointer
ckpt = Checkpointer({run!r})
ckpt.save(_big_state(1), _meta(2))
ckpt.wait()
ckpt.save(_big_state(2), _meta(4))  # asynchronous: the write runs in the background
tmp = [d for d in os.listdir(os.path.join({run!r}, "latest")) if d.startswith("4.")]
print("killed while writing", tmp, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_save_killed_midway_is_never_loaded_and_the_run_resumes_from_the_previous_one(
        tmp_path):
    import subprocess
    import sys
    run = str(tmp_path / "run")
    code = KILLED_MID_SAVE.format(tests=os.path.dirname(__file__), run=run)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert "killed while writing ['4.orbax-checkpoint-tmp" in r.stdout, r.stdout
    assert sorted(os.listdir(os.path.join(run, "latest")))[0] == "2"  # 4 left unfinished
    assert checkpoint.newest(run) == os.path.join(run, "latest", "2")
    restored, meta = checkpoint.restore(run, _big_state(3), SHARDING)
    assert meta["global_step"] == 2
    _assert_tree_equal(restored.params, _big_state(1).params)
    # and the resumed run saves that step again over the unfinished one
    ckpt = Checkpointer(run)
    ckpt.save(_big_state(2), _meta(4))
    ckpt.close()
    assert checkpoint.newest(run) == os.path.join(run, "latest", "4")
