"""CTC head (PaddleOCR ``ppocr/modeling/heads/rec_ctc_head.py``)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxocr.models.layers import uniform_init

Array = jax.Array


class Linear(nn.Module):
    """Paddle-style Linear with weight (in, out) and bias, both Uniform(+-1/sqrt(in))."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = uniform_init(1.0 / math.sqrt(x.shape[-1]))
        w = self.param("kernel", init, (x.shape[-1], self.features), jnp.float32)
        b = self.param("bias", init, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        return jnp.dot(x, w.astype(self.dtype)) + b.astype(self.dtype)


class CTCHead(nn.Module):
    """Linear in -> out_channels (or two Linears without activation when ``mid_channels``).

    ``train=True`` returns logits (B, T, C); ``train=False`` softmax probabilities, as Paddle does
    in eval mode.  Outputs are float32 whatever the compute dtype (the CTC loss wants f32).
    ``fc_decay`` is the per-parameter L2 factor of these weights; the module does not use it --
    the optimizer reads it from the config.
    """

    out_channels: int
    fc_decay: float = 0.0004
    mid_channels: int | None = None
    return_feats: bool = False
    dtype: Any = jnp.float32

    @classmethod
    def l2_decay(cls, cfg: dict) -> dict[tuple, float]:
        """The head's own L2 factor, on all its parameters (Paddle's ParamAttr L2Decay)."""
        return {(): float(cfg.get("fc_decay", cls.fc_decay))}

    @nn.compact
    def __call__(self, x: Array, train: bool = False):
        if self.mid_channels is None:
            logits = Linear(self.out_channels, self.dtype, name="fc")(x)
        else:
            x = Linear(self.mid_channels, self.dtype, name="fc1")(x)
            logits = Linear(self.out_channels, self.dtype, name="fc2")(x)
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # bf16 -> f32
        if not train:
            return jax.nn.softmax(logits, axis=-1)
        if self.return_feats:
            return x, logits
        return logits
