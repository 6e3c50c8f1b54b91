"""End-to-end training on the built-in synthetic data: resume, bad data, CLI errors."""
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import QUICKSTART, ROOT, tiny_config
from jaxocr.data.fixtures import write_label_file_dataset
from jaxocr.training.loop import train


def _params(result):
    return jax.device_get(result["state"].params)


def test_resume_equals_straight_run(tmp_path):
    straight = train(tiny_config(tmp_path / "a", "Global.max_steps=4"))
    first = train(tiny_config(tmp_path / "b", "Global.max_steps=2"))
    assert first["global_step"] == 2
    resumed = train(tiny_config(tmp_path / "c", "Global.max_steps=4",
                                f"Global.checkpoints={tmp_path / 'b'}"))
    assert resumed["global_step"] == straight["global_step"] == 4
    assert int(resumed["state"].step) == int(straight["state"].step) == 4
    assert resumed["train"]["lr"] == pytest.approx(straight["train"]["lr"], rel=1e-7)
    for a, b in zip(jax.tree.leaves(_params(straight)), jax.tree.leaves(_params(resumed))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    opt_a, opt_b = (jax.device_get(r["state"].opt_state) for r in (straight, resumed))
    for a, b in zip(jax.tree.leaves(opt_a), jax.tree.leaves(opt_b)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert os.path.isdir(tmp_path / "a" / "latest" / "4")
    with open(tmp_path / "a" / "train.log") as f:
        text = f.read()
    assert "params: " in text and "global_step: 4" in text and "avg_reader_cost" in text


def test_resume_on_another_device_count_continues_at_the_same_sample(tmp_path):
    import optax
    from jaxocr.distributed import data_mesh
    from jaxocr.training import checkpoint
    from jaxocr.training.optimizer import build_schedule
    from jaxocr.training.step import replicated
    first = train(tiny_config(tmp_path, "Global.max_steps=3"))  # 4 devices: global batch 8
    # 2 devices: global batch 4, 16 steps per epoch; sample 24 is step 6 here, not step 3
    resumed = train(tiny_config(tmp_path, "Global.max_steps=8"), mesh=data_mesh(jax.devices()[:2]))
    assert resumed["global_step"] == 8
    cfg = tiny_config(tmp_path)
    lr = build_schedule(cfg["Optimizer"]["lr"], 16, int(cfg["Global"]["epoch_num"]))
    with open(tmp_path / "train.log") as f:
        text = f.read()
    assert ("resuming with global batch 4 (was 8): epoch 1 from sample 24, which is step 6 of 8 "
            f"here (it was step 3), lr {float(lr(6)):.6g}") in text
    counts = [s.count for s in jax.tree.leaves(
        resumed["state"].opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByScheduleState))
        if isinstance(s, optax.ScaleByScheduleState)]
    assert [int(c) for c in counts] == [8]  # the schedule ran steps 6 and 7 of this layout
    assert resumed["train"]["lr"] == pytest.approx(float(lr(7)))
    _, meta = checkpoint.restore(str(tmp_path), first["state"], replicated(data_mesh()))
    assert (meta["data_epoch"], meta["data_offset"], meta["global_batch"]) == (0, 32, 4)


def test_a_bigger_batch_past_half_way_does_not_stop_at_once(tmp_path):
    from jaxocr.distributed import data_mesh
    train(tiny_config(tmp_path, "Global.epoch_num=1", "Global.max_steps=10"),
          mesh=data_mesh(jax.devices()[:1]))  # batch 2: 32 steps per epoch; step 10 = sample 20
    resumed = train(tiny_config(tmp_path, "Global.epoch_num=1"))  # batch 8: sample 20 = step 2
    assert resumed["global_step"] == 8  # the rest of the epoch: steps 3..8 of 8, not "finished"


def test_train_log_reads_a_line_after_the_next_step_and_smooths_acc(caplog):
    from jaxocr.tasks.rec import CTCObjective
    from jaxocr.training.loop import TrainLog
    log = TrainLog({"log_smooth_window": 3, "cal_metric_during_train": True}, 2, 8, 1, None,
                   CTCObjective(None, metric_table=object()).summarize)
    accs = [0.0, 0.5, 1.0, 1.0]
    for step, a in enumerate(accs, 1):
        log.add({"loss": jax.numpy.asarray(1.0), "metric": jax.numpy.asarray([8 * a, 0.0, 8.0]),
                 "nonfinite": jax.numpy.asarray(0)}, step)
    context = {"epoch": 0, "step": 4, "lr": 0.1, "steps": 4, "reader_cost": 0.0,
               "steps_left": 8, "skipped": 0}
    import re
    import time
    log.restart_clock()  # (as after an eval)
    time.sleep(0.4)      # the 4 steps' device time, as reading their outputs waits for it
    with caplog.at_level("INFO", logger="jaxocr"):
        log.start_line(context)
        assert "global_step: 4" not in caplog.text  # copied to the host, not yet read
        log.flush()
    assert "global_step: 4" in caplog.text
    assert log.last["acc"] == pytest.approx(1.0)  # the median of the last 3 steps' accuracy
    assert log.last["norm_edit_dis"] == pytest.approx(1.0) and log.last["lr"] == 0.1
    # the batch cost runs from the previous line's finished steps to this line's
    cost = float(re.search(r"avg_batch_cost: ([0-9.]+) s", caplog.text).group(1))
    assert 0.1 <= cost < 0.2, caplog.text
    assert "eta: 0:00:0" in caplog.text  # 8 steps left at ~0.1 s


def _outs(losses):
    jnp = jax.numpy
    return [{"loss": jnp.asarray(x), "metric": jnp.zeros(1),
             "nonfinite": jnp.asarray(int(not np.isfinite(x)))} for x in losses]


LINE = {"epoch": 0, "lr": 0.1, "reader_cost": 0.0, "steps_left": 8, "skipped": 0}


def test_train_log_stops_at_the_first_non_finite_step_or_counts_skipped_ones(caplog):
    from jaxocr.training.loop import NonFiniteLoss, TrainLog
    log = TrainLog({"log_smooth_window": 5}, 2, 8, 1, None)
    for step, out in enumerate(_outs([1.0, 2.0, np.nan, np.inf]), 1):
        log.add(out, step)
    log.start_line({**LINE, "step": 4, "steps": 4})
    with pytest.raises(NonFiniteLoss, match="global_step 3: the loss is nan"):
        log.flush()

    # before a checkpoint write, the steps not yet in a line are checked too
    log = TrainLog({"log_smooth_window": 5}, 2, 8, 1, None)
    for step, out in enumerate(_outs([1.0, np.inf]), 7):
        log.add(out, step)
    with pytest.raises(NonFiniteLoss, match="global_step 8: the loss is inf") as e:
        log.check()
    assert "skip_nonfinite_updates" in str(e.value)

    skipping = TrainLog({"log_smooth_window": 5, "skip_nonfinite_updates": True}, 2, 8, 1, None)
    for step, out in enumerate(_outs([1.0, np.nan, 3.0, np.inf]), 1):
        skipping.add(out, step)
    skipping.check()
    with caplog.at_level("INFO", logger="jaxocr"):
        skipping.start_line({**LINE, "step": 4, "steps": 4})
        skipping.flush()
    assert "nonfinite_skipped: 2" in caplog.text
    assert skipping.last["loss"] == 2.0  # the median of the finite steps only


def test_corrupt_images_and_unknown_labels_are_skipped_and_counted(tmp_path):
    data = tmp_path / "data"
    label_file = write_label_file_dataset(str(data), 30, "0123456789abcdefghijklmnopqrstuvwxyz",
                                          seed=3, corrupt=2, bad_labels=3)
    src = ["Train.dataset.name=SimpleDataSet", f"Train.dataset.data_dir={data}",
           f"Train.dataset.label_file_list=[{label_file}]",
           "Eval.dataset.name=SimpleDataSet", f"Eval.dataset.data_dir={data}",
           f"Eval.dataset.label_file_list=[{label_file}]", "Global.eval_batch_step=[0,3]"]
    result = train(tiny_config(tmp_path / "run", "Global.max_steps=3", *src))
    assert result["global_step"] == 3
    # PaddleOCR's default: the 3 labels lose their unknown character and stay
    assert sum(result["dropped_labels"].values()) == 0
    assert result["skipped_images"] >= 2  # 30 labels, 24 drawn: both corrupt files hit
    with open(tmp_path / "run" / "train.log") as f:
        text = f.read()
    assert "3 kept with characters outside the dictionary removed" in text
    assert "skipped_images" in text and "cur metric" in text
    assert "samples: 28" in text  # the eval set: 30, the 2 unreadable ones masked


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


def test_cli_misspelt_key_and_missing_label_file(tmp_path):
    r = _cli("launch/multihost.py", "-c", QUICKSTART, "-o", "Global.epoc_num=1")
    assert r.returncode == 2
    assert "Global.epoc_num" in r.stderr and "'epoch_num'" in r.stderr
    assert "Traceback" not in r.stderr
    missing = tmp_path / "nope" / "train.txt"
    r = _cli("launch/multihost.py", "-c", QUICKSTART, "-o", "Train.dataset.name=SimpleDataSet",
             f"Train.dataset.data_dir={tmp_path}", f"Train.dataset.label_file_list=[{missing}]",
             f"Global.save_model_dir={tmp_path / 'out'}")
    assert r.returncode == 2 and str(missing) in r.stderr and "Traceback" not in r.stderr
    # fewer samples than one global batch: one line
    r = _cli("launch/multihost.py", "-c", QUICKSTART, "-o", "Train.dataset.num_samples=8",
             f"Global.save_model_dir={tmp_path / 'few'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "Train.dataset has 8 samples, fewer than one global batch (64" in r.stderr
    # a truncated LMDB: one line, not a SIGBUS or a traceback from inside lmdb
    from jaxocr.data.fixtures import write_lmdb_dataset
    write_lmdb_dataset(tmp_path / "lmdb" / "a", 8, "abc", seed=0)
    mdb = tmp_path / "lmdb" / "a" / "data.mdb"
    mdb.write_bytes(mdb.read_bytes()[:8192])
    r = _cli("launch/multihost.py", "-c", QUICKSTART, "-o", "Train.dataset.name=LMDBDataSet",
             f"Train.dataset.data_dir={tmp_path / 'lmdb'}", f"Global.save_model_dir={tmp_path}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("jaxocr: error: LMDB ")
    assert "data.mdb is truncated" in r.stderr


def test_eval_and_infer_clis_on_a_trained_checkpoint(tmp_path):
    from conftest import TINY
    run = tmp_path / "run"
    r = _cli("launch/multihost.py", "-c", QUICKSTART, "-o", *TINY, f"Global.save_model_dir={run}",
             "Global.max_steps=2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "params: " in r.stdout and "global_step: 2" in r.stdout

    metrics_json = tmp_path / "metrics.json"
    r = _cli("launch/eval.py", "-c", QUICKSTART, "-o", *TINY, f"Global.checkpoints={run}",
             "--json", str(metrics_json))
    assert r.returncode == 0, r.stderr[-2000:]
    printed = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    assert {"acc", "norm_edit_dis", "fps"} <= printed.keys()
    import json
    saved = json.loads(metrics_json.read_text())
    assert saved["global_step"] == 2 and 0.0 <= saved["acc"] <= 1.0
    assert float(printed["norm_edit_dis"]) == pytest.approx(saved["norm_edit_dis"])

    images = tmp_path / "imgs"
    label_file = write_label_file_dataset(str(images), 3, "0123456789abcdefghijklmnopqrstuvwxyz",
                                          seed=5)
    paths = sorted(str(p) for p in (images / "images").iterdir())
    (images / "images" / "broken.png").write_bytes(b"not an image")
    r = _cli("launch/infer.py", "-c", QUICKSTART, "-o", *TINY,
             f"Global.checkpoints={run / 'latest'}", f"Global.infer_img={images / 'images'}")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split("\t") for line in r.stdout.splitlines() if line.count("\t") == 2]
    assert [row[0] for row in rows] == paths
    assert all(0.0 <= float(row[2]) <= 1.0 for row in rows)
    assert "broken.png" in r.stderr and os.path.exists(label_file)


def test_pretrained_model_loads_weights_and_skips_mismatched_shapes(tmp_path):
    source = train(tiny_config(tmp_path / "src", "Global.max_steps=1"))
    # 36 chars plus a space: 38 classes, so the CTC head no longer fits; lr 0 keeps weights
    chars = tmp_path / "dict.txt"
    chars.write_text("\n".join("0123456789abcdefghijklmnopqrstuvwxyz") + "\n")
    result = train(tiny_config(tmp_path / "dst", "Global.max_steps=1",
                               f"Global.character_dict_path={chars}", "Global.use_space_char=true",
                               "Optimizer.lr.learning_rate=0", "Optimizer.lr.warmup_epoch=0",
                               f"Global.pretrained_model={tmp_path / 'src'}"))
    src, dst = _params(source), _params(result)
    for a, b in zip(jax.tree.leaves(src["backbone"]), jax.tree.leaves(dst["backbone"])):
        np.testing.assert_array_equal(a, b)
    assert dst["head"]["fc"]["kernel"].shape[-1] == 38
    text = (tmp_path / "dst" / "train.log").read_text()
    assert "skipped ['params']['head']['fc']['kernel'] (96, 38) vs (96, 37)" in text
    assert "2 tensors skipped" in text
    assert result["global_step"] == 1  # weights only: the step counter starts afresh


def test_use_amp_computes_in_bfloat16_and_keeps_float32_state(tmp_path):
    from jaxocr.training.loop import Components
    losses = {}
    for amp in (False, True):
        cfg = tiny_config(tmp_path, f"Global.use_amp={amp}")
        comp = Components(cfg)
        loader = comp.loader("Train")
        state, tx, _ = comp.build_state(loader.load(0, 0)["image"].shape, loader.steps_per_epoch)
        state = jax.device_put(state, comp.repl)
        step = comp.train_step(tx)
        batches = loader.batches(0, 0, comp.batch_sharding)
        batch, _ = next(iter(batches))
        batches.close()
        program = step.lower(state, batch).as_text()  # before XLA: CPU upcasts bf16 matmuls
        convs = [l for l in program.splitlines() if "dot_general" in l or "convolution" in l]
        assert convs and any("bf16" in l for l in convs) == amp
        state, out = step(state, batch)
        losses[amp] = float(out["loss"])
        dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))
                  if hasattr(x, "dtype") and x.ndim > 0}
        assert dtypes == {np.dtype("float32")}
    assert np.isfinite(losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=0.05)  # same init, same batch


def test_a_non_finite_loss_stops_the_run_with_the_latest_checkpoint_intact_or_is_skipped(
        tmp_path):
    from jaxocr.training import checkpoint
    from jaxocr.training.loop import NonFiniteLoss
    run = tmp_path / "run"
    train(tiny_config(run, "Global.max_steps=4", "Global.save_every_steps=2"))
    diverge = ["Global.max_steps=8", "Global.save_every_steps=2", "Global.print_batch_step=1",
               "Optimizer.lr.learning_rate=1e9", "Optimizer.lr.warmup_epoch=0"]
    with pytest.raises(NonFiniteLoss) as stopped:
        train(tiny_config(run, *diverge))  # resumes at 4; step 5's update blows the weights up
    assert stopped.value.step == 6, str(stopped.value)
    latest = str(run / "latest" / "4")
    assert f"the latest checkpoint, {latest}, is intact" in str(stopped.value)
    assert checkpoint.newest(str(run)) == latest  # the save due at step 6 was not written
    saved = checkpoint.read_state(latest)["params"]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved))

    result = train(tiny_config(run, *diverge, "Global.skip_nonfinite_updates=true"))
    assert result["global_step"] == 8
    text = open(run / "train.log").read().split("resumed from")[-1]
    skipped = [int(n) for n in re.findall(r"nonfinite_skipped: (\d+)", text)]
    assert skipped == [1, 2, 3], text  # steps 6, 7 and 8 left the state as it was
    params = jax.device_get(result["state"].params)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_the_cli_ends_a_non_finite_run_with_one_line(monkeypatch, capsys):
    from jaxocr import cli, host_memory
    from jaxocr.training.loop import NonFiniteLoss
    monkeypatch.setattr(host_memory, "restart_with_huge_pages", lambda: None)

    def diverging():
        raise NonFiniteLoss(6, float("nan"), "/runs/a/latest/4")
    with pytest.raises(SystemExit) as exit_:
        cli.run(diverging)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("jaxocr: error: global_step 6: the loss is nan")
    assert "/runs/a/latest/4" in err


def test_auto_resume_into_a_run_of_another_model_refuses_naming_the_difference(tmp_path):
    from jaxocr.training.checkpoint import CheckpointError
    run = tmp_path / "run"
    train(tiny_config(run, "Global.max_steps=1"))
    with pytest.raises(CheckpointError) as e:
        train(tiny_config(run, "Global.max_steps=2", "Architecture.Neck.hidden_size=32"))
    text = str(e.value)
    assert "Architecture.Neck.hidden_size: 48 in the checkpoint, 32 here" in text, text
    assert "Global.auto_resume: false" in text and "\n" not in text
