"""DB head (PaddleOCR ``ppocr/modeling/heads/det_db_head.py``).

Two identical branches, ``binarize`` (shrink map P) and ``thresh`` (threshold map T), each
Paddle's ``Head``:

    conv k0 x k0, C -> C/4 (no bias, Paddle's default Normal init), BN (gamma 1, beta 1e-4), ReLU,
    ConvTranspose k1 x k1 s2, C/4 -> C/4 (Kaiming-uniform, bias Uniform(+-1/sqrt(C/4))), BN, ReLU,
    ConvTranspose k2 x k2 s2, C/4 -> 1 (same inits), sigmoid

with ``kernel_list`` [k0, k1, k2] = [3, 2, 2].  From the neck's stride-4 map the head returns
full-resolution maps.  Training: ``{'maps': (B, H, W, 3)}`` = [P, T, B] with the approximate
binary map B = 1 / (1 + exp(-k (P - T))); eval: ``{'maps': P}`` of shape (B, H, W, 1) (Paddle
returns NCHW; here NHWC).  Outputs are float32 whatever the compute dtype.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from jaxocr.models.layers import Conv, resolve_conv_impl, uniform_init
from jaxocr.models.necks.db_fpn import kaiming_uniform_init

Array = jax.Array


class ConvTranspose(nn.Module):
    """Paddle ``nn.Conv2DTranspose`` (groups 1, padding 0, dilation 1) on NHWC.

    out[i*s + a, j*s + b, o] += x[i, j, c] * W[a, b, c, o] (+ bias[o]); output size
    (H - 1) * s + k.  ``kernel`` is stored (kh, kw, Cin, Cout); Paddle's weight is
    (Cin, Cout, kh, kw), i.e. ``paddle_w.transpose(2, 3, 0, 1)``.

    With k == s (DB's 2x2 s2: no overlap) the 'fast' implementation (CPU default) is one matmul
    and a reshape; 'xla' (elsewhere) is ``lax.conv_general_dilated`` with lhs dilation and the
    flipped kernel.  Both compute the same thing.
    """

    features: int
    kernel_size: int | Sequence[int] = 2
    strides: int | Sequence[int] = 2
    use_bias: bool = True
    impl: str = "auto"
    dtype: Any = jnp.float32
    kernel_init: Callable | None = None  # None -> Paddle's KaimingUniform (fan_in kh*kw*Cout)
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(
            self.kernel_size)
        sh, sw = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        cin = x.shape[-1]
        init = self.kernel_init or kaiming_uniform_init(kh * kw * self.features)
        kernel = self.param("kernel", init, (kh, kw, cin, self.features), jnp.float32)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if resolve_conv_impl(self.impl) == "fast" and (kh, kw) == (sh, sw):
            b, h, w, _ = x.shape
            y = jnp.dot(x.reshape(b * h * w, cin), kernel.transpose(2, 0, 1, 3).reshape(
                cin, kh * kw * self.features))
            y = y.reshape(b, h, w, kh, kw, self.features).transpose(0, 1, 3, 2, 4, 5)
            y = y.reshape(b, h * kh, w * kw, self.features)
        else:
            y = lax.conv_general_dilated(
                x, kernel[::-1, ::-1], window_strides=(1, 1),
                padding=((kh - 1, kh - 1), (kw - 1, kw - 1)), lhs_dilation=(sh, sw),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def _head_bn(train: bool, axis_name: str | None, dtype: Any, name: str) -> nn.BatchNorm:
    """PaddleOCR's BatchNorm (momentum 0.9, eps 1e-5, as ``layers.batch_norm``) with DBHead's
    ParamAttrs: scale Constant(1.0), bias Constant(1e-4)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        axis_name=axis_name, dtype=dtype, param_dtype=jnp.float32,
                        bias_init=nn.initializers.constant(1e-4), name=name)


class DBBranch(nn.Module):
    """Paddle's ``Head`` of det_db_head.py: one probability map at 4x the input resolution."""

    kernel_list: Sequence[int] = (3, 2, 2)
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        k0, k1, k2 = self.kernel_list
        mid = x.shape[-1] // 4
        bias_init = uniform_init(1.0 / math.sqrt(mid))  # Paddle's get_bias_attr(C // 4)
        x = Conv(mid, k0, padding=k0 // 2, impl=self.conv_impl, dtype=self.dtype,
                 name="conv1")(x)
        x = nn.relu(_head_bn(train, self.bn_axis_name, self.dtype, "conv_bn1")(x))
        x = ConvTranspose(mid, k1, 2, impl=self.conv_impl, dtype=self.dtype,
                          bias_init=bias_init, name="conv2")(x)
        x = nn.relu(_head_bn(train, self.bn_axis_name, self.dtype, "conv_bn2")(x))
        x = ConvTranspose(1, k2, 2, impl=self.conv_impl, dtype=self.dtype,
                          bias_init=bias_init, name="conv3")(x)
        return jax.nn.sigmoid(x.astype(jnp.float32))


class DBHead(nn.Module):
    """Differentiable Binarization head: ``binarize`` and ``thresh`` DBBranches.

    ``__call__(x, train)`` on the neck's (B, H/4, W/4, C) map returns ``{'maps': ...}``:
    (B, H, W, 3) [shrink, thresh, binary] when ``train``, else (B, H, W, 1) shrink.  In eval the
    thresh branch is not run (as in Paddle), except at ``init`` so the parameters are the same
    whichever mode initialises the model.
    """

    k: int = 50
    in_channels: int | None = None
    kernel_list: Sequence[int] = (3, 2, 2)
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        if x.ndim != 4:
            raise ValueError(f"DBHead expects an NHWC map, got shape {x.shape}")
        if self.in_channels is not None and x.shape[-1] != self.in_channels:
            raise ValueError(f"DBHead: in_channels {self.in_channels} != the input's "
                             f"{x.shape[-1]} channels")
        if len(self.kernel_list) != 3:
            raise ValueError(f"DBHead kernel_list must have 3 entries, got {self.kernel_list}")
        kw = dict(kernel_list=tuple(self.kernel_list), bn_axis_name=self.bn_axis_name,
                  conv_impl=self.conv_impl, dtype=self.dtype)
        shrink = DBBranch(name="binarize", **kw)(x, train)
        if not train and not self.is_initializing():
            return {"maps": shrink}
        thresh = DBBranch(name="thresh", **kw)(x, train)
        if not train:
            return {"maps": shrink}
        # Paddle's step_function 1 / (1 + exp(-k (P - T))), written as the (stable) sigmoid.
        binary = jax.nn.sigmoid(self.k * (shrink - thresh))
        return {"maps": jnp.concatenate([shrink, thresh, binary], axis=-1)}


__all__ = ["DBHead", "DBBranch", "ConvTranspose"]
