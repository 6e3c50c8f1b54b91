"""SARHead: the attention branch PP-OCRv3 trains beside CTC (PaddleOCR
``ppocr/modeling/heads/rec_sar_head.py``, after MMOCR's SAR; Li et al., AAAI 2019).

SAREncoder max-pools the (B, H, W, C) map over its height, runs a 2-layer LSTM over the
columns and keeps the state at the last valid column (from `valid_ratio`) as the holistic
feature. ParallelSARDecoder, teacher-forced, runs a 2-layer LSTM over [holistic, embedded
label tokens], attends over the valid part of the 2-D map from every step and classifies each
step from (state, glimpse, holistic). Only the training forward exists: in PP-OCRv3 the branch
shapes the backbone and is dropped at inference (MultiHead answers with CTC in eval mode).

Classes (`out_channels` = N + 3 for N dictionary characters): 0..N-1 the characters, N
unknown, N+1 start/end, N+2 padding; the prediction has N + 2 (no padding class).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxocr.models.layers import Conv
from jaxocr.models.necks.rnn import LSTM

Array = jax.Array


def linear(features: int, dtype, name: str) -> nn.Dense:
    """paddle.nn.Linear with its default init: Xavier-uniform weight, zero bias."""
    return nn.Dense(features, kernel_init=nn.initializers.glorot_uniform(), dtype=dtype,
                    param_dtype=jnp.float32, name=name)


def valid_steps(valid_ratio: Array, steps: int) -> Array:
    """min(steps, ceil(valid_ratio * steps)) per row, as Paddle computes it (float32)."""
    return jnp.minimum(steps, jnp.ceil(valid_ratio.astype(jnp.float32) * steps)).astype(jnp.int32)


class SAREncoder(nn.Module):
    enc_dim: int = 512
    enc_drop_rnn: float = 0.1
    unroll: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feat: Array, valid_ratio: Array, train: bool) -> Array:
        columns = jnp.max(feat, axis=1)  # (B, W, C)
        states = LSTM(self.enc_dim, num_layers=2, unroll=self.unroll, dtype=self.dtype,
                      dropout=self.enc_drop_rnn, name="rnn_encoder")(columns, train)
        t = states.shape[1]
        last = (valid_steps(valid_ratio, t) - 1) % t  # a ratio of 0 indexes -1, the last
        holistic = jnp.take_along_axis(states, last[:, None, None], axis=1)[:, 0]
        return linear(self.enc_dim, self.dtype, "linear")(holistic)


class ParallelSARDecoder(nn.Module):
    out_channels: int
    enc_dim: int = 512
    d_k: int = 512
    dec_drop_rnn: float = 0.0
    pred_dropout: float = 0.1
    unroll: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feat: Array, holistic: Array, label: Array, valid_ratio: Array,
                 train: bool) -> Array:
        padding_idx = self.out_channels - 1
        table = self.param("embedding", nn.initializers.glorot_uniform(),
                           (self.out_channels, self.enc_dim), jnp.float32)
        # Paddle's Embedding(padding_idx=): the padding token embeds to zeros, untrained
        tokens = table[label] * (label != padding_idx)[..., None]
        holistic = holistic[:, None].astype(self.dtype)
        decoder_in = jnp.concatenate([holistic, tokens.astype(self.dtype)], axis=1)
        y = LSTM(self.enc_dim, num_layers=2, unroll=self.unroll, dtype=self.dtype,
                 dropout=self.dec_drop_rnn, name="rnn_decoder")(decoder_in, train)

        query = linear(self.d_k, self.dtype, "conv1x1_1")(y)                  # (B, T, d_k)
        key = Conv(self.d_k, 3, 1, 1, use_bias=True, impl="xla", dtype=self.dtype,
                   name="conv3x3_1")(feat)                                      # (B, H, W, d_k)
        energy = jnp.tanh(key[:, None] + query[:, :, None, None])            # (B, T, H, W, d_k)
        score = linear(1, self.dtype, "conv1x1_2")(energy)[..., 0].astype(jnp.float32)
        b, t, h, w = score.shape
        # columns past the valid width get no attention; at least one stays (a ratio of 0,
        # which Paddle never sees, would make every score -inf)
        width = jnp.maximum(valid_steps(valid_ratio, w), 1)
        score = jnp.where(jnp.arange(w)[None, None, None, :] < width[:, None, None, None],
                          score, -jnp.inf)
        weights = jax.nn.softmax(score.reshape(b, t, h * w), axis=-1).reshape(b, t, h, w)
        glimpse = jnp.einsum("bthw,bhwc->btc", weights.astype(self.dtype),
                             feat.astype(self.dtype))
        joint = jnp.concatenate([y, glimpse, jnp.broadcast_to(holistic, (b, t, holistic.shape[-1]))],
                                axis=-1)
        logits = linear(self.out_channels - 1, self.dtype, "prediction")(joint)
        logits = nn.Dropout(self.pred_dropout, deterministic=not train)(logits)
        return logits[:, 1:].astype(jnp.float32)  # the holistic step predicts nothing


class SARHead(nn.Module):
    """Paddle's SARHead(in_channels, out_channels, enc_dim, max_text_length, ...): the LSTM
    encoder and the teacher-forced parallel decoder. Bidirectional and GRU variants and the
    unmasked, non-concatenating decoder are not supported (no shipped config uses them)."""

    out_channels: int
    enc_dim: int = 512
    max_text_length: int = 30
    enc_bi_rnn: bool = False
    enc_drop_rnn: float = 0.1
    enc_gru: bool = False
    dec_bi_rnn: bool = False
    dec_drop_rnn: float = 0.0
    dec_gru: bool = False
    d_k: int = 512
    pred_dropout: float = 0.1
    pred_concat: bool = True
    unroll: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feat: Array, label: Array, valid_ratio: Array, train: bool = True
                 ) -> Array:
        unsupported = [k for k in ("enc_bi_rnn", "enc_gru", "dec_bi_rnn", "dec_gru")
                       if getattr(self, k)] + ([] if self.pred_concat else ["pred_concat"])
        if unsupported:
            raise ValueError(f"SARHead: {unsupported} are not supported (the LSTM, "
                             "unidirectional, concatenating SAR of PaddleOCR's configs is)")
        holistic = SAREncoder(self.enc_dim, self.enc_drop_rnn, self.unroll, self.dtype,
                              name="encoder")(feat, valid_ratio, train)
        return ParallelSARDecoder(self.out_channels, self.enc_dim, self.d_k, self.dec_drop_rnn,
                                  self.pred_dropout, self.unroll, self.dtype,
                                  name="decoder")(feat, holistic, label, valid_ratio, train)
