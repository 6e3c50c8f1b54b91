"""MobileNetV3 for recognition and for detection (PaddleOCR ``rec_mobilenet_v3.py`` and
``det_mobilenet_v3.py``).

PaddleOCR has two classes named ``MobileNetV3``; ``build_backbone`` picks one by
``Architecture.model_type``.  Here they are ``MobileNetV3`` (rec) and ``MobileNetV3Det`` (det),
and ``jaxocr.models.build_model`` picks by ``model_type`` the same way.  Both share
``ResidualUnit`` and ``SEModule`` (defined by ``det_mobilenet_v3.py`` in Paddle, too).

Sub-module names mirror Paddle's attribute names (rec: conv1, blocks_i, conv2; det: conv,
stage{s}_{j}; blocks: expand_conv, bottleneck_conv, mid_se, linear_conv) so converted Paddle
weights map one to one.  Input NHWC, output NHWC.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxocr.models.layers import Conv, ConvBNLayer, hardsigmoid

Array = jax.Array

SUPPORTED_SCALES = (0.35, 0.5, 0.75, 1.0, 1.25)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """PaddleOCR's make_divisible: round to a multiple of 8, never more than 10 % down."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def rec_cfg(model_name: str, large_stride: Sequence[int], small_stride: Sequence[int]):
    """(k, exp, c, se, act, stride) per block and cls_ch_squeeze, as in rec_mobilenet_v3.py.

    Strides stay exactly as Paddle writes them: an int for large block 0, tuples (s, 1) for the
    height-only strides.  That matters: Paddle's shortcut test is ``stride == 1``, which is False
    for the tuple (1, 1) -- e.g. small_stride[0] = 1 gives block 0 no residual.
    """
    if model_name == "large":
        ls = large_stride
        cfg = [
            [3, 16, 16, False, "relu", ls[0]],
            [3, 64, 24, False, "relu", (ls[1], 1)],
            [3, 72, 24, False, "relu", 1],
            [5, 72, 40, True, "relu", (ls[2], 1)],
            [5, 120, 40, True, "relu", 1],
            [5, 120, 40, True, "relu", 1],
            [3, 240, 80, False, "hardswish", 1],
            [3, 200, 80, False, "hardswish", 1],
            [3, 184, 80, False, "hardswish", 1],
            [3, 184, 80, False, "hardswish", 1],
            [3, 480, 112, True, "hardswish", 1],
            [3, 672, 112, True, "hardswish", 1],
            [5, 672, 160, True, "hardswish", (ls[3], 1)],
            [5, 960, 160, True, "hardswish", 1],
            [5, 960, 160, True, "hardswish", 1],
        ]
        return cfg, 960
    if model_name == "small":
        ss = small_stride
        cfg = [
            [3, 16, 16, True, "relu", (ss[0], 1)],
            [3, 72, 24, False, "relu", (ss[1], 1)],
            [3, 88, 24, False, "relu", 1],
            [5, 96, 40, True, "hardswish", (ss[2], 1)],
            [5, 240, 40, True, "hardswish", 1],
            [5, 240, 40, True, "hardswish", 1],
            [5, 120, 48, True, "hardswish", 1],
            [5, 144, 48, True, "hardswish", 1],
            [5, 288, 96, True, "hardswish", (ss[3], 1)],
            [5, 576, 96, True, "hardswish", 1],
            [5, 576, 96, True, "hardswish", 1],
        ]
        return cfg, 576
    raise ValueError(f"MobileNetV3 model_name must be 'large' or 'small', got {model_name!r}")


def det_cfg(model_name: str):
    """(k, exp, c, se, act, stride) per block and cls_ch_squeeze, as in det_mobilenet_v3.py.

    Not derivable from ``rec_cfg``: besides the int strides, large block 6 has stride 2 here and
    1 in the rec table (the rec net downsamples the width 4x less).
    """
    if model_name == "large":
        cfg = [
            [3, 16, 16, False, "relu", 1],
            [3, 64, 24, False, "relu", 2],
            [3, 72, 24, False, "relu", 1],
            [5, 72, 40, True, "relu", 2],
            [5, 120, 40, True, "relu", 1],
            [5, 120, 40, True, "relu", 1],
            [3, 240, 80, False, "hardswish", 2],
            [3, 200, 80, False, "hardswish", 1],
            [3, 184, 80, False, "hardswish", 1],
            [3, 184, 80, False, "hardswish", 1],
            [3, 480, 112, True, "hardswish", 1],
            [3, 672, 112, True, "hardswish", 1],
            [5, 672, 160, True, "hardswish", 2],
            [5, 960, 160, True, "hardswish", 1],
            [5, 960, 160, True, "hardswish", 1],
        ]
        return cfg, 960
    if model_name == "small":
        cfg = [
            [3, 16, 16, True, "relu", 2],
            [3, 72, 24, False, "relu", 2],
            [3, 88, 24, False, "relu", 1],
            [5, 96, 40, True, "hardswish", 2],
            [5, 240, 40, True, "hardswish", 1],
            [5, 240, 40, True, "hardswish", 1],
            [5, 120, 48, True, "hardswish", 1],
            [5, 144, 48, True, "hardswish", 1],
            [5, 288, 96, True, "hardswish", 2],
            [5, 576, 96, True, "hardswish", 1],
            [5, 576, 96, True, "hardswish", 1],
        ]
        return cfg, 576
    raise ValueError(f"MobileNetV3 model_name must be 'large' or 'small', got {model_name!r}")


def det_stages(model_name: str) -> list[list[int]]:
    """Block indices of the 4 det stages: a new stage starts at every stride-2 block past
    index 2 (large) or 0 (small), as det_mobilenet_v3.py splits them."""
    cfg, _ = det_cfg(model_name)
    start_idx = 2 if model_name == "large" else 0
    stages: list[list[int]] = [[]]
    for i, row in enumerate(cfg):
        if row[5] == 2 and i > start_idx:
            stages.append([])
        stages[-1].append(i)
    return stages


class SEModule(nn.Module):
    """Squeeze-excite: avgpool -> 1x1 C->C//4 (bias) -> ReLU -> 1x1 (bias) -> hardsigmoid(slope,
    0.5). MobileNetV3's slope is 0.2; PP-LCNet's (MobileNetV1Enhance) is Paddle's default 1/6."""

    reduction: int = 4
    slope: float = 0.2
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        # Paddle: plain in_channels // reduction (no make_divisible).
        s = Conv(c // self.reduction, 1, use_bias=True, impl=self.conv_impl, dtype=self.dtype,
                 name="conv1")(s)
        s = nn.relu(s)
        s = Conv(c, 1, use_bias=True, impl=self.conv_impl, dtype=self.dtype, name="conv2")(s)
        return x * hardsigmoid(s, slope=self.slope, offset=0.5)


class ResidualUnit(nn.Module):
    mid_channels: int
    out_channels: int
    kernel_size: int
    stride: Any  # int or (sh, sw), kept as Paddle writes it (see rec_cfg)
    use_se: bool
    act: str | None = None
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array, train: bool) -> Array:
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        x = ConvBNLayer(self.mid_channels, 1, 1, 0, act=self.act, name="expand_conv", **kw)(
            inputs, train)
        x = ConvBNLayer(self.mid_channels, self.kernel_size, self.stride,
                        (self.kernel_size - 1) // 2, groups=self.mid_channels, act=self.act,
                        name="bottleneck_conv", **kw)(x, train)
        if self.use_se:
            x = SEModule(conv_impl=self.conv_impl, dtype=self.dtype, name="mid_se")(x)
        x = ConvBNLayer(self.out_channels, 1, 1, 0, act=None, name="linear_conv", **kw)(x, train)
        # Python equality on purpose: a tuple stride (1, 1) is *not* == 1 in Paddle either.
        if self.stride == 1 and inputs.shape[-1] == self.out_channels:
            x = inputs.astype(x.dtype) + x
        return x


class MobileNetV3(nn.Module):
    """Rec MobileNetV3: stem conv 3x3 s2 -> ResidualUnits -> conv 1x1 -> MaxPool 2x2 s2."""

    in_channels: int = 3
    model_name: str = "small"
    scale: float = 0.5
    large_stride: Sequence[int] | None = None
    small_stride: Sequence[int] | None = None
    disable_se: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    def _strides(self):
        ls = [1, 2, 2, 2] if self.large_stride is None else list(self.large_stride)
        ss = [2, 2, 2, 2] if self.small_stride is None else list(self.small_stride)
        if len(ls) != 4 or len(ss) != 4:
            raise ValueError(f"large_stride/small_stride must have 4 entries, got {ls}, {ss}")
        return ls, ss

    @property
    def out_channels(self) -> int:
        _, squeeze = rec_cfg(self.model_name, *self._strides())
        return make_divisible(self.scale * squeeze)

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if self.scale not in SUPPORTED_SCALES:
            raise ValueError(f"MobileNetV3 scale must be one of {SUPPORTED_SCALES}, "
                             f"got {self.scale}")
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"MobileNetV3 expects NHWC input with {self.in_channels} channels, "
                             f"got shape {x.shape}")
        cfg, squeeze = rec_cfg(self.model_name, *self._strides())
        in_h, in_w = x.shape[1], x.shape[2]
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        s = self.scale
        x = ConvBNLayer(make_divisible(16 * s), 3, 2, 1, act="hardswish", name="conv1", **kw)(
            x, train)
        for i, (k, exp, c, se, act, stride) in enumerate(cfg):
            x = ResidualUnit(make_divisible(s * exp), make_divisible(s * c), k, stride,
                             se and not self.disable_se, act, name=f"blocks_{i}", **kw)(x, train)
        x = ConvBNLayer(make_divisible(s * squeeze), 1, 1, 0, act="hardswish", name="conv2",
                        **kw)(x, train)
        if x.shape[1] < 2 or x.shape[2] < 2:
            raise ValueError(
                f"MobileNetV3 ({self.model_name}): a {in_h}x{in_w} input leaves a "
                f"{x.shape[1]}x{x.shape[2]} map before the final 2x2 max-pool. Use taller images "
                f"or smaller strides, e.g. small_stride [1, 2, 2, 2] for 32-pixel-high lines")
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class MobileNetV3Det(nn.Module):
    """Det MobileNetV3 (Paddle's det_mobilenet_v3.py): stem conv 3x3 s2 -> 4 stages of
    ResidualUnits, the last one ending with a 1x1 conv to make_divisible(scale * squeeze) and
    hardswish; no pooling.

    Returns the list of the 4 stage outputs, at strides 4, 8, 16, 32, with ``out_channels``
    channels (large x0.5: [16, 24, 56, 480]).
    """

    in_channels: int = 3
    model_name: str = "large"
    scale: float = 0.5
    disable_se: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @property
    def out_channels(self) -> list[int]:
        cfg, squeeze = det_cfg(self.model_name)
        stages = det_stages(self.model_name)
        chans = [make_divisible(self.scale * cfg[st[-1]][2]) for st in stages[:-1]]
        return chans + [make_divisible(self.scale * squeeze)]

    @nn.compact
    def __call__(self, x: Array, train: bool) -> list[Array]:
        if self.scale not in SUPPORTED_SCALES:
            raise ValueError(f"MobileNetV3 scale must be one of {SUPPORTED_SCALES}, "
                             f"got {self.scale}")
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"MobileNetV3 expects NHWC input with {self.in_channels} channels, "
                             f"got shape {x.shape}")
        cfg, squeeze = det_cfg(self.model_name)
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        s = self.scale
        x = ConvBNLayer(make_divisible(16 * s), 3, 2, 1, act="hardswish", name="conv", **kw)(
            x, train)
        outs = []
        stages = det_stages(self.model_name)
        for si, block_ids in enumerate(stages):
            for j, i in enumerate(block_ids):
                k, exp, c, se, act, stride = cfg[i]
                x = ResidualUnit(make_divisible(s * exp), make_divisible(s * c), k, stride,
                                 se and not self.disable_se, act, name=f"stage{si}_{j}",
                                 **kw)(x, train)
            if si == len(stages) - 1:
                x = ConvBNLayer(make_divisible(s * squeeze), 1, 1, 0, act="hardswish",
                                name=f"stage{si}_{len(block_ids)}", **kw)(x, train)
            outs.append(x)
        return outs
