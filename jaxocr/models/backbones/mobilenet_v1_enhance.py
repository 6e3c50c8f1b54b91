"""MobileNetV1Enhance: PP-OCRv2's rec backbone and the base of PP-OCRv3's SVTR_LCNet (PaddleOCR
``ppocr/modeling/backbones/rec_mv1_enhance.py``).

conv1 3x3 s2 (32·scale) -> 13 depthwise-separable blocks (depthwise kxk + BN + hardswish,
squeeze-excite on the last two, pointwise 1x1 + BN + hardswish), strides (2, 1) at blocks 4, 6
and 12 so the width stays long, the last one's `last_conv_stride` -> a 2x2 max pool or, with
`last_pool_type: avg`, an average pool of `last_pool_kernel_size` (PP-OCRv2: 32-px lines to
height 1 by the max pool; PP-OCRv3: `last_conv_stride [1, 2]` and the avg pool, 48-px lines).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxocr.models.backbones.mobilenet_v3 import SEModule
from jaxocr.models.layers import ConvBNLayer

Array = jax.Array

# (in, mid, out, groups, stride, kernel, squeeze-excite) of each block, before `scale`
_BLOCKS = ((32, 32, 64, 32, 1, 3, False), (64, 64, 128, 64, 1, 3, False),
           (128, 128, 128, 128, 1, 3, False), (128, 128, 256, 128, (2, 1), 3, False),
           (256, 256, 256, 256, 1, 3, False), (256, 256, 512, 256, (2, 1), 3, False),
           *((512, 512, 512, 512, 1, 5, False),) * 5,
           (512, 512, 1024, 512, (2, 1), 5, True))


class DepthwiseSeparable(nn.Module):
    mid_channels: int
    out_channels: int
    stride: Any
    kernel_size: int = 3
    use_se: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        x = ConvBNLayer(self.mid_channels, self.kernel_size, self.stride,
                        self.kernel_size // 2, groups=-1, act="hardswish",
                        name="depthwise_conv", **kw)(x, train)
        if self.use_se:
            x = SEModule(slope=1.0 / 6.0, conv_impl=self.conv_impl, dtype=self.dtype,
                         name="se")(x)
        return ConvBNLayer(self.out_channels, 1, 1, 0, act="hardswish", name="pointwise_conv",
                           **kw)(x, train)


class MobileNetV1Enhance(nn.Module):
    in_channels: int = 3
    scale: float = 0.5
    last_conv_stride: int | Sequence[int] = 1
    last_pool_type: str = "max"
    last_pool_kernel_size: Sequence[int] = (3, 2)
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @property
    def out_channels(self) -> int:
        return int(1024 * self.scale)

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if self.last_pool_type not in ("max", "avg"):
            raise ValueError(f"MobileNetV1Enhance last_pool_type must be max or avg, got "
                             f"{self.last_pool_type!r}")
        s = self.scale
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        x = ConvBNLayer(int(32 * s), 3, 2, 1, act="hardswish", name="conv1", **kw)(x, train)
        last = (1024, 1024, 1024, 1024, self.last_conv_stride, 5, True)
        for i, (_, mid, out, _, stride, k, se) in enumerate(_BLOCKS + (last,)):
            x = DepthwiseSeparable(int(mid * s), int(out * s), stride, k, se,
                                   name=f"block_list_{i}", **kw)(x, train)
        if self.last_pool_type == "avg":
            window = tuple(int(v) for v in self.last_pool_kernel_size)
            return nn.avg_pool(x, window, strides=window)
        return nn.max_pool(x, (2, 2), strides=(2, 2))
