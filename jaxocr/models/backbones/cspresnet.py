"""CSPResNet, PP-YOLOE's backbone (PaddleDetection ``ppdet/modeling/backbones/cspresnet.py``,
release/2.7.1), and the RepVGG re-parameterisation ``fuse_repvgg``.

Blocks (as Paddle's):

* ``ConvBNLayer``: conv (no bias) -> BN -> act, with the act names Paddle's ``get_act_fn``
  knows here ('swish' = x * sigmoid(x), 'hardsigmoid' = clip(x / 6 + 0.5, 0, 1), ...).
* ``RepVggBlock``: act(BN(conv3x3(x)) + [alpha *] BN(conv1x1(x))); with ``deploy`` one 3x3 conv
  with bias (``conv``), the form ``fuse_repvgg`` converts trained variables to.
* ``BasicBlock``: RepVgg(ConvBN3x3(x)) [+ x].
* ``EffectiveSELayer``: x * hardsigmoid(fc(mean_HW(x))), fc a 1x1 conv with bias.
* ``CSPResStage``: ConvBN 3x3 s2 -> mid = (in + out) // 2; concat(ConvBN1x1(x),
  blocks(ConvBN1x1(x))) -> ESE -> ConvBN1x1 -> out.

``CSPResNet`` scales ``channels`` by ``width_mult`` and ``layers`` by ``depth_mult`` (round, at
least 1) and returns the outputs of the stages in ``return_idx`` (stage i at stride 4 * 2**i):
for PP-YOLOE-s (width 0.5, depth 0.33) [C3, C4, C5] with 128, 256, 512 channels at strides 8, 16,
32.  Defaults are PaddleDetection's ``configs/ppyoloe/_base_/ppyoloe_crn.yml`` (where it differs
from the code defaults: ``use_large_stem`` True); the multipliers default to 1.0 (the l model)
as in Paddle, the s config sets 0.5 / 0.33.

Sub-module names mirror Paddle's state-dict keys with the dots of ``nn.Sequential`` /
``nn.LayerList`` indices written as ``_`` (``stages.1.blocks.0.conv2.conv1.bn`` ->
``stages_1/blocks_0/conv2/conv1/bn``; ``stem.conv1`` -> ``stem_conv1``), so converted weights map
one to one: conv ``kernel`` = Paddle ``weight.transpose(2, 3, 1, 0)``, BN scale/bias/mean/var =
weight/bias/_mean/_variance.  Input NHWC.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.core import freeze, unfreeze

from jaxocr.models.layers import Conv, batch_norm, get_activation, hardsigmoid

Array = jax.Array

BN_EPS = 1e-5  # Paddle BatchNorm2D's default epsilon, the one ``batch_norm`` uses


def swish(x: Array) -> Array:
    """Paddle ``F.swish`` / ``F.silu``: x * sigmoid(x)."""
    return x * jax.nn.sigmoid(x)


def paddle_hardsigmoid(x: Array) -> Array:
    """Paddle ``F.hardsigmoid`` with its defaults (slope 0.1666667, offset 0.5), as ESE uses."""
    return hardsigmoid(x, slope=0.1666667, offset=0.5)


_ACTS: dict[str, Callable[[Array], Array]] = {
    "swish": swish, "silu": swish, "hardsigmoid": paddle_hardsigmoid,
    "sigmoid": jax.nn.sigmoid, "leaky": lambda x: jax.nn.leaky_relu(x, 0.1),
}


def get_act(name: str | None) -> Callable[[Array], Array]:
    """Activations by PaddleDetection's names (``get_act_fn``); others as ``layers``."""
    if name in _ACTS:
        return _ACTS[name]
    return get_activation(name)


class ConvBNLayer(nn.Module):
    """Paddle cspresnet ``ConvBNLayer``: Conv (no bias) -> BN -> act (None: identity)."""

    out_channels: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 0
    act: str | None = None
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = Conv(self.out_channels, self.kernel_size, self.stride, self.padding,
                 use_bias=False, impl=self.conv_impl, dtype=self.dtype, name="conv")(x)
        x = batch_norm(train, self.bn_axis_name, self.dtype, name="bn")(x)
        return get_act(self.act)(x)


class RepVggBlock(nn.Module):
    """act(BN(conv3x3 x) + [alpha *] BN(conv1x1 x)) (``conv1``, ``conv2``, scalar ``alpha``
    init 1.0 when ``alpha``); ``deploy``: act(conv3x3_bias x) (``conv``), see ``fuse_repvgg``.
    In Paddle ``convert_to_deploy`` keeps ``alpha`` (unused) after fusing; here it goes."""

    out_channels: int
    act: str | None = "relu"
    alpha: bool = False
    deploy: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        c = self.out_channels
        if self.deploy:
            y = Conv(c, 3, 1, 1, use_bias=True, impl=self.conv_impl, dtype=self.dtype,
                     name="conv")(x)
        else:
            kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
            y3 = ConvBNLayer(c, 3, 1, 1, act=None, name="conv1", **kw)(x, train)
            y1 = ConvBNLayer(c, 1, 1, 0, act=None, name="conv2", **kw)(x, train)
            if self.alpha:
                a = self.param("alpha", nn.initializers.ones, (1,), jnp.float32)
                y1 = a.astype(y1.dtype) * y1
            y = y3 + y1
        return get_act(self.act)(y)


class BasicBlock(nn.Module):
    """``conv2(conv1(x))`` [+ x]: conv1 a ConvBN 3x3 with act, conv2 a RepVggBlock."""

    out_channels: int
    act: str | None = "relu"
    shortcut: bool = True
    use_alpha: bool = False
    deploy: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if x.shape[-1] != self.out_channels:
            raise ValueError(f"BasicBlock needs in == out channels, got {x.shape[-1]} -> "
                             f"{self.out_channels}")
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        y = ConvBNLayer(self.out_channels, 3, 1, 1, act=self.act, name="conv1", **kw)(x, train)
        y = RepVggBlock(self.out_channels, act=self.act, alpha=self.use_alpha,
                        deploy=self.deploy, name="conv2", **kw)(y, train)
        return x + y if self.shortcut else y


class EffectiveSELayer(nn.Module):
    """x * act(fc(mean over H, W of x)), fc a 1x1 conv C -> C with bias (CenterMask's eSE)."""

    act: str = "hardsigmoid"
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = Conv(c, 1, use_bias=True, impl=self.conv_impl, dtype=self.dtype, name="fc")(s)
        return x * get_act(self.act)(s)


class CSPResStage(nn.Module):
    """Paddle ``CSPResStage`` with ``BasicBlock`` (shortcut on), stride 2, ESE attention."""

    out_channels: int
    num_blocks: int
    stride: int = 2
    act: str | None = "relu"
    attn: str | None = "eca"  # any truthy value: EffectiveSELayer, as in Paddle
    use_alpha: bool = False
    deploy: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        mid = (x.shape[-1] + self.out_channels) // 2
        if self.stride == 2:
            x = ConvBNLayer(mid, 3, 2, 1, act=self.act, name="conv_down", **kw)(x, train)
        elif x.shape[-1] != mid:  # Paddle would fail here too (conv1 expects ch_mid inputs)
            raise ValueError(f"CSPResStage with stride 1 needs in == mid channels, got "
                             f"{x.shape[-1]} vs {mid}")
        y1 = ConvBNLayer(mid // 2, 1, 1, 0, act=self.act, name="conv1", **kw)(x, train)
        y2 = ConvBNLayer(mid // 2, 1, 1, 0, act=self.act, name="conv2", **kw)(x, train)
        for i in range(self.num_blocks):
            y2 = BasicBlock(mid // 2, act=self.act, shortcut=True, use_alpha=self.use_alpha,
                            deploy=self.deploy, name=f"blocks_{i}", **kw)(y2, train)
        y = jnp.concatenate([y1, y2], axis=-1)
        if self.attn:
            y = EffectiveSELayer("hardsigmoid", conv_impl=self.conv_impl, dtype=self.dtype,
                                 name="attn")(y)
        return ConvBNLayer(self.out_channels, 1, 1, 0, act=self.act, name="conv3", **kw)(y, train)


def scaled_channels(channels: Sequence[int], width_mult: float) -> list[int]:
    """Paddle: ``max(round(c * width_mult), 1)`` (Python's round: half to even)."""
    return [max(round(c * width_mult), 1) for c in channels]


def scaled_layers(layers: Sequence[int], depth_mult: float) -> list[int]:
    return [max(round(n * depth_mult), 1) for n in layers]


class CSPResNet(nn.Module):
    """PP-YOLOE's backbone; returns the list of the ``return_idx`` stages' outputs (NHWC)."""

    layers: Sequence[int] = (3, 6, 6, 3)
    channels: Sequence[int] = (64, 128, 256, 512, 1024)
    act: str = "swish"
    return_idx: Sequence[int] = (1, 2, 3)
    use_large_stem: bool = True
    width_mult: float = 1.0
    depth_mult: float = 1.0
    use_alpha: bool = False
    deploy: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @property
    def out_channels(self) -> list[int]:
        ch = scaled_channels(self.channels, self.width_mult)[1:]
        return [ch[i] for i in self.return_idx]

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> list[Array]:
        ch = scaled_channels(self.channels, self.width_mult)
        layers = scaled_layers(self.layers, self.depth_mult)
        if len(layers) != len(ch) - 1:
            raise ValueError(f"CSPResNet: {len(layers)} layers for {len(ch) - 1} stages")
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        x = ConvBNLayer(ch[0] // 2, 3, 2, 1, act=self.act, name="stem_conv1", **kw)(x, train)
        if self.use_large_stem:
            x = ConvBNLayer(ch[0] // 2, 3, 1, 1, act=self.act, name="stem_conv2", **kw)(x, train)
            x = ConvBNLayer(ch[0], 3, 1, 1, act=self.act, name="stem_conv3", **kw)(x, train)
        else:
            x = ConvBNLayer(ch[0], 3, 1, 1, act=self.act, name="stem_conv2", **kw)(x, train)
        outs = []
        for i in range(len(ch) - 1):
            x = CSPResStage(ch[i + 1], layers[i], 2, act=self.act, use_alpha=self.use_alpha,
                            deploy=self.deploy, name=f"stages_{i}", **kw)(x, train)
            if i in self.return_idx:
                outs.append(x)
        return outs


# --------------------------------------------------------------------------- RepVGG fusion


def _is_convbn(params: Any, batch_stats: Any, k: int) -> bool:
    try:
        kernel = params["conv"]["kernel"]
    except (KeyError, TypeError):
        return False
    return (set(params) == {"conv", "bn"} and set(params["conv"]) == {"kernel"}
            and kernel.ndim == 4 and tuple(kernel.shape[:2]) == (k, k)
            and isinstance(batch_stats, dict) and "bn" in batch_stats)


def _is_repvgg(params: Any, batch_stats: Any) -> bool:
    if not isinstance(params, dict) or not {"conv1", "conv2"} <= set(params) or not (
            set(params) <= {"conv1", "conv2", "alpha"}):
        return False
    if not isinstance(batch_stats, dict):
        return False
    return (_is_convbn(params["conv1"], batch_stats.get("conv1"), 3)
            and _is_convbn(params["conv2"], batch_stats.get("conv2"), 1))


def _fuse_bn(p: dict, s: dict) -> tuple[Array, Array]:
    """(kernel * gamma / std, beta - mean * gamma / std), std = sqrt(var + eps) (Paddle's
    ``_fuse_bn_tensor``; the kernel's output channels are its last axis here)."""
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    t = f32(p["bn"]["scale"]) / jnp.sqrt(f32(s["bn"]["var"]) + BN_EPS)
    return f32(p["conv"]["kernel"]) * t, f32(p["bn"]["bias"]) - f32(s["bn"]["mean"]) * t


def fuse_repvgg_block(params: dict, batch_stats: dict) -> dict:
    """One RepVggBlock's trained params/batch_stats -> its deploy params ``{'conv': {kernel,
    bias}}`` (Paddle ``get_equivalent_kernel_bias``: the 1x1 padded to 3x3, [times alpha]).
    Pure jnp, so it also runs under ``jit`` / ``eval_shape``."""
    k3, b3 = _fuse_bn(params["conv1"], batch_stats["conv1"])
    k1, b1 = _fuse_bn(params["conv2"], batch_stats["conv2"])
    a = jnp.asarray(params["alpha"], jnp.float32).reshape(()) if "alpha" in params else 1.0
    kernel = k3.at[1, 1].add(a * k1[0, 0])
    bias = b3 + a * b1
    dt = params["conv1"]["conv"]["kernel"].dtype
    return {"conv": {"kernel": kernel.astype(dt), "bias": bias.astype(dt)}}


def fuse_repvgg(variables: Any) -> Any:
    """Trained variables -> the deploy (``deploy=True``) model's: every RepVggBlock's 3x3
    conv+BN and 1x1 conv+BN (x alpha) become one 3x3 conv with bias; its BN batch_stats go.

    A RepVggBlock is recognised by its structure (a sub-tree with exactly ``conv1`` = conv 3x3 +
    ``bn`` and ``conv2`` = conv 1x1 + ``bn``, optionally ``alpha``), so any model containing
    them works (backbone, neck, full model).  Other collections and leaves pass unchanged.
    """
    was_frozen = not isinstance(variables, dict)
    v = unfreeze(variables) if was_frozen else dict(variables)
    if "params" not in v or "batch_stats" not in v:
        raise ValueError("fuse_repvgg needs the 'params' and 'batch_stats' collections")

    def walk(p: Any, s: Any) -> tuple[Any, Any]:
        if not isinstance(p, dict):
            return p, s
        if _is_repvgg(p, s):
            return fuse_repvgg_block(p, s), None
        new_p, new_s = {}, ({} if isinstance(s, dict) else s)
        for k, sub in p.items():
            sub_s = s.get(k) if isinstance(s, dict) else None
            fp, fs = walk(sub, sub_s)
            new_p[k] = fp
            if isinstance(s, dict) and k in s and fs:  # drop emptied (fused) sub-trees
                new_s[k] = fs
        if isinstance(s, dict):  # batch_stats entries without params (none expected): keep
            for k in s:
                if k not in p:
                    new_s[k] = s[k]
        return new_p, new_s

    params, stats = walk(v["params"], v["batch_stats"])
    out = dict(v)
    out["params"] = params
    out["batch_stats"] = stats if stats is not None else {}
    return freeze(out) if was_frozen else out


__all__ = ["CSPResNet", "CSPResStage", "BasicBlock", "RepVggBlock", "EffectiveSELayer",
           "ConvBNLayer", "fuse_repvgg", "fuse_repvgg_block", "get_act", "swish",
           "paddle_hardsigmoid", "scaled_channels", "scaled_layers"]
