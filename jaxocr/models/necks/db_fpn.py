"""DB necks (PaddleOCR ``ppocr/modeling/necks/db_fpn.py``): ``DBFPN`` (with DBNet++'s optional
``ASFBlock``) and ``RSEFPN`` (PP-OCRv3 det).

Both take the backbone's 4 maps c2..c5 (strides 4, 8, 16, 32; NHWC), project each to
``out_channels`` (1x1), run the top-down path (add after nearest x2 upsampling), reduce each level
to ``out_channels // 4`` with a 3x3 conv, upsample them to stride 4 (x8, x4, x2, x1, nearest) and
concatenate them in the order p5, p4, p3, p2: one (B, H/4, W/4, out_channels) map.

Sub-module names mirror Paddle's (in2_conv..in5_conv, p2_conv..p5_conv, asf; ins_conv_i /
inp_conv_i with in_conv and se_block) so converted weights map one to one.  ``in_channels`` is
optional (Paddle's BaseModel fills it from the backbone; here the input shapes give it); when set
it is checked against the inputs.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxocr.models.backbones.mobilenet_v3 import SEModule
from jaxocr.models.layers import Conv

Array = jax.Array


def kaiming_uniform_init(fan_in: int) -> Callable:
    """Paddle's ``KaimingUniform()`` (relu gain): Uniform(+-sqrt(6 / fan_in)).

    Paddle takes fan_in = shape[1] * prod(shape[2:]) of its weight: kh*kw*Cin for a Conv2D
    (Cout, Cin, kh, kw), but kh*kw*Cout for a Conv2DTranspose (Cin, Cout, kh, kw) -- callers
    pass the right one.
    """
    bound = math.sqrt(6.0 / fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def upsample_nearest(x: Array, factor: int) -> Array:
    """Paddle ``F.upsample(x, scale_factor=f, mode='nearest')`` on NHWC: each pixel f x f times."""
    if factor == 1:
        return x
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def _check_inputs(name: str, x: Sequence[Array], in_channels: Sequence[int] | None) -> None:
    if not isinstance(x, (list, tuple)) or len(x) != 4:
        what = f"{len(x)} maps" if isinstance(x, (list, tuple)) else type(x).__name__
        raise ValueError(f"{name} expects the backbone's list of 4 feature maps (a det "
                         f"backbone: Architecture.model_type det), got {what}")
    chans = [int(a.shape[-1]) for a in x]
    if in_channels is not None and list(in_channels) != chans:
        raise ValueError(f"{name}: in_channels {list(in_channels)} != the inputs' channels {chans}")
    h, w = x[0].shape[1], x[0].shape[2]
    for i, a in enumerate(x):
        f = 2 ** i
        if a.shape[1] * f != h or a.shape[2] * f != w:
            raise ValueError(
                f"{name}: feature maps {[tuple(a.shape[1:3]) for a in x]} are not at strides "
                f"4/8/16/32 of one image; the input height and width must be multiples of 32")


def _top_down(in2: Array, in3: Array, in4: Array, in5: Array):
    out4 = in4 + upsample_nearest(in5, 2)   # 1/16
    out3 = in3 + upsample_nearest(out4, 2)  # 1/8
    out2 = in2 + upsample_nearest(out3, 2)  # 1/4
    return out4, out3, out2


def _to_quarter(p5: Array, p4: Array, p3: Array, p2: Array) -> list[Array]:
    """The smoothed levels brought to 1/4 resolution (nearest), in concat order p5..p2."""
    return [upsample_nearest(p5, 8), upsample_nearest(p4, 4), upsample_nearest(p3, 2), p2]


class ASFBlock(nn.Module):
    """DBNet++ adaptive scale fusion (Paddle's ``ASFBlock``, used by ``DBFPN(use_asf=True)``).

    conv 3x3 C->inter (bias, Paddle's default init); spatial attention: channel mean -> conv 3x3
    1->1 -> ReLU -> conv 1x1 1->1 -> sigmoid (Kaiming-uniform, no bias), added to the conv
    output; channel attention: conv 1x1 inter->4 (Kaiming-uniform, no bias) -> sigmoid.  Output:
    the i-th attention map times the i-th feature, concatenated.
    """

    inter_channels: int
    out_features_num: int = 4
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, fuse: Array, features: Sequence[Array]) -> Array:
        if len(features) != self.out_features_num:
            raise ValueError(f"ASFBlock expects {self.out_features_num} features, "
                             f"got {len(features)}")
        kw = dict(impl=self.conv_impl, dtype=self.dtype)
        fuse = Conv(self.inter_channels, 3, padding=1, use_bias=True, name="conv", **kw)(fuse)
        spatial = jnp.mean(fuse, axis=-1, keepdims=True)
        spatial = Conv(1, 3, padding=1, kernel_init=kaiming_uniform_init(9),
                       name="spatial_scale_0", **kw)(spatial)
        spatial = nn.relu(spatial)
        spatial = Conv(1, 1, kernel_init=kaiming_uniform_init(1), name="spatial_scale_2",
                       **kw)(spatial)
        scores = jax.nn.sigmoid(spatial) + fuse
        scores = Conv(self.out_features_num, 1,
                      kernel_init=kaiming_uniform_init(self.inter_channels),
                      name="channel_scale_0", **kw)(scores)
        scores = jax.nn.sigmoid(scores)
        return jnp.concatenate(
            [scores[..., i:i + 1] * f.astype(scores.dtype) for i, f in enumerate(features)],
            axis=-1)


class DBFPN(nn.Module):
    """DB's FPN: 1x1 convs c_i -> out_channels, top-down adds, 3x3 convs -> out_channels // 4,
    upsample, concat (p5, p4, p3, p2).  All convs without bias, Kaiming-uniform init."""

    out_channels: int
    in_channels: Sequence[int] | None = None
    use_asf: bool = False
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Sequence[Array], train: bool = False) -> Array:
        _check_inputs("DBFPN", x, self.in_channels)
        c, q = self.out_channels, self.out_channels // 4
        kw = dict(impl=self.conv_impl, dtype=self.dtype)

        def conv1x1(name, a):
            return Conv(c, 1, kernel_init=kaiming_uniform_init(a.shape[-1]), name=name, **kw)(a)

        def conv3x3(name, a):
            return Conv(q, 3, padding=1, kernel_init=kaiming_uniform_init(9 * a.shape[-1]),
                        name=name, **kw)(a)

        c2, c3, c4, c5 = x
        in5 = conv1x1("in5_conv", c5)
        in4 = conv1x1("in4_conv", c4)
        in3 = conv1x1("in3_conv", c3)
        in2 = conv1x1("in2_conv", c2)
        out4, out3, out2 = _top_down(in2, in3, in4, in5)
        levels = _to_quarter(conv3x3("p5_conv", in5), conv3x3("p4_conv", out4),
                             conv3x3("p3_conv", out3), conv3x3("p2_conv", out2))
        fuse = jnp.concatenate(levels, axis=-1)
        if self.use_asf:
            fuse = ASFBlock(q, conv_impl=self.conv_impl, dtype=self.dtype, name="asf")(
                fuse, levels)
        return fuse


class RSELayer(nn.Module):
    """Conv k x k (no bias, Kaiming-uniform, padding k // 2), then x + SE(x) (``shortcut``) or
    SE(x).  The SE is MobileNetV3's (hardsigmoid slope 0.2, offset 0.5), as Paddle imports it."""

    out_channels: int
    kernel_size: int
    shortcut: bool = True
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel_size
        x = Conv(self.out_channels, k, padding=k // 2,
                 kernel_init=kaiming_uniform_init(k * k * x.shape[-1]), impl=self.conv_impl,
                 dtype=self.dtype, name="in_conv")(x)
        se = SEModule(conv_impl=self.conv_impl, dtype=self.dtype, name="se_block")(x)
        return x + se if self.shortcut else se


class RSEFPN(nn.Module):
    """PP-OCRv3's FPN: DBFPN's topology with RSELayers (1x1 -> out_channels, 3x3 ->
    out_channels // 4).  PaddleOCR's ``intracl`` option (IntraCLBlock) is not implemented."""

    out_channels: int
    in_channels: Sequence[int] | None = None
    shortcut: bool = True
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Sequence[Array], train: bool = False) -> Array:
        _check_inputs("RSEFPN", x, self.in_channels)
        kw = dict(shortcut=self.shortcut, conv_impl=self.conv_impl, dtype=self.dtype)
        ins = [RSELayer(self.out_channels, 1, name=f"ins_conv_{i}", **kw) for i in range(4)]
        inp = [RSELayer(self.out_channels // 4, 3, name=f"inp_conv_{i}", **kw)
               for i in range(4)]
        c2, c3, c4, c5 = x
        in5, in4, in3, in2 = ins[3](c5), ins[2](c4), ins[1](c3), ins[0](c2)
        out4, out3, out2 = _top_down(in2, in3, in4, in5)
        return jnp.concatenate(_to_quarter(inp[3](in5), inp[2](out4), inp[1](out3), inp[0](out2)),
                               axis=-1)


__all__ = ["DBFPN", "RSEFPN", "RSELayer", "ASFBlock", "kaiming_uniform_init",
           "upsample_nearest"]
