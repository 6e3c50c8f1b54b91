"""ResNet_vd for recognition (PaddleOCR ``ppocr/modeling/backbones/rec_resnet_vd.py``): the
classic CRNN / STAR-Net backbone, ``Backbone: {name: ResNet, layers: 34}``.

A three-conv 3x3 stem (32, 32, 64 channels, stride 1) and a 3x3 stride-2 max pool, then four
stages of BasicBlocks (18, 34) or BottleneckBlocks (50 and up) whose first block strides (2, 1)
from the second stage on -- the height shrinks, the width (the sequence) keeps its length --
and a final 2x2 max pool: a 32 x W line becomes 1 x W/4. Every stage's first block has a
projection shortcut (the first stage's too, though its channels match); the "vd" shortcut
average-pools before its 1x1 conv instead of striding it. Input NHWC, output NHWC.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxocr.models.layers import ConvBNLayer

Array = jax.Array

DEPTHS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3],
          152: [3, 8, 36, 3], 200: [3, 12, 48, 3]}
FILTERS = [64, 128, 256, 512]


def avg_pool_ceil(x: Array, window: tuple[int, int]) -> Array:
    """Paddle's AvgPool2D(kernel = stride = window, ceil_mode=True, exclusive): a partial last
    window averages only the rows / columns it covers."""
    (kh, kw), (b, h, w, c) = window, x.shape
    ph, pw = -h % kh, -w % kw
    padded = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    sums = padded.reshape(b, (h + ph) // kh, kh, (w + pw) // kw, kw, c).sum(axis=(2, 4))
    rows = jnp.minimum(kh, h - jnp.arange(0, h + ph, kh))
    cols = jnp.minimum(kw, w - jnp.arange(0, w + pw, kw))
    return sums / (rows[:, None] * cols[None, :])[None, :, :, None].astype(x.dtype)


class Shortcut(nn.Module):
    """The projection shortcut: 1x1 ConvBN, average-pooled first (vd) where it strides."""

    out_channels: int
    stride: tuple[int, int]
    vd_mode: bool
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if self.vd_mode:
            x = avg_pool_ceil(x, self.stride)
        return ConvBNLayer(self.out_channels, 1, 1 if self.vd_mode else self.stride, 0,
                           bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl,
                           dtype=self.dtype, name="conv")(x, train)


class BasicBlock(nn.Module):
    out_channels: int
    stride: tuple[int, int]
    shortcut: bool
    if_first: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    expansion = 1

    def convs(self):
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        return [ConvBNLayer(self.out_channels, 3, self.stride, act="relu", name="conv0", **kw),
                ConvBNLayer(self.out_channels, 3, 1, name="conv1", **kw)]

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        y = x
        for conv in self.convs():
            y = conv(y, train)
        short = x if self.shortcut else Shortcut(
            self.out_channels * self.expansion, self.stride,
            not self.if_first and self.stride[0] != 1, self.bn_axis_name, self.conv_impl,
            self.dtype, name="short")(x, train)
        return nn.relu(short + y)


class BottleneckBlock(BasicBlock):
    expansion = 4

    def convs(self):
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        return [ConvBNLayer(self.out_channels, 1, 1, 0, act="relu", name="conv0", **kw),
                ConvBNLayer(self.out_channels, 3, self.stride, act="relu", name="conv1", **kw),
                ConvBNLayer(self.out_channels * 4, 1, 1, 0, name="conv2", **kw)]


class ResNet(nn.Module):
    """``layers``: 18, 34, 50, 101, 152 or 200 (PaddleOCR's default 50; its configs use 34)."""

    layers: int = 50
    in_channels: int = 3
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.layers not in DEPTHS:
            raise ValueError(f"Backbone ResNet.layers must be one of {sorted(DEPTHS)}, "
                             f"got {self.layers!r}")
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        for name, channels in (("conv1_1", 32), ("conv1_2", 32), ("conv1_3", 64)):
            x = ConvBNLayer(channels, 3, 1, act="relu", name=name, **kw)(x, train)
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        block = BottleneckBlock if self.layers >= 50 else BasicBlock
        for stage, depth in enumerate(DEPTHS[self.layers]):
            for i in range(depth):
                stride = (2, 1) if i == 0 and stage != 0 else (1, 1)
                x = block(FILTERS[stage], stride, shortcut=i != 0, if_first=stage == i == 0,
                          name=f"bb_{stage}_{i}", **kw)(x, train)
        return nn.max_pool(x, (2, 2), (2, 2))
