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

from jaxocr.data.charset import CharacterDict
from jaxocr.data.pipeline import Loader
from jaxocr.config import config_hash
from jaxocr.distributed import (Preemption, Progress, check_same_config, data_mesh, is_main,
                                local_rows, sum_across_processes)
from jaxocr.losses import build_loss
from jaxocr.metrics import build_metric
from jaxocr.models import build_model
from jaxocr.postprocess import ctc_greedy_decode, decode_labels
from jaxocr.training import checkpoint
from jaxocr.training.optimizer import build_optimizer
from jaxocr.training.step import (batch_sharding, count_params, create_state, init_variables,
                                  make_eval_step, make_train_step, replicated)

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
    """Everything built from a config that train, eval and infer share."""

    def __init__(self, cfg: dict, mesh=None):
        g = cfg["Global"]
        self.cfg = cfg
        self.mesh = mesh or data_mesh()
        self.charset = CharacterDict.from_config(g)
        head = cfg["Architecture"].setdefault("Head", {})
        if head.get("name", "CTCHead") == "CTCHead":
            head["out_channels"] = self.charset.num_classes
        self.dtype = jnp.bfloat16 if g["use_amp"] else jnp.float32
        self.model = build_model(cfg["Architecture"],
                                 bn_axis_name="data" if g["use_sync_bn"] else None,
                                 dtype=self.dtype, conv_impl=g["conv_impl"])
        self.repl = replicated(self.mesh)
        self.batch_sharding = batch_sharding(self.mesh)

    def build_state(self, image_shape, steps_per_epoch: int = 1):
        """A fresh train state and its optimizer: (state, tx, schedule)."""
        g = self.cfg["Global"]
        variables = init_variables(self.model, image_shape, int(g["seed"]))
        tx, schedule = build_optimizer(self.cfg.get("Optimizer") or {}, self.cfg["Architecture"],
                                       variables["params"], steps_per_epoch, int(g["epoch_num"]))
        return create_state(variables, tx, int(g["seed"])), tx, schedule

    def train_step(self, tx, sync_grads: bool = True):
        """The compiled data-parallel step for this config's model, loss and compute dtype."""
        return make_train_step(self.model, tx, build_loss(self.cfg.get("Loss")), self.mesh,
                               self.dtype, sync_grads=sync_grads)

    def restore_for_inference(self, image_shape):
        """Params and BN stats from `Global.checkpoints`, replicated over the mesh."""
        path = self.cfg["Global"].get("checkpoints") or self.cfg["Global"].get("pretrained_model")
        if not path:
            raise ValueError("set Global.checkpoints=DIR (a run directory, latest/ or best_accuracy/)")
        state, _, _ = self.build_state(image_shape)
        state, meta = checkpoint.restore(path, state, self.repl)
        return state, meta

    def eval_loader(self):
        return Loader(self.cfg, "Eval", self.charset, self.mesh)


def evaluate(comp: Components, state, eval_step, loader: Loader) -> dict:
    """Exact over the whole eval set: every process its shard, padding masked, sums reduced."""
    metric = build_metric(comp.cfg.get("Metric"))
    t0 = time.perf_counter()
    it = loader.batches(0, 0, comp.batch_sharding)
    for device, host in it:
        ids, probs = eval_step(state, device["image"])
        preds = ctc_greedy_decode(local_rows(ids), local_rows(probs), comp.charset)
        targets = decode_labels(host["label"], host["length"], comp.charset)
        metric.update([p for p, _ in preds], targets, host["mask"])
    elapsed = time.perf_counter() - t0
    metric.sums = sum_across_processes(metric.sums)
    n = metric.sums[2]
    result = {k: float(v) for k, v in metric.get_metric().items()}
    result["fps"] = float(n / max(elapsed, 1e-9))
    return result


def _eval_due(global_step: int, eval_batch_step) -> bool:
    if isinstance(eval_batch_step, (list, tuple)):
        start, every = int(eval_batch_step[0]), int(eval_batch_step[1])
    else:
        start, every = 0, int(eval_batch_step)
    return every > 0 and global_step > start and (global_step - start) % every == 0


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k}: {v:.6f}" if isinstance(v, float) else f"{k}: {v}"
                     for k, v in metrics.items())


def train(cfg: dict, mesh=None) -> dict:
    g = cfg["Global"]
    save_dir = g["save_model_dir"]
    setup_logging(save_dir, main=is_main())
    if is_main():
        with open(os.path.join(save_dir, "config.yml"), "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)

    check_same_config(config_hash(cfg))

    # ---- mesh, data, model, optimizer ----
    comp = Components(cfg, mesh)
    mesh = comp.mesh
    log.info("devices: %d (%d per process x %d processes, backend %s)", mesh.size,
             jax.local_device_count(), jax.process_count(), jax.default_backend())
    train_loader = Loader(cfg, "Train", comp.charset, mesh)
    eval_loader = comp.eval_loader() if cfg.get("Eval") else None
    steps_per_epoch = train_loader.steps_per_epoch
    epoch_num = int(g["epoch_num"])
    total_steps = steps_per_epoch * epoch_num
    if g.get("max_steps"):
        total_steps = min(total_steps, int(g["max_steps"]))
    image_shape = train_loader.load(0, 0)["image"].shape

    state, tx, schedule = comp.build_state(image_shape, steps_per_epoch)
    log.info("params: %d", count_params(state.params))
    log.info("global batch %d (%d per card), %d steps per epoch, %d steps in all",
             train_loader.global_batch, cfg["Train"]["loader"]["batch_size_per_card"],
             steps_per_epoch, total_steps)

    # ---- restore ----
    meta = {"global_step": 0, "best_metric": {}}
    resume = g.get("checkpoints")
    if not resume and g["auto_resume"] and checkpoint.has_checkpoint(save_dir):
        resume = save_dir
        log.info("auto_resume: continuing the run in %s", save_dir)
    if resume:
        state, meta = checkpoint.restore(resume, state, comp.repl)
    elif g.get("pretrained_model"):
        loaded = checkpoint.load_pretrained(
            g["pretrained_model"], {"params": state.params, "batch_stats": state.batch_stats})
        state = state.replace(**loaded)
    state = jax.device_put(state, comp.repl)
    global_step = int(meta["global_step"])
    best = dict(meta.get("best_metric") or {})
    main_key = (cfg.get("Metric") or {}).get("main_indicator", "acc")

    train_step = comp.train_step(tx)
    eval_step = make_eval_step(comp.model, mesh, comp.dtype)
    ckpt = checkpoint.Checkpointer(save_dir)
    preemption = Preemption()
    progress = Progress()
    writer = _tensorboard(save_dir) if is_main() and g["use_tensorboard"] else None
    train_metric = build_metric(cfg.get("Metric"))

    # Data position in samples, not steps, so it survives a change of global batch.
    data_epoch = int(meta.get("data_epoch", global_step // steps_per_epoch))
    data_offset = int(meta.get("data_offset",
                               (global_step % steps_per_epoch) * train_loader.global_batch))
    if meta.get("global_batch", train_loader.global_batch) != train_loader.global_batch:
        log.info("resuming with global batch %d (was %d): epoch %d from sample %d",
                 train_loader.global_batch, meta["global_batch"], data_epoch + 1, data_offset)

    def snapshot():
        return {"global_step": global_step, "best_metric": best, "data_epoch": data_epoch,
                "data_offset": data_offset, "global_batch": train_loader.global_batch}

    # ---- loop ----
    print_every = int(g["print_batch_step"])
    window = collections.deque(maxlen=int(g["log_smooth_window"]))
    pending_losses, skipped, stop = [], 0, global_step >= total_steps
    bar = _progress(total_steps, global_step)
    last = {}
    for epoch in range(data_epoch, epoch_num):
        if stop:
            break
        steps_left = train_loader.steps_from(data_offset)
        batches = train_loader.batches(epoch, data_offset, comp.batch_sharding,
                                       int(g["prefetch"]))
        t_mark, wait_mark, steps_mark = time.perf_counter(), 0.0, 0
        end_of_epoch = False
        for device, host in batches:
            state, out = train_step(state, device)
            global_step += 1
            steps_mark += 1
            steps_left -= 1
            end_of_epoch = steps_left == 0
            data_epoch, data_offset = ((epoch + 1, 0) if end_of_epoch else
                                       (epoch, data_offset + train_loader.global_batch))
            pending_losses.append(out["loss"])
            skipped += int(host["bad"].sum())
            progress.step(global_step)
            if bar:
                bar.update(1)
            if global_step % print_every == 0 or end_of_epoch or global_step >= total_steps:
                window.extend(np.asarray(jax.device_get(jnp.stack(pending_losses))).tolist())
                pending_losses = []
                now = time.perf_counter()
                batch_cost = (now - t_mark) / steps_mark
                reader_cost = (batches.wait_s - wait_mark) / steps_mark
                t_mark, wait_mark, steps_mark = now, batches.wait_s, 0
                last = {"lr": float(schedule(global_step - 1)), "loss": float(np.median(window))}
                if g["cal_metric_during_train"]:
                    preds = ctc_greedy_decode(local_rows(out["pred_ids"]),
                                              np.ones(out["pred_ids"].shape, np.float32),
                                              comp.charset)
                    rows = len(preds)
                    train_metric.update([p for p, _ in preds],
                                        decode_labels(host["label"][:rows], host["length"][:rows],
                                                      comp.charset))
                    last.update(train_metric.get_metric())
                per_card = cfg["Train"]["loader"]["batch_size_per_card"]
                eta = (total_steps - global_step) * batch_cost
                line = (f"epoch: [{epoch + 1}/{epoch_num}], global_step: {global_step}, "
                        f"{_fmt(last)}, avg_reader_cost: {reader_cost:.5f} s, "
                        f"avg_batch_cost: {batch_cost:.5f} s, avg_samples: {per_card}, "
                        f"ips: {per_card / batch_cost:.5f} samples/s, "
                        f"eta: {datetime.timedelta(seconds=int(eta))}")
                if skipped:
                    line += f", skipped_images: {skipped}"
                log.info(line)
                if writer:
                    for k, v in last.items():
                        writer.add_scalar(f"train/{k}", v, global_step)
                    writer.add_scalar("train/ips_total", train_loader.global_batch / batch_cost,
                                      global_step)
            if eval_loader is not None and _eval_due(global_step, g["eval_batch_step"]):
                cur = evaluate(comp, state, eval_step, eval_loader)
                log.info("cur metric, %s", _fmt(cur))
                if writer:
                    for k, v in cur.items():
                        writer.add_scalar(f"eval/{k}", v, global_step)
                if cur[main_key] >= best.get(main_key, -1.0):
                    best = {**cur, "best_epoch": epoch + 1, "global_step": global_step}
                    ckpt.save(state, snapshot(), best=True)
                log.info("best metric, %s", _fmt(best))
                t_mark = time.perf_counter()
            if preemption.reached(global_step):
                log.warning("preempted at global_step %d: checkpoint saved, exiting", global_step)
                stop = True
            if global_step >= total_steps:
                stop = True
            if stop:
                break
        batches.close()
        if not stop:  # also when a resumed position left less than a batch of this epoch
            data_epoch, data_offset = epoch + 1, 0
        save_every = int(g["save_epoch_step"])
        if end_of_epoch and save_every > 0 and (epoch + 1) % save_every == 0 and not stop:
            ckpt.save(state, snapshot())
    ckpt.save(state, snapshot())
    ckpt.close()
    if bar:
        bar.close()
    if writer:
        writer.close()
    if skipped:
        log.info("unreadable images skipped during training: %d", skipped)
    log.info("training finished at global_step %d; checkpoints in %s", global_step, save_dir)
    return {"global_step": global_step, "state": state, "train": last, "best": best,
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
