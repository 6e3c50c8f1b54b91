"""STN_ON: thin-plate-spline rectification in front of SVTR (PaddleOCR
``ppocr/modeling/transforms/stn.py`` and ``tps_spatial_transformer.py``, after ASTER).

A small conv net looks at a downsized copy of the image and predicts ``num_control_points``
source points (x, y in [0, 1]); the TPS maps the fixed target points (two rows along the top
and bottom margins) onto them, and the output image is sampled bilinearly from the full-size
input through that mapping. Inputs and outputs are NHWC.
"""
from __future__ import annotations

import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxocr.models.layers import Conv, batch_norm

Array = jax.Array


def _ctrl_points(n: int, margin_x: float, margin_y: float) -> np.ndarray:
    """n points: n/2 evenly along the top margin, then n/2 along the bottom, as (x, y)."""
    xs = np.linspace(margin_x, 1.0 - margin_x, n // 2)
    top = np.stack([xs, np.full(n // 2, margin_y)], axis=1)
    bottom = np.stack([xs, np.full(n // 2, 1.0 - margin_y)], axis=1)
    return np.concatenate([top, bottom], axis=0)


def _tps_repr(points: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
    """U(r) = r^2 log r (= 0.5 r^2 log r^2, and 0 at r = 0) between points and control points."""
    d2 = ((points[:, None, :] - ctrl[None, :, :]) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = 0.5 * d2 * np.log(d2)
    return np.nan_to_num(u, nan=0.0)


def tps_matrices(out_hw: Sequence[int], n: int, margins: Sequence[float]):
    """(inverse kernel (n+3, n+3), target coordinate representation (H*W, n+3)), float32."""
    target = _ctrl_points(n, *margins)
    kernel = np.zeros((n + 3, n + 3))
    kernel[:n, :n] = _tps_repr(target, target)
    kernel[:n, -3] = kernel[-3, :n] = 1
    kernel[:n, -2:] = target
    kernel[-2:, :n] = target.T
    h, w = out_hw
    yx = np.array(list(itertools.product(range(h), range(w))), np.float64)
    coords = np.stack([yx[:, 1] / (w - 1), yx[:, 0] / (h - 1)], axis=1)  # (x, y) in [0, 1]
    rep = np.concatenate([_tps_repr(coords, target), np.ones((h * w, 1)), coords], axis=1)
    return np.linalg.inv(kernel).astype(np.float32), rep.astype(np.float32)


def resize_align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights with align_corners=True."""
    m = np.zeros((n_out, n_in), np.float32)
    pos = np.linspace(0, n_in - 1, n_out) if n_out > 1 else np.zeros(1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def grid_sample(image: Array, grid: Array) -> Array:
    """Bilinear sampling with align_corners=True and zero padding (Paddle's grid_sample
    defaults). image (B, H, W, C); grid (B, h, w, 2) holds (x, y), [0, 1] spanning the first to
    the last pixel centre; a neighbour outside the image counts as 0."""
    b, h_in, w_in, c = image.shape
    x = grid[..., 0] * (w_in - 1)
    y = grid[..., 1] * (h_in - 1)
    x0, y0 = jnp.floor(x), jnp.floor(y)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    flat = image.reshape(b, h_in * w_in, c)

    def at(yy, xx):
        inside = ((xx >= 0) & (xx <= w_in - 1) & (yy >= 0) & (yy <= h_in - 1))[..., None]
        yy, xx = jnp.clip(yy, 0, h_in - 1), jnp.clip(xx, 0, w_in - 1)
        idx = (yy * w_in + xx).astype(jnp.int32).reshape(b, -1, 1)
        return jnp.take_along_axis(flat, idx, axis=1).reshape(*grid.shape[:3], c) * inside

    top = at(y0, x0) * (1 - wx) + at(y0, x0 + 1) * wx
    bottom = at(y0 + 1, x0) * (1 - wx) + at(y0 + 1, x0 + 1) * wx
    return top * (1 - wy) + bottom * wy


class STNHead(nn.Module):
    """Six conv3x3-BN-ReLU blocks (max-pooled 2x2 between them), fc 512 + BN + ReLU, then a
    zero-initialised fc whose bias places the control points at the image margins."""

    num_ctrlpoints: int = 20
    activation: str = "none"
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        for i, features in enumerate((32, 64, 128, 256, 256, 256)):
            if i:
                x = nn.max_pool(x, (2, 2), (2, 2))
            std = float(np.sqrt(2.0 / (9 * features)))
            x = Conv(features, 3, 1, 1, use_bias=True, impl=self.conv_impl, dtype=self.dtype,
                     kernel_init=nn.initializers.normal(std), name=f"conv{i}")(x)
            x = nn.relu(batch_norm(train, self.bn_axis_name, self.dtype, name=f"bn{i}")(x))
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # Paddle flattens NCHW
        x = nn.Dense(512, kernel_init=nn.initializers.normal(0.001), dtype=self.dtype,
                     param_dtype=jnp.float32, name="fc1")(x)
        x = nn.relu(batch_norm(train, self.bn_axis_name, self.dtype, name="fc1_bn")(x))
        points = _ctrl_points(self.num_ctrlpoints, 0.01, 0.01).astype(np.float32)
        if self.activation == "sigmoid":
            points = -np.log(1.0 / points - 1.0)
        x = nn.Dense(self.num_ctrlpoints * 2, kernel_init=nn.initializers.zeros,
                     bias_init=lambda *_: jnp.asarray(points.reshape(-1)), dtype=self.dtype,
                     param_dtype=jnp.float32, name="fc2")(0.1 * x)
        if self.activation == "sigmoid":
            x = jax.nn.sigmoid(x)
        return x.reshape(-1, self.num_ctrlpoints, 2).astype(jnp.float32)


class STN_ON(nn.Module):  # noqa: N801  (PaddleOCR's config name)
    tps_inputsize: Sequence[int] = (32, 64)
    tps_outputsize: Sequence[int] = (32, 100)
    num_control_points: int = 20
    tps_margins: Sequence[float] = (0.05, 0.05)
    stn_activation: str = "none"
    in_channels: int = 3
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, image: Array, train: bool = False) -> Array:
        if self.stn_activation not in ("none", "sigmoid", None):
            raise ValueError(f"STN_ON.stn_activation must be none or sigmoid, got "
                             f"{self.stn_activation!r}")
        _, h, w, _ = image.shape
        ry = jnp.asarray(resize_align_corners_matrix(h, self.tps_inputsize[0]))
        rx = jnp.asarray(resize_align_corners_matrix(w, self.tps_inputsize[1]))
        small = jnp.einsum("oh,bhwc,pw->bopc", ry, image.astype(jnp.float32), rx)
        ctrl = STNHead(self.num_control_points, self.stn_activation or "none",
                       self.bn_axis_name, self.conv_impl, self.dtype, name="stn_head")(
            small.astype(self.dtype), train)
        inverse_kernel, target_repr = tps_matrices(self.tps_outputsize, self.num_control_points,
                                                   self.tps_margins)
        padded = jnp.pad(ctrl, ((0, 0), (0, 3), (0, 0)))           # (B, n + 3, 2)
        mapping = jnp.einsum("ij,bjk->bik", inverse_kernel, padded)
        source = jnp.einsum("pj,bjk->bpk", target_repr, mapping)   # (B, H*W, 2)
        grid = jnp.clip(source, 0.0, 1.0).reshape(-1, *self.tps_outputsize, 2)
        return grid_sample(image.astype(jnp.float32), grid).astype(image.dtype)
