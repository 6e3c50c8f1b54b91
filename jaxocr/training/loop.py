"""The training program: build everything from the config, train, evaluate, checkpoint.

Reads top to bottom: logging, mesh, data, model and optimizer, steps, restore, loop.
The loop never syncs with the device except at log, eval and checkpoint points.
"""
from __future__ import annotations

import collections
import datetime
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from jaxocr.data.pipeline import Loader
from jaxocr.config import ConfigError, config_hash
from jaxocr.distributed import (Preemption, Progress, check_same_config,
                                check_same_start, data_mesh, is_main, local_rows,
                                other_processes, sum_across_processes)
from jaxocr.models import build_model
from jaxocr.tasks import build_task
from jaxocr.training import checkpoint
from jaxocr.training.compile_ahead import CompiledSteps
from jaxocr.training.optimizer import build_optimizer, with_schedule_step
from jaxocr.training.step import (TrainState, batch_sharding, count_params, create_state,
                                  eval_view, init_variables, make_eval_step, make_train_step,
                                  replicated)

log = logging.getLogger("jaxocr")


def setup_logging(save_dir: str | None, main: bool = True):
    """Process 0 logs to the console and train.log; the others to train.N.log, and only
    warnings to their console."""
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("[%(asctime)s] jaxocr %(levelname)s: %(message)s", "%Y/%m/%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO if main else logging.WARNING)
    handlers = [console]
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        p = jax.process_index()
        handlers.append(logging.FileHandler(
            os.path.join(save_dir, "train.log" if p == 0 else f"train.{p}.log")))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)


class Components:
    """Everything built from a config that train, eval and infer share: the task, the model,
    the mesh and the compiled steps."""

    def __init__(self, cfg: dict, mesh=None):
        g = cfg["Global"]
        self.cfg = cfg
        self.mesh = mesh or data_mesh()
        self.task = build_task(cfg)
        self.dtype = compute_dtype(g)
        self.model = build_model(cfg["Architecture"],
                                 bn_axis_name="data" if g["use_sync_bn"] else None,
                                 dtype=self.dtype, conv_impl=g["conv_impl"])
        self.repl = replicated(self.mesh)
        self.batch_sharding = batch_sharding(self.mesh)
        self.image_shape = self.task.input_shape()
        self.objective = self.task.objective()  # the first epoch's (see task.phase)
        self.use_ema = bool(g.get("use_ema", False))
        self.ema_decay = float(g.get("ema_decay", 0.9998))

    def loader(self, mode: str) -> Loader:
        return Loader(self.cfg, mode, self.task.charset, self.mesh,
                      device_keys=self.task.device_keys[mode],
                      **self.task.loader_options(self.model, mode))

    def eval_loader(self) -> Loader:
        return self.loader("Eval")

    def build_state(self, image_shape, steps_per_epoch: int = 1):
        """A fresh train state and its optimizer: (state, tx, schedule)."""
        g = self.cfg["Global"]
        variables = init_variables(self.model, image_shape, int(g["seed"]))
        tx, schedule = build_optimizer(self.cfg.get("Optimizer") or {}, self.cfg["Architecture"],
                                       variables["params"], steps_per_epoch, int(g["epoch_num"]))
        return create_state(variables, tx, int(g["seed"]), self.use_ema), tx, schedule

    def train_step(self, tx, sync_grads: bool = True, phase=None):
        """The compiled data-parallel step for this config's model, objective and dtype; a
        task with training phases (PP-YOLOE's assigners) has one per `task.phase(epoch)`."""
        objective = self.objective if phase is None else self.task.objective(phase)
        return make_train_step(self.model, tx, objective, self.mesh, self.dtype,
                               sync_grads=sync_grads, ema_decay=self.ema_decay,
                               skip_nonfinite=bool(self.cfg["Global"]["skip_nonfinite_updates"]))

    def eval_view(self, state):
        """The weights evaluation, `best` and inference use (the EMA's when kept)."""
        return eval_view(state, self.ema_decay)

    def eval_step(self):
        return make_eval_step(self.model, self.mesh, self.objective, self.dtype)

    def restore_for_inference(self, image_shape):
        """Params and BN stats from `Global.checkpoints` (or `pretrained_model`: a jaxocr
        checkpoint or an ONNX export of PaddleOCR's model), replicated over the mesh; the
        optimizer section of the config plays no part."""
        g = self.cfg["Global"]
        path = g.get("checkpoints") or checkpoint.paddle_weights_path(
            g.get("infer_checkpoint")) or g.get("pretrained_model")
        if not path:
            raise ConfigError("set Global.checkpoints=DIR (a run directory, latest/ or "
                              "best_accuracy/; `-o weights=DIR` for a PaddleDetection config)")
        variables = init_variables(self.model, image_shape, int(self.cfg["Global"]["seed"]))
        variables = {"params": variables["params"],
                     "batch_stats": variables.get("batch_stats", {})}
        path = checkpoint.package_file(str(path))
        if path.endswith(".onnx"):  # PaddleOCR's own model, as its ONNX export holds it
            variables = checkpoint.load_pretrained(path, variables, self.model, image_shape)
            variables, meta = jax.device_put(variables, self.repl), {"global_step": 0}
        else:
            variables, meta = checkpoint.restore_weights(path, variables, self.repl,
                                                         self.ema_decay)
        state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                           batch_stats=variables["batch_stats"], opt_state=(),
                           rng=jax.random.PRNGKey(0))
        return state, meta


def compute_dtype(g: dict):
    if not g["use_amp"]:
        return jnp.float32
    if str(g.get("amp_dtype", "bfloat16")) != "bfloat16":
        raise ConfigError(f"Global.amp_dtype: {g['amp_dtype']!r} is not supported; use bfloat16 "
                          "(float16 would need loss scaling, which jaxocr does not do)")
    return jnp.bfloat16


def evaluate(comp: Components, state, eval_step, loader: Loader) -> dict:
    """Exact over the whole eval set: every process its shard, padding masked, the metric's
    partial states of every process merged."""
    metric = comp.task.build_metric(loader.source)
    t0 = time.perf_counter()
    n = 0.0
    for device, host in loader.batches(0, 0, comp.batch_sharding):
        predictions = jax.tree.map(local_rows, eval_step(state, device))
        comp.task.update_metric(metric, predictions, host)
        n += float(np.sum(host["mask"]))
    elapsed = time.perf_counter() - t0
    for other in other_processes(metric.state()):
        metric.merge(other)
    n = float(sum_across_processes(np.array([n]))[0])
    result = {k: float(v) for k, v in metric.get_metric().items()}
    result["fps"] = float(n / max(elapsed, 1e-9))
    result["samples"] = int(round(n))
    return result


def _eval_due(global_step: int, eval_batch_step) -> bool:
    if eval_batch_step is None:
        return False
    if isinstance(eval_batch_step, (list, tuple)):
        start, every = int(eval_batch_step[0]), int(eval_batch_step[1])
    else:
        start, every = 0, int(eval_batch_step)
    return every > 0 and global_step > start and (global_step - start) % every == 0


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k}: {v:.6f}" if isinstance(v, float) else f"{k}: {v}"
                     for k, v in metrics.items())


class TrainLog:
    """PaddleOCR's log line, without stalling the step: the losses and metric sums of the steps
    since the last line are copied to the host asynchronously and read after the next step has
    been dispatched. Values are medians over the last `log_smooth_window` steps, as PaddleOCR's
    TrainingStats (its acc too: each step's batch accuracy, smoothed)."""

    def __init__(self, g: dict, per_card: int, global_batch: int, epoch_num: int, writer,
                 summarize=None, style: str = "paddleocr"):
        self.windows = collections.defaultdict(
            lambda: collections.deque(maxlen=int(g["log_smooth_window"])))
        self.skip_nonfinite = bool(g.get("skip_nonfinite_updates"))
        self.nonfinite_skipped = 0
        self.per_card, self.global_batch, self.epoch_num = per_card, global_batch, epoch_num
        self.summarize = summarize  # the step's metric vector -> the line's values
        self.style = style          # "paddleocr" or "ppdet" (PaddleDetection's LogPrinter)
        self.writer = writer
        self.pending: list = []   # device outputs of the steps since the last line
        self.pending_steps: list[int] = []  # their global steps
        self.ready = None         # a line's outputs in flight to the host, with its context
        self.last: dict = {}
        self.t_done = time.perf_counter()  # when the previous line's last step had finished

    def restart_clock(self):
        """After work outside the steps (an eval): the next line's time starts now."""
        self.t_done = time.perf_counter()

    def add(self, out, global_step: int):
        self.pending.append(out)
        self.pending_steps.append(global_step)

    def start_line(self, context: dict):
        for out in self.pending:
            for x in jax.tree.leaves(out):
                x.copy_to_host_async()
        self.flush()
        self.ready = (self.pending, self.pending_steps, context)
        self.pending, self.pending_steps = [], []

    def check(self):
        """Before a checkpoint write: NonFiniteLoss if any step so far was non-finite (waits
        for the steps in flight; the write would wait for them anyway)."""
        self.flush()
        if not self.skip_nonfinite:
            self._stop_if_nonfinite(jax.device_get([o["nonfinite"] for o in self.pending]),
                                    jax.device_get([o["loss"] for o in self.pending]),
                                    self.pending_steps)

    def _stop_if_nonfinite(self, flags, losses, steps):
        for flag, loss, step in zip(flags, losses, steps):
            if int(flag):
                raise NonFiniteLoss(step, float(loss))

    def flush(self):
        if self.ready is None:
            return
        outs, steps, c = self.ready
        self.ready = None
        outs = jax.device_get(outs)
        flags = [int(out["nonfinite"]) for out in outs]
        if self.skip_nonfinite:
            self.nonfinite_skipped += sum(flags)
        else:
            self._stop_if_nonfinite(flags, [out["loss"] for out in outs], steps)
        # The line's steps have finished now (reading their outputs waited for them): its
        # batch cost is device time, whatever the host dispatched ahead before an eval.
        now = time.perf_counter()
        c = {**c, "batch_cost": max(now - self.t_done, 1e-9) / c["steps"]}
        c["eta"] = c["steps_left"] * c["batch_cost"]
        self.t_done = now
        for out, flag in zip(outs, flags):
            if flag:  # a skipped update: its values would turn the medians into nan
                continue
            self.windows["loss"].append(float(out["loss"]))
            if self.summarize:
                for k, v in self.summarize(out["metric"]).items():
                    self.windows[k].append(v)
        last = {"lr": c["lr"]}
        last.update({k: float(np.median(w)) for k, w in self.windows.items()})
        self.last = last
        eta = datetime.timedelta(seconds=int(c["eta"]))
        if self.style == "ppdet":
            width = len(str(c["steps_per_epoch"]))
            meters = " ".join(f"{k}: {v:.6f}" for k, v in last.items() if k != "lr")
            line = (f"Epoch: [{c['epoch']}] [{c['epoch_step']:{width}d}/{c['steps_per_epoch']}] "
                    f"learning_rate: {c['lr']:.6f} {meters} eta: {eta} "
                    f"batch_cost: {c['batch_cost']:.4f} data_cost: {c['reader_cost']:.4f} "
                    f"ips: {self.per_card / c['batch_cost']:.4f} images/s")
        else:
            line = (f"epoch: [{c['epoch'] + 1}/{self.epoch_num}], global_step: {c['step']}, "
                    f"{_fmt(last)}, avg_reader_cost: {c['reader_cost']:.5f} s, "
                    f"avg_batch_cost: {c['batch_cost']:.5f} s, avg_samples: {self.per_card}, "
                    f"ips: {self.per_card / c['batch_cost']:.5f} samples/s, eta: {eta}")
        if c["skipped"]:
            line += f", skipped_images: {c['skipped']}"
        if self.nonfinite_skipped:
            line += f", nonfinite_skipped: {self.nonfinite_skipped}"
        log.info(line)
        if self.writer:
            for k, v in last.items():
                self.writer.add_scalar(f"train/{k}", v, c["step"])
            self.writer.add_scalar("train/ips_total", self.global_batch / c["batch_cost"],
                                   c["step"])


class NonFiniteLoss(RuntimeError):
    """A step's loss or gradients were inf or nan: training stops before that state is saved."""

    def __init__(self, step: int, loss: float, latest: str | None = None):
        self.step, self.loss, self.latest = step, loss, latest
        kept = (f"the latest checkpoint, {latest}, is intact (it precedes that step)" if latest
                else "no checkpoint had been saved")
        super().__init__(
            f"global_step {step}: the loss is {loss:g} or a gradient is inf / nan; training "
            f"stopped without saving that state, and {kept}. Lower the learning rate or check "
            f"the data and resume, or set Global.skip_nonfinite_updates: true to skip such "
            f"steps")


def enable_compilation_cache(g: dict, save_dir: str):
    """A restart of the run loads its compiled steps instead of compiling again.
    `Global.compilation_cache_dir`: auto (under the run directory), a path, or null (off);
    $JAX_COMPILATION_CACHE_DIR, when set, wins."""
    where = g.get("compilation_cache_dir", "auto")
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or not where:
        return
    path = os.path.join(save_dir, "compile_cache") if where == "auto" else str(where)
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))


def train(cfg: dict, mesh=None) -> dict:
    g = cfg["Global"]
    save_dir = g["save_model_dir"]
    setup_logging(save_dir, main=is_main())
    enable_compilation_cache(g, save_dir)
    if is_main():
        with open(os.path.join(save_dir, "config.yml"), "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)

    check_same_config(config_hash(cfg))
    if g.get("pretrained_model"):  # before anything is built: a wrong path fails at once
        g["pretrained_model"] = checkpoint.package_file(str(g["pretrained_model"]))
        checkpoint.check_pretrained(g["pretrained_model"],
                                    g.get("pretrained_key") or "Global.pretrained_model")

    # ---- mesh, data, model, optimizer ----
    comp = Components(cfg, mesh)
    mesh = comp.mesh
    log.info("devices: %d (%d per process x %d processes, backend %s)", mesh.size,
             jax.local_device_count(), jax.process_count(), jax.default_backend())
    train_loader = comp.loader("Train")
    eval_loader = comp.eval_loader() if cfg.get("Eval") else None
    steps_per_epoch = train_loader.steps_per_epoch
    epoch_num = int(g["epoch_num"])
    total_steps = steps_per_epoch * epoch_num
    if g.get("max_steps"):
        total_steps = min(total_steps, int(g["max_steps"]))
    image_shape = comp.image_shape or train_loader.load(0, 0)["image"].shape

    state, tx, schedule = comp.build_state(image_shape, steps_per_epoch)
    log.info("params: %d", count_params(state.params))
    log.info("global batch %d (%d per card), %d steps per epoch, %d steps in all",
             train_loader.global_batch, cfg["Train"]["loader"]["batch_size_per_card"],
             steps_per_epoch, total_steps)

    # ---- restore ----
    meta = {"global_step": 0, "best_metric": {}}
    resume = checkpoint.resume_source(save_dir, g.get("checkpoints"), g["auto_resume"])
    check_same_start(checkpoint.resolve(resume)[1] if resume else -1)
    identity = checkpoint.model_identity(
        cfg["Architecture"], getattr(getattr(comp.task, "charset", None), "characters", None))
    if resume:
        own = resume != g.get("checkpoints")
        advice = ("it is this run directory's own (Global.auto_resume): train in a new "
                  "Global.save_model_dir, or set Global.auto_resume: false" if own else
                  "Global.checkpoints resumes the same model; Global.pretrained_model starts "
                  "from another's weights (tensors of another shape skipped)")
        state, meta = checkpoint.restore(resume, state, comp.repl, identity, advice)
    elif g.get("pretrained_model"):
        loaded = checkpoint.load_pretrained(
            g["pretrained_model"], {"params": state.params, "batch_stats": state.batch_stats},
            comp.model, image_shape)
        state = state.replace(**loaded)
    # The data position is in samples, (epoch, samples into it), so it survives a change of
    # global batch; the step count, the schedule and the stop point follow it.
    old_batch = int(meta.get("global_batch", train_loader.global_batch))
    data_epoch = int(meta.get("data_epoch", meta["global_step"] // steps_per_epoch))
    data_offset = int(meta.get("data_offset",
                               (meta["global_step"] % steps_per_epoch) * old_batch))
    global_step = data_epoch * steps_per_epoch + data_offset // train_loader.global_batch
    state = state.replace(opt_state=with_schedule_step(state.opt_state, global_step))
    if resume and old_batch != train_loader.global_batch:
        log.info("resuming with global batch %d (was %d): epoch %d from sample %d, which is "
                 "step %d of %d here (it was step %d), lr %.6g", train_loader.global_batch,
                 old_batch, data_epoch + 1, data_offset, global_step, total_steps,
                 meta["global_step"], float(schedule(global_step)))
    state = jax.device_put(state, comp.repl)
    best = dict(meta.get("best_metric") or {})
    main_key = comp.task.main_indicator

    # one program per training phase (task.phase(epoch)) and batch shape, compiled ahead
    train_steps = CompiledSteps(lambda phase: comp.train_step(tx, phase=phase), state,
                                train_loader.batch_specs(comp.batch_sharding))
    if global_step < total_steps:
        train_steps.prepare(comp.task.phase(data_epoch))

    eval_step = comp.eval_step()
    eval_epochs = int(g.get("eval_epoch_step") or 0)
    cadence = checkpoint.Cadence(g.get("save_every_steps") or 0,
                                 g.get("save_every_minutes") or 0.0, start_step=global_step)
    preemption = Preemption()
    progress = Progress()
    writer = _tensorboard(save_dir) if is_main() and g["use_tensorboard"] else None
    per_card = int(cfg["Train"]["loader"]["batch_size_per_card"])
    train_log = TrainLog(g, per_card, train_loader.global_batch, epoch_num, writer,
                         comp.objective.summarize if comp.objective.has_metric else None,
                         comp.task.log_style)
    ckpt = checkpoint.Checkpointer(save_dir, before_write=train_log.check)

    def snapshot():
        return {"global_step": global_step, "best_metric": best, "data_epoch": data_epoch,
                "data_offset": data_offset, "global_batch": train_loader.global_batch,
                "model": identity}

    # ---- loop ----
    print_every = int(g["print_batch_step"])
    save_epochs = int(g["save_epoch_step"])
    skipped = 0
    bar = _progress(total_steps, global_step)
    epoch, offset = data_epoch, data_offset
    left = train_loader.steps_from(offset)
    wait_mark, steps_mark = 0.0, 0
    stream = None
    if global_step < total_steps and data_epoch < epoch_num:
        stream = train_loader.stream(data_epoch, data_offset, comp.batch_sharding,
                                     int(g["prefetch"]))
    try:
        for device, host in stream or ():
            if int(np.ravel(host["epoch"])[0]) != epoch:  # a resumed position, a batch left
                epoch, offset, left = int(np.ravel(host["epoch"])[0]), 0, steps_per_epoch
            state, out = train_steps(comp.task.phase(epoch), state, device)
            train_log.flush()  # the previous line's values, now that this step is queued
            train_log.add(out, global_step + 1)
            global_step += 1
            steps_mark += 1
            offset += train_loader.global_batch
            left -= 1
            end_of_epoch = left == 0
            if end_of_epoch:  # after a resume under another batch the epoch's last partial
                global_step = (epoch + 1) * steps_per_epoch  # step is dropped, as on a restart
            data_epoch, data_offset = (epoch + 1, 0) if end_of_epoch else (epoch, offset)
            skipped += int(np.sum(host["bad"]))
            progress.step(global_step)
            if bar:
                bar.update(1)
            finished = global_step >= total_steps
            if global_step % print_every == 0 or end_of_epoch or finished:
                train_log.start_line({
                    "epoch": epoch, "step": global_step, "lr": float(schedule(global_step - 1)),
                    "epoch_step": steps_per_epoch - left - 1,
                    "steps_per_epoch": steps_per_epoch, "steps": steps_mark,
                    "reader_cost": (stream.wait_s - wait_mark) / steps_mark,
                    "steps_left": total_steps - global_step, "skipped": skipped})
                wait_mark, steps_mark = stream.wait_s, 0
                ckpt.poll(state, snapshot())
            eval_now = _eval_due(global_step, g["eval_batch_step"]) or (
                end_of_epoch and eval_epochs > 0 and (epoch + 1) % eval_epochs == 0)
            if eval_loader is not None and eval_now:
                train_log.flush()
                cur = evaluate(comp, comp.eval_view(state), eval_step, eval_loader)
                log.info("cur metric, %s", _fmt(cur))
                if writer:
                    for k, v in cur.items():
                        writer.add_scalar(f"eval/{k}", v, global_step)
                if cur[main_key] >= best.get(main_key, -1.0):
                    best = {**cur, "best_epoch": epoch + 1, "global_step": global_step}
                    ckpt.save(state, snapshot(), kind="best")
                log.info("best metric, %s", _fmt(best))
                train_log.restart_clock()
            if end_of_epoch:
                ckpt.save(state, snapshot())  # latest, every epoch, as PaddleOCR
                if save_epochs > 0 and (epoch + 1) % save_epochs == 0:
                    ckpt.save(state, snapshot(), kind="snapshot")  # PaddleOCR's iter_epoch_N
                epoch, offset, left = epoch + 1, 0, steps_per_epoch
            elif cadence.due(global_step):
                ckpt.save(state, snapshot())
            if preemption.reached(global_step):
                log.warning("preempted at global_step %d: saving a checkpoint and exiting",
                            global_step)
                break
            if finished:
                break
        train_log.flush()
        ckpt.save(state, snapshot())
    except NonFiniteLoss as e:
        ckpt.close()  # the save in flight is of an earlier, checked state: let it finish
        raise NonFiniteLoss(e.step, e.loss, checkpoint.newest(save_dir)) from None
    finally:
        train_steps.close()
        if stream is not None:
            stream.close()
        train_loader.close()
        if eval_loader is not None:
            eval_loader.close()
    ckpt.close(state, snapshot())  # a failed last save is retried synchronously
    if bar:
        bar.close()
    if writer:
        writer.close()
    if skipped:
        log.info("unreadable images skipped during training: %d", skipped)
    log.info("training finished at global_step %d; checkpoints in %s", global_step, save_dir)
    return {"global_step": global_step, "state": state, "train": train_log.last, "best": best,
            "skipped_images": skipped, "dropped_labels": dict(train_loader.source.dropped)}


def _tensorboard(save_dir):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover
        log.info("tensorboardX not installed: no TensorBoard scalars")
        return None
    return SummaryWriter(os.path.join(save_dir, "tensorboard"))


def _progress(total, initial):
    if not (is_main() and sys.stderr.isatty()):
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)
