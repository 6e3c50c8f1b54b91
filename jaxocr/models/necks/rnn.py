"""Sequence necks (PaddleOCR ``ppocr/modeling/necks/rnn.py``): Im2Seq and the BiLSTM encoder.

The LSTM is written out to match ``paddle.nn.LSTM`` exactly: per layer and direction the
parameters ``weight_ih`` (4H, in), ``weight_hh`` (4H, H), ``bias_ih`` (4H) and ``bias_hh`` (4H)
(Paddle keeps both biases), gate order i, f, g(cell), o, init Uniform(+-1/sqrt(H)).  The
module names ``lstm/layer_{l}_cell_fw|cell_bw`` mirror Paddle's state-dict keys
``lstm.{l}.cell_fw|cell_bw.*``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from jaxocr.config import ConfigError
from jaxocr.models.layers import uniform_init
from jaxocr.models.necks.svtr import EncoderWithSVTR

Array = jax.Array


def lstm_recurrence(xw: Array, weight_hh: Array, reverse: bool = False, unroll: int = 8
                    ) -> Array:
    """Run an LSTM over a precomputed input projection.

    xw: (B, T, 4H) = x @ W_ih^T + b_ih + b_hh for all steps; weight_hh: (4H, H).
    Returns hidden states (B, T, H), in input time order also when ``reverse``.
    Under bfloat16 the matmuls and h run in xw's dtype but the cell state and the gate
    arithmetic stay float32: c accumulates over the whole sequence.
    """
    b, t, h4 = xw.shape
    hidden = h4 // 4
    whh_t = weight_hh.T  # (H, 4H)

    def step(carry, xw_t):
        h, c = carry
        gates = (xw_t + h @ whh_t).astype(jnp.float32)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = (jax.nn.sigmoid(o) * jnp.tanh(c)).astype(xw.dtype)
        return (h, c), h

    # zeros_like (not jnp.zeros) keeps xw's varying-manual-axes type inside shard_map.
    h0 = jnp.zeros_like(xw[:, 0, :hidden])
    c0 = jnp.zeros_like(xw[:, 0, :hidden], dtype=jnp.float32)
    # a symbolic length (a serving export's any width) cannot be split into unrolled blocks
    unroll = max(1, min(unroll, t)) if isinstance(t, int) else 1
    _, hs = lax.scan(step, (h0, c0), jnp.swapaxes(xw, 0, 1), reverse=reverse, unroll=unroll)
    return jnp.swapaxes(hs, 0, 1)


class LSTMDirection(nn.Module):
    """One direction of one LSTM layer (Paddle ``LSTMCell`` run over the sequence)."""

    hidden_size: int
    reverse: bool = False
    unroll: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        hdim, din = self.hidden_size, x.shape[-1]
        init = uniform_init(1.0 / math.sqrt(hdim))
        w_ih = self.param("weight_ih", init, (4 * hdim, din), jnp.float32)
        w_hh = self.param("weight_hh", init, (4 * hdim, hdim), jnp.float32)
        b_ih = self.param("bias_ih", init, (4 * hdim,), jnp.float32)
        b_hh = self.param("bias_hh", init, (4 * hdim,), jnp.float32)
        dt = self.dtype
        x = x.astype(dt)
        # Input projection for all time steps at once, outside the recurrence.
        xw = jnp.einsum("btd,gd->btg", x, w_ih.astype(dt)) + (b_ih + b_hh).astype(dt)
        return lstm_recurrence(xw, w_hh.astype(dt), reverse=self.reverse, unroll=self.unroll)


class LSTM(nn.Module):
    """``paddle.nn.LSTM(in, hidden, num_layers, direction, dropout)`` on batch-major input
    (B, T, C); `dropout` applies in training to the input of every layer but the first."""

    hidden_size: int
    num_layers: int = 1
    direction: str = "forward"  # 'forward' | 'bidirectional' (Paddle also says 'bidirect')
    unroll: int = 8
    dtype: Any = jnp.float32
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.direction not in ("forward", "bidirectional", "bidirect"):
            raise ValueError(f"LSTM direction must be 'forward' or 'bidirectional', "
                             f"got {self.direction!r}")
        bi = self.direction != "forward"
        kw = dict(hidden_size=self.hidden_size, unroll=self.unroll, dtype=self.dtype)
        for layer in range(self.num_layers):
            if layer > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            if bi:
                fw = LSTMDirection(reverse=False, name=f"layer_{layer}_cell_fw", **kw)(x)
                bw = LSTMDirection(reverse=True, name=f"layer_{layer}_cell_bw", **kw)(x)
                x = jnp.concatenate([fw, bw], axis=-1)
            else:
                x = LSTMDirection(reverse=False, name=f"layer_{layer}_cell", **kw)(x)
        return x


def im2seq(x: Array) -> Array:
    """(B, 1, W, C) NHWC -> (B, W, C); PaddleOCR requires the feature height to be 1."""
    if x.ndim != 4 or x.shape[1] != 1:  # a config error: one line, not a traceback
        raise ConfigError(f"Im2Seq needs a feature map of height 1 (B, 1, W, C), got "
                          f"{tuple(x.shape)}: the images' height (RecResizeImg image_shape) "
                          f"does not suit the backbone's strides")
    return x[:, 0]


class SequenceEncoder(nn.Module):
    """PaddleOCR ``SequenceEncoder``: 'reshape' (Im2Seq only), 'rnn' (Im2Seq + 2-layer BiLSTM)
    or 'svtr' (EncoderWithSVTR on the feature map, then Im2Seq; its options below keep
    EncoderWithSVTR's defaults)."""

    encoder_type: str = "rnn"
    hidden_size: int = 48
    unroll: int = 8
    # encoder_type 'svtr'
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

    ENCODER_TYPES = ("reshape", "rnn", "svtr")

    def out_channels(self, in_channels: int) -> int:
        return {"reshape": in_channels, "rnn": 2 * self.hidden_size,
                "svtr": self.dims}[self.encoder_type]

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.encoder_type not in self.ENCODER_TYPES:
            raise ValueError(f"SequenceEncoder encoder_type {self.encoder_type!r} is not "
                             f"supported; known: {list(self.ENCODER_TYPES)}")
        if self.encoder_type == "svtr":
            options = {f.name: getattr(self, f.name) for f in dataclasses.fields(EncoderWithSVTR)
                       if f.name not in ("parent", "name")}
            options["kernel_size"] = tuple(self.kernel_size)
            x = EncoderWithSVTR(**options, name="encoder")(x, train)
            return im2seq(x)
        x = im2seq(x)
        if self.encoder_type == "reshape":
            return x
        # EncoderWithRNN: nn.LSTM(in, hidden, direction='bidirectional', num_layers=2)
        return LSTM(self.hidden_size, num_layers=2, direction="bidirectional",
                    unroll=self.unroll, dtype=self.dtype, name="lstm")(x)
