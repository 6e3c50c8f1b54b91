"""The compiled train and eval steps.

Train step: `jit(shard_map(...))` over the 'data' mesh axis. Each device computes loss and
gradients on its own slice of the global batch; then ONE `lax.pmean` averages gradients, BN
running statistics and the loss, flattened into a single buffer (Horovod's model). Plain `jit`
over a sharded batch is avoided on purpose: XLA's SPMD partitioner then places an all-reduce of
the LSTM gradients inside the backward scan loop (~160 collectives per step).
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxocr.distributed import AXIS

try:  # jax >= 0.7 exports shard_map at the top level
    from jax import shard_map as _shard_map

    def shard_map(f, mesh, in_specs, out_specs):
        return _shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
except ImportError:  # pragma: no cover
    from jax.experimental.shard_map import shard_map as _shard_map

    def shard_map(f, mesh, in_specs, out_specs):
        return _shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    rng: jax.Array
    ema: dict | None = None  # PaddleDetection's ModelEMA: {"params", "batch_stats"} (see ema_*)


EMA_WARMUP = 10  # ModelEMA 'threshold': decay = min(ema_decay, (1 + step) / (10 + step))


def ema_decay_at(step, decay: float):
    return jnp.minimum(decay, (1.0 + step) / (EMA_WARMUP + step))


def ema_init(variables: dict) -> dict:
    """ModelEMA's state: zeros of the weights and the BN statistics."""
    return jax.tree.map(jnp.zeros_like, {"params": variables["params"],
                                         "batch_stats": variables.get("batch_stats", {})})


def ema_update(ema: dict, params, batch_stats, step, decay: float) -> dict:
    """One ModelEMA.update after optimizer step `step` (0-based): v = d v + (1 - d) w."""
    d = ema_decay_at(step.astype(jnp.float32), decay)
    new = {"params": params, "batch_stats": batch_stats}
    return jax.tree.map(lambda v, w: d * v + (1.0 - d) * w.astype(jnp.float32), ema, new)


def ema_weights(ema: dict, steps, decay: float) -> dict:
    """ModelEMA.apply after `steps` updates: v / (1 - d ** steps), d the last update's decay
    (Paddle's bias correction); the weights themselves before any update."""
    steps = jnp.asarray(steps, jnp.float32)
    d = ema_decay_at(jnp.maximum(steps - 1.0, 0.0), decay)
    return jax.tree.map(lambda v: v / (1.0 - d ** jnp.maximum(steps, 1.0)), ema)


def init_variables(model, image_shape, seed: int) -> dict:
    """Initialise on the host with a batch of one; params float32."""
    init = jax.jit(lambda rng, x: model.init(rng, x, train=False))  # eager init is slow
    return init(jax.random.PRNGKey(seed), jnp.zeros((1, *image_shape), jnp.float32))


def create_state(variables: dict, tx, seed: int, use_ema: bool = False) -> TrainState:
    def fresh(variables):
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=tx.init(params), rng=jax.random.PRNGKey(seed + 1),
                          ema=ema_init(variables) if use_ema else None)
    return jax.jit(fresh)(variables)  # one program, not one per optimizer-state shape


def eval_view(state: TrainState, ema_decay: float) -> TrainState:
    """The state eval, `best` and inference use: the EMA weights when the run keeps them."""
    if state.ema is None:
        return state
    w = ema_weights(state.ema, state.step, ema_decay)
    return state.replace(params=w["params"], batch_stats=w["batch_stats"])


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def pmean_flat(tree, axis_name=AXIS):
    """All-reduce a whole pytree as one contiguous buffer: one collective, not one per leaf."""
    flat, unravel = ravel_pytree(tree)
    return unravel(jax.lax.pmean(flat, axis_name))


def make_train_step(model, tx, objective, mesh, dtype=jnp.float32, sync_grads: bool = True,
                    ema_decay: float = 0.9998, skip_nonfinite: bool = False):
    """Returns step(state, batch) -> (state, out).

    `objective` is the task's part of the step (tasks/rec.py's CTCObjective, tasks/det.py's
    DBObjective): `inputs(batch, dtype)` the model's input, `targets(batch)` what else the
    model trains on (PP-OCRv3's SAR labels) or None, and
    `loss(outputs, batch, mask) -> (loss, share, metric)`: this device's loss, its `share`
    of the real rows (the gradients are divided by the mean share over devices, which
    travels in the same all-reduce; the *summed* share is floored at the objective's
    `share_floor`: PP-YOLOE's assigned-scores sum, clipped at 1) and a fixed-size vector for
    the log (metric sums or loss parts), or None. A state with `ema` updates it after the
    optimizer step (PaddleDetection's ModelEMA, `ema_decay`). out["loss"] is the loss averaged over the global batch and
    out["metric"] the metric vector averaged over devices (zeros(1) without one).

    Rows with `mask` 0 (padding of a last partial batch) add nothing. A recogniser's loss is
    its masked per-row sum over the device's rows (share: the fraction of real rows), so the
    result is the mean over the real rows of the global batch; a detector's is PaddleOCR's
    per-card ratio (share 1 on a device with any real row), so the result is the mean over
    devices, as Paddle's DataParallel averages its cards' gradients.

    `sync_grads=False` all-reduces only the loss, after the backward pass: devices then train
    apart but still run in lockstep. The scaling benchmark uses it to separate the cost of
    running in step from the cost of moving the gradients.

    out["nonfinite"] is 1 where the averaged loss or any averaged gradient is inf or nan (the
    same on every device: it is read after the all-reduce). The loop stops on it; with
    `skip_nonfinite` such a step leaves weights, BN statistics, optimizer state and EMA as they
    were (only the step count moves on), and the loop counts it.
    """

    share_floor = float(objective.share_floor) / mesh.size  # on the mean over devices

    def per_device(state: TrainState, batch):
        images = objective.inputs(batch, dtype)
        mask = batch.get("mask")
        mask = jnp.ones(images.shape[0]) if mask is None else mask.astype(jnp.float32)

        targets = objective.targets(batch)
        extra = {} if targets is None else {"targets": targets}

        def compute_loss(params):
            outputs, updated = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, images, train=True,
                mutable=["batch_stats"], **extra,
                rngs={"dropout": jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                                                    jax.lax.axis_index(AXIS))})
            loss, share, metric = objective.loss(outputs, batch, mask)
            return loss, (share, metric, updated.get("batch_stats", {}))

        (loss, (share, metric, batch_stats)), grads = jax.value_and_grad(
            compute_loss, has_aux=True)(state.params)
        metric = jnp.zeros(1) if metric is None else jax.lax.stop_gradient(metric)
        if sync_grads:
            grads, batch_stats, loss, share, metric = pmean_flat(
                (grads, batch_stats, loss, share, metric))
        else:  # a scalar that needs every gradient, so the wait sits where the all-reduce would
            ready = sum(g.reshape(-1)[0] for g in jax.tree.leaves(grads))
            loss = jax.lax.pmean(jnp.stack([loss, ready]), AXIS)[0]
        share = jnp.maximum(share, share_floor)
        finite = jnp.isfinite(loss / share) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        grads = jax.tree.map(lambda g: g / share, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            ema = ema_update(ema, params, batch_stats, state.step, ema_decay)
        new_state = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state,
                                  ema=ema)
        if skip_nonfinite:
            new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                                     state)
        new_state = new_state.replace(step=state.step + 1)
        return new_state, {"loss": loss / share, "metric": metric,
                           "nonfinite": (~finite).astype(jnp.int32)}

    sharded = shard_map(per_device, mesh, in_specs=(P(), P(AXIS)),
                        out_specs=(P(), {"loss": P(), "metric": P(), "nonfinite": P()}))
    return jax.jit(sharded, donate_argnums=(0,))


def make_eval_step(model, mesh, objective, dtype=jnp.float32):
    """Forward in eval mode on a batch; returns `objective.predictions(outputs, batch)` (arrays
    sharded on 'data': a recogniser's best path, a detector's probability map)."""

    def per_device(state: TrainState, batch):
        outputs = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                              objective.inputs(batch, dtype), train=False)
        return objective.predictions(outputs, batch)

    sharded = shard_map(per_device, mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS))
    return jax.jit(sharded)


def replicated(mesh):
    return NamedSharding(mesh, P())


def batch_sharding(mesh):
    return NamedSharding(mesh, P(AXIS))

