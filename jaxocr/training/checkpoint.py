"""Orbax checkpoints: `save_model_dir/latest/` and `save_model_dir/best_accuracy/`.

Two managers, so that keeping the best never deletes the newest. A checkpoint holds the whole
train state (params, BN stats, optimizer state with the schedule position, step, RNG) and a
JSON of loop metadata: global step, best metric, and the data position as (epoch, samples into
it), so a run resumes at the same sample under another global batch.
"""
from __future__ import annotations

import logging
import os

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("jaxocr")

LATEST, BEST = "latest", "best_accuracy"


class Checkpointer:
    def __init__(self, save_dir: str):
        self.save_dir = os.path.abspath(save_dir)
        options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=True,
                                               create=True)
        self.latest = ocp.CheckpointManager(os.path.join(self.save_dir, LATEST), options=options)
        self.best = ocp.CheckpointManager(os.path.join(self.save_dir, BEST), options=options)

    def save(self, state, meta: dict, best: bool = False):
        step = int(meta["global_step"])
        manager = self.best if best else self.latest
        # one save in flight at a time: two managers saving the same step concurrently can
        # cross their multi-process barriers and deadlock
        self.wait()
        if step in manager.all_steps():
            return
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
            meta=ocp.args.JsonSave(meta)))

    def wait(self):
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self):
        self.wait()
        self.latest.close()
        self.best.close()


def resolve(path: str) -> tuple[str, int]:
    """`Global.checkpoints` may name a run directory (its latest), `.../latest`,
    `.../best_accuracy`, or one step directory inside them. Returns (manager dir, step)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(os.path.join(path, LATEST)):
        path = os.path.join(path, LATEST)
    base = os.path.basename(path)
    if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
        return os.path.dirname(path), int(base)
    steps = sorted(int(d) for d in os.listdir(path)
                   if d.isdigit() and os.path.isdir(os.path.join(path, d, "state")))
    if not steps:
        raise FileNotFoundError(f"no checkpoint steps under {path}")
    return path, steps[-1]


def has_checkpoint(run_dir: str) -> bool:
    try:
        resolve(run_dir)
        return True
    except FileNotFoundError:
        return False


def restore(path: str, state, sharding) -> tuple[object, dict]:
    """Restore the full train state onto `sharding` (any process/device layout)."""
    directory, step = resolve(path)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding),
                          flax.serialization.to_state_dict(state))
    with ocp.CheckpointManager(directory) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    log.info("resumed from %s (global_step %d)", os.path.join(directory, str(step)),
             restored["meta"]["global_step"])
    return flax.serialization.from_state_dict(state, restored["state"]), dict(restored["meta"])


def read_state(path: str) -> dict:
    """A checkpoint's state as host arrays, whatever process/device layout saved it."""
    directory, step = resolve(path)
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
        saved = manager.item_metadata(step)["state"]
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                              saved)
        state = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"]
    return jax.device_get(state)


def load_pretrained(source: str, variables: dict) -> dict:
    """Weights only (`params` and `batch_stats`), as PaddleOCR's `pretrained_model`: entries
    missing or of another shape are reported and left as initialised."""
    state = read_state(source)
    loaded = {k: state.get(k, {}) for k in variables}
    flat_loaded = {jax.tree_util.keystr(k): v for k, v in
                   jax.tree_util.tree_flatten_with_path(loaded)[0]}
    skipped = []

    def pick(path, current):
        key = jax.tree_util.keystr(path)
        value = flat_loaded.get(key)
        if value is None or np.shape(value) != np.shape(current):
            skipped.append(f"{key} {np.shape(current)} vs "
                           f"{'missing' if value is None else np.shape(value)}")
            return current
        return np.asarray(value, dtype=current.dtype)

    variables = jax.tree_util.tree_map_with_path(pick, variables)
    log.info("loaded pretrained weights from %s (%d tensors skipped)", source, len(skipped))
    for line in skipped:
        log.warning("pretrained: skipped %s", line)
    return variables
