"""TPS: STAR-Net's thin-plate-spline rectification (PaddleOCR ``ppocr/modeling/transforms/
tps.py``, after RARE and clovaai's deep-text-recognition-benchmark).

A localisation network (four 3x3 ConvBN-ReLU layers, 2x2 max pools between them, a global
average pool, fc-ReLU-fc) predicts ``num_fiducial`` source points in [-1, 1]; its last fc starts
at zero weights with a bias on RARE's curved initial fiducials. The grid generator solves the
TPS that maps the fixed target fiducials (two straight rows along the top and bottom edges)
onto them, evaluates it at every output pixel centre and samples the input there (bilinear,
align_corners, zeros outside). Output size = input size. Inputs and outputs are NHWC.

``loc_lr`` scales the localisation network's learning rate (Paddle's ParamAttr learning_rate);
the grid generator's ``ex_fc`` (Paddle keeps it at zero with learning rate 0: its output is the
TPS side conditions, always 0) is a parameter with rate 0. ``lr_multipliers`` gives both to the
optimizer.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxocr.models.layers import ConvBNLayer, uniform_init
from jaxocr.models.transforms.stn import grid_sample

Array = jax.Array
EPS = 1e-6


def initial_fiducials(n: int) -> np.ndarray:
    """RARE's Fig. 6 (a): x across [-1, 1], the top row rising from 0 to -1, the bottom falling
    from 1 to 0 -- (n, 2) as (x, y)."""
    xs = np.linspace(-1.0, 1.0, n // 2)
    top = np.stack([xs, np.linspace(0.0, -1.0, n // 2)], axis=1)
    bottom = np.stack([xs, np.linspace(1.0, 0.0, n // 2)], axis=1)
    return np.concatenate([top, bottom], axis=0)


def target_fiducials(n: int) -> np.ndarray:
    xs = np.linspace(-1.0, 1.0, n // 2)
    return np.concatenate([np.stack([xs, -np.ones(n // 2)], axis=1),
                           np.stack([xs, np.ones(n // 2)], axis=1)], axis=0)


def grid_matrices(n: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(inverse of the (n+3)^2 TPS system, P_hat (H*W, n+3)) in float64, PaddleOCR's layout:
    system rows [1, C, U(C, C)] for the n fiducials, then [0, C^T] and [0, 1]; P_hat rows
    [1, p, U(p, C)] for every output pixel centre p (row-major), U(r) = r^2 log r."""
    c = target_fiducials(n)
    r = np.linalg.norm(c[None] - c[:, None], axis=2) + np.eye(n)
    system = np.zeros((n + 3, n + 3))
    system[:n, 0], system[:n, 1:3], system[:n, 3:] = 1.0, c, r ** 2 * np.log(r)
    system[n:n + 2, 3:], system[n + 2, 3:] = c.T, 1.0
    xs = (np.arange(-width, width, 2) + 1.0) / width
    ys = (np.arange(-height, height, 2) + 1.0) / height
    p = np.stack(np.meshgrid(xs, ys), axis=2).reshape(-1, 2)  # (x, y), row-major
    d = np.linalg.norm(p[:, None] - c[None], axis=2)
    p_hat = np.concatenate([np.ones((len(p), 1)), p, d ** 2 * np.log(d + EPS)], axis=1)
    return np.linalg.inv(system), p_hat


class LocalizationNetwork(nn.Module):
    num_fiducial: int = 20
    model_name: str = "small"
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        filters, fc_dim = ([64, 128, 256, 512], 256) if self.model_name == "large" else (
            [16, 32, 64, 128], 64)
        for i, features in enumerate(filters):
            if i:
                x = nn.max_pool(x, (2, 2), (2, 2))
            x = ConvBNLayer(features, 3, 1, act="relu", bn_axis_name=self.bn_axis_name,
                            conv_impl=self.conv_impl, dtype=self.dtype, name=f"loc_conv{i}")(
                x, train)
        x = x.mean(axis=(1, 2))
        x = nn.relu(nn.Dense(fc_dim, kernel_init=uniform_init(1.0 / np.sqrt(filters[-1])),
                             dtype=self.dtype, name="fc1")(x))
        bias = initial_fiducials(self.num_fiducial).reshape(-1).astype(np.float32)
        x = nn.Dense(self.num_fiducial * 2, kernel_init=nn.initializers.zeros,
                     bias_init=lambda *_: jnp.asarray(bias), dtype=self.dtype, name="fc2")(x)
        return x.reshape(-1, self.num_fiducial, 2).astype(jnp.float32)


class TPS(nn.Module):
    num_fiducial: int = 20
    loc_lr: float = 1.0
    model_name: str = "small"
    in_channels: int = 3
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @staticmethod
    def lr_multipliers(cfg: dict) -> dict[str, float]:
        """Learning-rate multipliers by parameter sub-path under this part."""
        return {"loc_net": float(cfg.get("loc_lr", 1.0)), "ex_fc": 0.0}

    @nn.compact
    def __call__(self, image: Array, train: bool = False) -> Array:
        if self.model_name not in ("small", "large"):
            raise ValueError(f"Transform TPS.model_name must be small or large, got "
                             f"{self.model_name!r}")
        b, h, w, _ = image.shape
        fiducials = LocalizationNetwork(self.num_fiducial, self.model_name, self.bn_axis_name,
                                        self.conv_impl, self.dtype, name="loc_net")(image, train)
        side = nn.Dense(6, kernel_init=nn.initializers.zeros, name="ex_fc")(
            fiducials.reshape(b, -1))
        side = jax.lax.stop_gradient(side.reshape(b, 3, 2))
        inverse, p_hat = (jnp.asarray(m, jnp.float32)
                          for m in grid_matrices(self.num_fiducial, h, w))
        transform = jnp.einsum("ij,bjk->bik", inverse, jnp.concatenate([fiducials, side], 1))
        grid = jnp.einsum("pj,bjk->bpk", p_hat, transform).reshape(b, h, w, 2)
        return grid_sample(image.astype(jnp.float32), (grid + 1.0) / 2.0).astype(image.dtype)
