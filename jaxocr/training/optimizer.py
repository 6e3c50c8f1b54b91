"""Optimizer and learning-rate schedule from PaddleOCR's `Optimizer` section, via optax.

Schedules step once per iteration and count `steps_per_epoch` per card, as PaddleOCR does.
`regularizer: {name: L2, factor}` is coupled L2 (grad += factor * w) on every parameter that
has no regularizer of its own, as Paddle's optimizer applies it: BatchNorm and LayerNorm
scale and bias included (PaddleOCR's MobileNetV3, BiLSTM and SVTRNet create them without one).
The one override today is the CTC head's `fc_decay` (Paddle's CTCHead attaches
L2Decay(fc_decay), default 0.0004, to its weights and biases), matched by place in the module
tree: the model's `head` module (MultiHead: its `ctc_head`; see the heads' `l2_decay`). A
DistillationModel's rules apply under each member's name; a member with `freeze_params` is
not updated.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax



def build_schedule(lr_cfg, steps_per_epoch: int, epoch_num: int):
    """PaddleOCR's schedules, stepped per iteration, after an optional linear warm-up over
    `warmup_epoch` epochs (or `warmup_steps`) from `warmup_start_factor` x the rate (0, as
    PaddleOCR; PaddleDetection's LinearWarmup sets its start_factor). Cosine runs over `T_max`
    steps, the whole run by default, or, with `max_epochs` (PaddleDetection's CosineDecay), over
    that many epochs less the warm-up."""
    if not isinstance(lr_cfg, dict):  # `lr: 0.001`
        lr_cfg = {"learning_rate": lr_cfg}
    name = lr_cfg.get("name", "Const")
    base = float(lr_cfg.get("learning_rate", 0.001))
    total = steps_per_epoch * epoch_num
    if lr_cfg.get("warmup_steps") is not None:
        warmup = int(lr_cfg["warmup_steps"])
    else:
        warmup = round(float(lr_cfg.get("warmup_epoch", 0)) * steps_per_epoch)
    if name == "Const":
        inner = optax.constant_schedule(base)
    elif name == "Cosine":
        t_max = lr_cfg.get("T_max") or total
        if lr_cfg.get("max_epochs") is not None:
            t_max = max(1, round(float(lr_cfg["max_epochs"]) * steps_per_epoch) - max(warmup, 0))
        eta_min = float(lr_cfg.get("eta_min", 0.0))
        inner = lambda t: eta_min + (base - eta_min) * 0.5 * (1 + jnp.cos(jnp.pi * t / t_max))
    elif name == "Piecewise":
        boundaries = [int(e * steps_per_epoch) for e in lr_cfg["decay_epochs"]]
        values = [float(v) for v in lr_cfg["values"]]
        if len(values) != len(boundaries) + 1:
            raise ValueError("Optimizer.lr: Piecewise needs len(values) == len(decay_epochs) + 1")
        inner = piecewise(boundaries, values)
        base = values[0]  # PaddleOCR's warmup for Piecewise ends at values[0]
    elif name == "Linear":
        end_lr = float(lr_cfg.get("end_lr", 0.0))
        inner = optax.polynomial_schedule(base, end_lr, float(lr_cfg.get("power", 1.0)), total)
    elif name == "Step":
        inner = optax.exponential_decay(base, int(lr_cfg["step_size"] * steps_per_epoch),
                                        float(lr_cfg.get("gamma", 0.1)), staircase=True)
    else:
        raise ValueError(f"Optimizer.lr.name: unknown schedule {name!r}; known: "
                         "Const, Cosine, Piecewise, Linear, Step")
    if warmup <= 0:
        return inner
    ramp = optax.linear_schedule(float(lr_cfg.get("warmup_start_factor", 0.0)) * base, base,
                                 warmup)
    return optax.join_schedules([ramp, inner], [warmup])


def piecewise(boundaries: list[int], values: list[float]):
    """values[k] from boundaries[k-1] on (zeros allowed: no ratios between values)."""
    bounds, vals = jnp.asarray(boundaries), jnp.asarray(values, jnp.float32)
    return lambda t: vals[jnp.sum(jnp.asarray(t) >= bounds)]


def _key(entry) -> str:
    return str(getattr(entry, "key", entry))


def model_parts(arch_cfg: dict) -> list[tuple[tuple, dict, bool]]:
    """(place in the parameter tree, Architecture, frozen) of each model: the one model at
    the root, or a DistillationModel's members under their names."""
    if arch_cfg.get("name") != "DistillationModel":
        return [((), arch_cfg, False)]
    from jaxocr.models import distillation_members
    return [((name,), cfg, bool(cfg.get("freeze_params", False)))
            for name, cfg in distillation_members(arch_cfg).items()]


def _head_rules(arch_cfg: dict) -> list[tuple[tuple, float]]:
    """(place, factor) of the heads' own L2 factors: under the Head part (BaseModel's `head`
    attribute, not any name containing 'head': SVTR's STN has a `stn_head`)."""
    from jaxocr.models import part_class
    rules = []
    for prefix, cfg, _ in model_parts(arch_cfg):
        head = cfg.get("Head")
        if isinstance(head, dict) and "name" in head:
            cls = part_class("Head", head, cfg.get("model_type", "rec"))
            for sub, factor in getattr(cls, "l2_decay", lambda _: {})(head).items():
                rules.append(((*prefix, "head", *sub), float(factor)))
    return rules


def _norm_layers(params) -> set:
    """Paths of the normalisation layers' parameter dicts (those holding a `scale`)."""
    found = set()

    def visit(node, path):
        if isinstance(node, dict):
            if "scale" in node and not isinstance(node["scale"], dict):
                found.add(path)
            for k, v in node.items():
                visit(v, (*path, k))

    visit(params, ())
    return found


def l2_factors(params, opt_cfg: dict, arch_cfg: dict):
    """Per-parameter coupled-L2 factor, PaddleOCR's ParamAttr precedence. `norm_factor`: the
    factor of every BatchNorm / LayerNorm scale and bias (PaddleDetection's ConvBNLayers give
    theirs L2Decay(0.0)); the regularizer's own factor when absent, as PaddleOCR."""
    reg = opt_cfg.get("regularizer") or {}
    base = float(reg.get("factor", 0.0)) if reg.get("name", "L2") in ("L2", "l2") else 0.0
    norm = reg.get("norm_factor")
    norms = _norm_layers(params) if norm is not None else set()
    # a head's own L2Decay (CTCHead's fc_decay) holds whether or not the config names it, and
    # Paddle applies a parameter's own regularizer under every optimizer, AdamW included
    rules = _head_rules(arch_cfg)

    def factor(path, _):
        keys = tuple(_key(k) for k in path)
        own = next((f for place, f in rules if keys[:len(place)] == place), None)
        if own is not None:
            return own
        if norms and keys[:-1] in norms:
            return float(norm)
        return base

    return jax.tree_util.tree_map_with_path(factor, params)


PART_ATTRS = {"Transform": "transform", "Backbone": "backbone", "Neck": "neck", "Head": "head"}


def lr_multipliers(params, arch_cfg: dict):
    """Per-parameter learning-rate factors (Paddle's ParamAttr(learning_rate=...)), or None when
    every one is 1: a part class may declare `lr_multipliers(cfg) -> {sub-module name: factor}`
    (TPS: `loc_lr` on its localisation network), matched under that part's place in the model;
    a frozen distillation member's are 0."""
    from jaxocr.models import part_class
    rules = []  # (place of the part, sub-module name or None for all of it, factor)
    for prefix, cfg, frozen in model_parts(arch_cfg):
        if frozen:
            rules.append((prefix, None, 0.0))
            continue
        for section, attr in PART_ATTRS.items():
            part = cfg.get(section)
            cls = part_class(section, part, cfg.get("model_type", "rec")) if part else None
            for sub, factor in getattr(cls, "lr_multipliers", lambda _: {})(part).items():
                rules.append(((*prefix, attr), sub, factor))
    if not any(f != 1.0 for *_, f in rules):
        return None

    def factor(path, _):
        keys = tuple(_key(k) for k in path)
        return next((f for place, sub, f in rules if keys[:len(place)] == place and (
            sub is None or sub in keys[len(place):])), 1.0)

    return jax.tree_util.tree_map_with_path(factor, params)


def scale_each(factors) -> optax.GradientTransformation:
    """Each update times its parameter's factor (after the optimizer: Paddle scales the rate)."""
    def update(updates, state, params=None):
        return jax.tree.map(lambda u, f: u * f, updates, factors), state
    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def coupled_l2(factors) -> optax.GradientTransformation:
    def update(updates, state, params):
        return jax.tree.map(lambda g, p, f: g + f * p if f else g, updates, params, factors), state
    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def clip_each_by_norm(max_norm: float) -> optax.GradientTransformation:
    """Paddle's ClipGradByNorm: each tensor clipped by its own L2 norm."""
    def update(updates, state, params=None):
        def clip(g):
            norm = jnp.sqrt(jnp.sum(jnp.square(g)))
            return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
        return jax.tree.map(clip, updates), state
    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def _decay_mask(params, opt_cfg):
    names = (opt_cfg.get("no_weight_decay_name") or "").split()
    one_dim = opt_cfg.get("one_dim_param_no_weight_decay", False)

    def decays(path, p):
        joined = "/".join(_key(k) for k in path)
        return not (any(n in joined for n in names) or (one_dim and p.ndim == 1))

    return jax.tree_util.tree_map_with_path(decays, params)


def build_optimizer(opt_cfg: dict, arch_cfg: dict, params, steps_per_epoch: int, epoch_num: int):
    """Returns (optax transformation, schedule)."""
    schedule = build_schedule(opt_cfg.get("lr", {"learning_rate": 0.001}), steps_per_epoch, epoch_num)
    name = opt_cfg.get("name", "Adam")
    chain = []
    if opt_cfg.get("clip_norm") is not None:
        chain.append(clip_each_by_norm(float(opt_cfg["clip_norm"])))
    if opt_cfg.get("clip_norm_global") is not None:
        chain.append(optax.clip_by_global_norm(float(opt_cfg["clip_norm_global"])))
    factors = l2_factors(params, opt_cfg, arch_cfg)
    if any(jax.tree.leaves(factors)):
        chain.append(coupled_l2(factors))
    b1, b2 = float(opt_cfg.get("beta1", 0.9)), float(opt_cfg.get("beta2", 0.999))
    eps = float(opt_cfg.get("epsilon", 1e-8))
    if name == "Adam":
        chain.append(optax.adam(schedule, b1=b1, b2=b2, eps=eps))
    elif name == "AdamW":
        chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps,
                                 weight_decay=float(opt_cfg.get("weight_decay", 0.01)),
                                 mask=_decay_mask(params, opt_cfg)))
    elif name == "Momentum":
        chain.append(optax.sgd(schedule, momentum=float(opt_cfg.get("momentum", 0.9))))
    elif name == "SGD":
        chain.append(optax.sgd(schedule))
    else:
        raise ValueError(f"Optimizer.name: unknown optimizer {name!r}; known: Adam, AdamW, Momentum, SGD")
    multipliers = lr_multipliers(params, arch_cfg)
    if multipliers is not None:
        chain.append(scale_each(multipliers))
    return optax.chain(*chain), schedule


def steps_per_epoch(num_samples: int, global_batch: int, drop_last: bool = True) -> int:
    return num_samples // global_batch if drop_last else math.ceil(num_samples / global_batch)


def with_schedule_step(opt_state, step: int):
    """`opt_state` with every schedule counter set to `step`: after a resume under another
    global batch the schedule follows the samples seen (Adam's bias-correction count stays)."""
    def reset(node):
        if isinstance(node, optax.ScaleByScheduleState):
            return node._replace(count=jnp.full_like(node.count, step))
        return node
    return jax.tree.map(reset, opt_state,
                        is_leaf=lambda n: isinstance(n, optax.ScaleByScheduleState))
