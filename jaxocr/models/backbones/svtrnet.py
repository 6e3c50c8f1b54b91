"""SVTRNet (PaddleOCR ``ppocr/modeling/backbones/rec_svtrnet.py``; SVTR, Du et al., IJCAI 2022).

A single visual model: the image is cut into a grid of patch tokens (two stride-2 ConvBN
layers), three stages of transformer blocks mix them — "Local" blocks attend only within a
7x11 window of the token grid (a fixed -inf mask), "Global" blocks attend everywhere — and a
strided conv between stages halves the height. The last stage pools the grid to
``out_char_num`` columns, one per CTC time step.

Inputs are NHWC; tokens are ordered row-major (h * W + w), as Paddle's ``flatten(2)`` on NCHW,
so parameters map one-to-one onto a Paddle state dict.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxocr.models.layers import Conv, batch_norm, hardswish

Array = jax.Array

trunc_normal = nn.initializers.truncated_normal(0.02)


def gelu(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=False)  # Paddle's nn.GELU is the exact (erf) form


def kaiming_uniform(fan_in: int):
    """Paddle's KaimingUniform: U(±sqrt(6 / fan_in))."""
    bound = float(np.sqrt(6.0 / fan_in))
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype,
                                                                     -bound, bound)


def local_attention_mask(h: int, w: int, kh: int, kw: int) -> np.ndarray:
    """(h*w, h*w) additive mask: 0 where token j lies in the kh x kw window centred on token i,
    -inf elsewhere."""
    ys, xs = np.divmod(np.arange(h * w), w)
    near = (np.abs(ys[:, None] - ys[None, :]) <= kh // 2) & \
           (np.abs(xs[:, None] - xs[None, :]) <= kw // 2)
    return np.where(near, 0.0, -np.inf).astype(np.float32)


def adaptive_avg_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_in, n_out) averaging weights of Paddle's AdaptiveAvgPool along one axis: bin i covers
    [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out))."""
    m = np.zeros((n_in, n_out), np.float32)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[start:end, i] = 1.0 / (end - start)
    return m


class Dense(nn.Module):
    """Linear with SVTR's init: weight trunc-normal(0.02), bias zeros."""

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return nn.Dense(self.features, use_bias=self.use_bias, kernel_init=trunc_normal,
                        dtype=self.dtype, param_dtype=jnp.float32, name="fc")(x)


def layer_norm(epsilon: float, dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32, name=name)


class Attention(nn.Module):
    dim: int
    num_heads: int
    mixer: str = "Global"          # "Local" adds the window mask
    hw: Sequence[int] = (8, 25)
    local_k: Sequence[int] = (7, 11)
    qkv_bias: bool = True
    dtype: Any = jnp.float32
    attn_drop: float = 0.0
    proj_drop: float = 0.0

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        b, n, _ = x.shape
        hd = self.dim // self.num_heads
        qkv = Dense(3 * self.dim, self.qkv_bias, self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b, n, 3, self.num_heads, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * hd ** -0.5, qkv[1], qkv[2]
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
        if self.mixer == "Local":
            logits = logits + local_attention_mask(*self.hw, *self.local_k).astype(logits.dtype)
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        attn = nn.Dropout(self.attn_drop, deterministic=not train)(attn)
        out = jnp.einsum("bhqk,bhkd->bqhd", attn, v).reshape(b, n, self.dim)
        out = Dense(self.dim, True, self.dtype, name="proj")(out)
        return nn.Dropout(self.proj_drop, deterministic=not train)(out)


ACTIVATIONS = {"gelu": gelu, "swish": nn.swish}


class Block(nn.Module):
    """Pre-LN transformer block (prenorm False in Paddle's naming) with stochastic depth.
    `drop` is Paddle's Block(drop=): dropout after the attention projection and in the MLP;
    `act` the MLP's activation (GELU; Swish in PP-OCRv3's SVTR neck)."""

    dim: int
    num_heads: int
    mixer: str = "Global"
    hw: Sequence[int] = (8, 25)
    local_k: Sequence[int] = (7, 11)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0
    epsilon: float = 1e-6
    prenorm: bool = False
    dtype: Any = jnp.float32
    drop: float = 0.0
    attn_drop: float = 0.0
    act: str = "gelu"

    def _drop_path(self, y: Array, train: bool) -> Array:
        if not train or self.drop_path == 0.0:
            return y
        keep = 1.0 - self.drop_path
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (y.shape[0], 1, 1))
        return y * mask.astype(y.dtype) / keep

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if self.mixer not in ("Global", "Local"):
            raise ValueError(f"SVTRNet mixer must be Global or Local, got {self.mixer!r}")
        attention = Attention(self.dim, self.num_heads, self.mixer, tuple(self.hw),
                              tuple(self.local_k), self.qkv_bias, self.dtype, self.attn_drop,
                              self.drop, name="mixer")
        mixer = lambda y: attention(y, train)
        norm1 = layer_norm(self.epsilon, self.dtype, "norm1")
        norm2 = layer_norm(self.epsilon, self.dtype, "norm2")
        act = ACTIVATIONS[self.act]
        dropout = nn.Dropout(self.drop, deterministic=not train)

        def mlp(y):
            y = act(Dense(int(self.dim * self.mlp_ratio), True, self.dtype, name="fc1")(y))
            return dropout(Dense(self.dim, True, self.dtype, name="fc2")(dropout(y)))

        if self.prenorm:  # Paddle's "prenorm" normalises after the residual sum
            x = norm1(x + self._drop_path(mixer(x), train))
            return norm2(x + self._drop_path(mlp(x), train))
        x = x + self._drop_path(mixer(norm1(x)), train)
        return x + self._drop_path(mlp(norm2(x)), train)


class ConvBN(nn.Module):
    """PatchEmbed's conv (3x3, stride 2, with bias, Kaiming-uniform) -> BN -> GELU."""

    features: int
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = Conv(self.features, 3, 2, 1, use_bias=True, impl=self.conv_impl, dtype=self.dtype,
                 kernel_init=kaiming_uniform(9 * x.shape[-1]), name="conv")(x)
        return gelu(batch_norm(train, self.bn_axis_name, self.dtype, name="norm")(x))


class SVTRNet(nn.Module):
    """Paddle's defaults are SVTR-Tiny; configs set the rest (see configs/rec/rec_svtrnet.yml).

    Only what PaddleOCR's SVTR configs use is built: patch embedding "pope" with sub_num 2,
    Global/Local mixers, "Conv" patch merging, the last stage. Other options raise.
    """

    img_size: Sequence[int] = (32, 100)
    in_channels: int = 3
    embed_dim: Sequence[int] = (64, 128, 256)
    depth: Sequence[int] = (3, 6, 3)
    num_heads: Sequence[int] = (2, 4, 8)
    mixer: Sequence[str] = ("Local",) * 6 + ("Global",) * 6
    local_mixer: Sequence[Sequence[int]] = ((7, 11), (7, 11), (7, 11))
    patch_merging: str | None = "Conv"
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    last_drop: float = 0.1
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    epsilon: float = 1e-6
    out_channels: int = 192
    out_char_num: int = 25
    last_stage: bool = True
    sub_num: int = 2
    prenorm: bool = True
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    def _check(self):
        unsupported = {"patch_merging": self.patch_merging not in ("Conv", None, "None"),
                       "sub_num": self.sub_num != 2, "drop_rate": self.drop_rate != 0,
                       "attn_drop_rate": self.attn_drop_rate != 0}
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise ValueError(f"SVTRNet: {bad} not supported here (PaddleOCR's SVTR configs use "
                             "patch_merging Conv, sub_num 2, drop_rate 0, attn_drop_rate 0)")
        if len(self.mixer) != sum(self.depth):
            raise ValueError(f"SVTRNet: {len(self.mixer)} mixers for {sum(self.depth)} blocks")

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        self._check()
        b, h_img, w_img, _ = x.shape
        if (h_img, w_img) != tuple(self.img_size):
            raise ValueError(f"SVTRNet: input {h_img}x{w_img} does not match img_size "
                             f"{list(self.img_size)}")
        e0, e1, e2 = self.embed_dim
        x = ConvBN(e0 // 2, self.bn_axis_name, self.conv_impl, self.dtype, name="patch_embed_0")(
            x, train)
        x = ConvBN(e0, self.bn_axis_name, self.conv_impl, self.dtype, name="patch_embed_1")(
            x, train)
        h, w = x.shape[1], x.shape[2]
        x = x.reshape(b, h * w, e0)
        x = x + self.param("pos_embed", trunc_normal, (1, h * w, e0), jnp.float32).astype(x.dtype)

        merge = self.patch_merging == "Conv"
        dpr = np.linspace(0, self.drop_path_rate, sum(self.depth))
        start = 0
        for stage, dim in enumerate(self.embed_dim):
            if stage and merge:  # conv 3x3 stride (2, 1), then LayerNorm (eps 1e-5)
                grid = x.reshape(b, h, w, x.shape[-1])
                x = Conv(dim, 3, (2, 1), 1, use_bias=True, impl=self.conv_impl, dtype=self.dtype,
                         name=f"sub_sample{stage}_conv")(grid)
                h = x.shape[1]
                x = layer_norm(1e-5, self.dtype, f"sub_sample{stage}_norm")(
                    x.reshape(b, h * w, dim))
            for i in range(self.depth[stage]):
                x = Block(dim, self.num_heads[stage], self.mixer[start + i], (h, w),
                          tuple(self.local_mixer[stage]), self.mlp_ratio, self.qkv_bias,
                          float(dpr[start + i]), self.epsilon, self.prenorm, self.dtype,
                          name=f"blocks{stage + 1}_{i}")(x, train)
            start += self.depth[stage]
        if not self.prenorm:
            x = layer_norm(self.epsilon, self.dtype, "norm")(x)
        if not self.last_stage:
            return x
        grid = x.reshape(b, h, w, e2).mean(axis=1)                    # pool height to 1
        pool = jnp.asarray(adaptive_avg_pool_matrix(w, self.out_char_num), grid.dtype)
        x = jnp.einsum("bwc,wt->btc", grid, pool)[:, None]            # (B, 1, T, C)
        x = Conv(self.out_channels, 1, impl=self.conv_impl, dtype=self.dtype, name="last_conv")(x)
        x = hardswish(x)
        # Paddle's Dropout(mode="downscale_in_infer"): unscaled mask in training, x(1-p) in eval
        if train and self.last_drop:
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.last_drop, x.shape)
            return x * keep.astype(x.dtype)
        return x * (1.0 - self.last_drop)
