"""EncoderWithSVTR: PP-OCRv3's CTC neck (PaddleOCR ``ppocr/modeling/necks/rnn.py``).

The backbone's (B, 1, W, C) map is narrowed to C/8 and then `hidden_dims` channels, mixed by
`depth` global SVTR blocks (Swish MLPs, dropout), widened back to C, concatenated with the
input (the shortcut) and reduced to `dims` channels. `use_guide` stops the gradient into the
neck's input: the CTC branch then trains only the neck, the backbone learns from the SAR
branch (the "guided training" of PP-OCRv3).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxocr.models.backbones.svtrnet import Block, kaiming_uniform, layer_norm
from jaxocr.models.layers import ConvBNLayer

Array = jax.Array


class EncoderWithSVTR(nn.Module):
    dims: int = 64
    depth: int = 2
    hidden_dims: int = 120
    use_guide: bool = False
    num_heads: int = 8
    qkv_bias: bool = True
    mlp_ratio: float = 2.0
    drop_rate: float = 0.1
    attn_drop_rate: float = 0.1
    drop_path: float = 0.0
    kernel_size: Sequence[int] = (3, 3)
    qk_scale: float | None = None
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.qk_scale is not None:
            raise ValueError("EncoderWithSVTR: qk_scale other than None (head_dim ** -0.5) "
                             "is not supported")
        cin = x.shape[-1]
        kh, kw = (int(k) for k in self.kernel_size)

        def conv(y, features, ksize, name):  # Paddle's ConvBNLayer of rec_svtrnet.py
            fan_in = ksize[0] * ksize[1] * y.shape[-1]
            return ConvBNLayer(features, ksize, 1, (ksize[0] // 2, ksize[1] // 2), act="swish",
                               bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl,
                               dtype=self.dtype, kernel_init=kaiming_uniform(fan_in),
                               name=name)(y, train)

        z = jax.lax.stop_gradient(x) if self.use_guide else x
        shortcut = z
        z = conv(z, cin // 8, (kh, kw), "conv1")
        z = conv(z, self.hidden_dims, (1, 1), "conv2")
        b, h, w, c = z.shape
        z = z.reshape(b, h * w, c)  # row-major tokens, as Paddle's flatten(2) of NCHW
        for i in range(self.depth):
            z = Block(self.hidden_dims, self.num_heads, "Global", (h, w),
                      mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                      drop_path=self.drop_path, epsilon=1e-5, dtype=self.dtype,
                      drop=self.drop_rate, attn_drop=self.attn_drop_rate, act="swish",
                      name=f"svtr_block_{i}")(z, train)
        z = layer_norm(1e-6, self.dtype, "norm")(z).reshape(b, h, w, c)
        z = conv(z, cin, (1, 1), "conv3")
        z = jnp.concatenate([shortcut.astype(z.dtype), z], axis=-1)
        z = conv(z, cin // 8, (kh, kw), "conv4")
        return conv(z, self.dims, (1, 1), "conv1x1")
