"""PP-YOLOE's ET-head (PaddleDetection ``ppdet/modeling/heads/ppyoloe_head.py``, release/2.7.1):
the network part, anchors and the DFL decode; the loss and assigners live elsewhere.

Per level i with feature ``feat`` (C channels) and ``avg`` = its mean over H, W:

* ``stem_cls_i`` / ``stem_reg_i``: ESEAttn(feat, avg) = ConvBN1x1_act(feat * sigmoid(fc(avg))),
  fc a 1x1 conv with bias, weight Normal(0, 0.001), bias 0.
* ``pred_cls_i``: Conv3x3(C -> num_classes, bias) on stem_cls(feat, avg) + feat (the residual is
  on the cls branch only); weight 0, bias -log((1 - 0.01) / 0.01) (prior 0.01).
* ``pred_reg_i``: Conv3x3(C -> 4 * (reg_max + 1), bias) on stem_reg(feat, avg); weight 0,
  bias 1.0.  Channel layout side-major (as Paddle's reshape [B, 4, reg_max + 1, HW]):
  channel = side * (reg_max + 1) + bin, sides (l, t, r, b).

Output (float32 whatever the compute dtype), the same in train and eval:

* ``cls_logits`` (B, N, num_classes): logits; sigmoid belongs to the loss / post-process.
* ``reg_logits`` (B, N, 4, reg_max + 1): distribution logits over bins 0..reg_max.
* ``anchor_points`` (N, 2): (x, y) cell centres in input pixels, ((j, i) + offset) * stride.
* ``stride_tensor`` (N, 1).

N = sum over levels of H_i * W_i, levels concatenated in ``fpn_strides`` order (s32, s16, s8:
coarsest first, as Paddle), row-major inside a level (index i * W + j).  The anchors are numpy
constants from the static feature shapes (``generate_anchors``, Paddle's
``generate_anchors_for_grid_cell``, also returning the ATSS anchor boxes).

Paddle's ``proj_conv`` (a 1x1 conv reg_max + 1 -> 1, no bias, weight linspace(0, reg_max) with
``stop_gradient``) is the constant ``dfl_project`` here, not a parameter.  Paddle's
``model.parameters()`` does list its 17 weights (the EMA black-lists it, the optimizer skips
it), so a Paddle parameter count is this model's plus ``reg_max + 1``.  ``reg_range``
(PP-YOLOE-SOD) and ``use_shared_conv=False`` are not supported.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxocr.models.backbones.cspresnet import ConvBNLayer, RepVggBlock
from jaxocr.models.layers import Conv

Array = jax.Array


def bias_init_with_prob(prior_prob: float = 0.01) -> float:
    """Paddle ``bias_init_with_prob``: -log((1 - p) / p) (= -4.59512 for p = 0.01)."""
    return float(-np.log((1 - prior_prob) / prior_prob))


def _constant(value: float):
    def init(key, shape, dtype=jnp.float32):
        return jnp.full(shape, value, dtype)
    return init


def _normal(std: float):
    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)
    return init


class ESEAttn(nn.Module):
    """``conv(feat * sigmoid(fc(avg_feat)))``; ``attn_conv`` 'convbn' (ConvBN1x1 + act),
    'repvgg' (RepVggBlock) or None (no conv), as Paddle."""

    act: str = "swish"
    attn_conv: str | None = "convbn"
    deploy: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feat: Array, avg_feat: Array, train: bool) -> Array:
        c = feat.shape[-1]
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        w = Conv(c, 1, use_bias=True, kernel_init=_normal(0.001), impl=self.conv_impl,
                 dtype=self.dtype, name="fc")(avg_feat)
        x = feat * jax.nn.sigmoid(w)
        if self.attn_conv == "convbn":
            return ConvBNLayer(c, 1, 1, 0, act=self.act, name="conv", **kw)(x, train)
        if self.attn_conv == "repvgg":
            return RepVggBlock(c, act=self.act, deploy=self.deploy, name="conv", **kw)(x, train)
        if self.attn_conv is None:
            return x
        raise ValueError(f"ESEAttn: attn_conv must be 'convbn', 'repvgg' or None, got "
                         f"{self.attn_conv!r}")


def generate_anchors(shapes: Sequence[tuple[int, int]], fpn_strides: Sequence[int],
                     grid_cell_scale: float = 5.0, grid_cell_offset: float = 0.5):
    """Paddle ``generate_anchors_for_grid_cell`` in numpy, from per-level (H, W).

    Returns (anchors (N, 4) x1y1x2y2 squares of side grid_cell_scale * stride, anchor_points
    (N, 2) xy in pixels, num_anchors_list, stride_tensor (N, 1)), all float32, levels in the
    given order, row-major within a level.
    """
    if len(shapes) != len(fpn_strides):
        raise ValueError(f"{len(shapes)} feature maps for {len(fpn_strides)} fpn_strides")
    anchors, points, nums, strides = [], [], [], []
    for (h, w), s in zip(shapes, fpn_strides):
        half = grid_cell_scale * s * 0.5
        sx = (np.arange(w, dtype=np.float64) + grid_cell_offset) * s
        sy = (np.arange(h, dtype=np.float64) + grid_cell_offset) * s
        yy, xx = np.meshgrid(sy, sx, indexing="ij")
        pt = np.stack([xx, yy], axis=-1).reshape(-1, 2)
        anchors.append(np.concatenate([pt - half, pt + half], axis=-1))
        points.append(pt)
        nums.append(h * w)
        strides.append(np.full((h * w, 1), s, np.float64))
    return (np.concatenate(anchors).astype(np.float32),
            np.concatenate(points).astype(np.float32), tuple(nums),
            np.concatenate(strides).astype(np.float32))


def anchor_points(shapes, fpn_strides: Sequence[int], grid_cell_offset: float = 0.5):
    """generate_anchors' (anchor_points, stride_tensor) in jnp, so that feature-map sizes may be
    symbolic (a serving export for any image size); the same float32 values (integers plus the
    offset, times the stride: exact)."""
    points, strides = [], []
    for (h, w), s in zip(shapes, fpn_strides):
        sx = (jnp.arange(w, dtype=jnp.float32) + grid_cell_offset) * s
        sy = (jnp.arange(h, dtype=jnp.float32) + grid_cell_offset) * s
        yy, xx = jnp.meshgrid(sy, sx, indexing="ij")
        points.append(jnp.stack([xx, yy], axis=-1).reshape(-1, 2))
        strides.append(jnp.full((h * w, 1), s, jnp.float32))
    return jnp.concatenate(points), jnp.concatenate(strides)


def dfl_project(reg_logits: Array) -> Array:
    """DFL integral: softmax over the last axis (bins 0..reg_max) dotted with [0, 1, .., reg_max]
    (Paddle's frozen ``proj_conv``): (..., 4, reg_max + 1) -> (..., 4) distances in stride units."""
    n = reg_logits.shape[-1]
    proj = jnp.arange(n, dtype=jnp.float32)
    p = jax.nn.softmax(reg_logits.astype(jnp.float32), axis=-1)
    return jnp.einsum("...k,k->...", p, proj)


def distance2bbox(points: Array, distance: Array) -> Array:
    """Paddle ``batch_distance2bbox`` (no clipping): points (.., 2) xy, distance (.., 4) ltrb ->
    (x1, y1, x2, y2)."""
    lt, rb = distance[..., :2], distance[..., 2:]
    return jnp.concatenate([points - lt, points + rb], axis=-1)


def decode_boxes(anchor_points: Array, reg_logits: Array, stride: Array) -> Array:
    """Boxes (B, N, 4) x1y1x2y2 in input pixels from anchor_points (N, 2) in pixels,
    reg_logits (B, N, 4, reg_max + 1) and stride (N, 1): the DFL distances (stride units) around
    the anchor point in stride units, times the stride (Paddle's post_process and, before the
    ``* stride_tensor``, its ``_bbox_decode`` in the loss)."""
    stride = jnp.asarray(stride, jnp.float32)
    points_s = jnp.asarray(anchor_points, jnp.float32) / stride
    return distance2bbox(points_s, dfl_project(reg_logits)) * stride


class PPYOLOEHead(nn.Module):
    """PP-YOLOE's head; ``__call__([P5, P4, P3], train) -> dict`` (see the module docstring)."""

    num_classes: int = 80
    in_channels: Sequence[int] | None = None  # optional: checked against the inputs
    act: str = "swish"
    fpn_strides: Sequence[int] = (32, 16, 8)
    grid_cell_scale: float = 5.0
    grid_cell_offset: float = 0.5
    reg_max: int = 16
    attn_conv: str | None = "convbn"
    deploy: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: Sequence[Array], train: bool = False) -> dict[str, Array]:
        if not isinstance(feats, (list, tuple)) or len(feats) != len(self.fpn_strides):
            n = len(feats) if isinstance(feats, (list, tuple)) else type(feats).__name__
            raise ValueError(f"PPYOLOEHead: expected {len(self.fpn_strides)} feature maps (one "
                             f"per fpn_stride {list(self.fpn_strides)}), got {n}")
        chans = [int(f.shape[-1]) for f in feats]
        if self.in_channels is not None and list(self.in_channels) != chans:
            raise ValueError(f"PPYOLOEHead: in_channels {list(self.in_channels)} != the inputs' "
                             f"channels {chans}")
        bins = self.reg_max + 1
        kw = dict(act=self.act, attn_conv=self.attn_conv, deploy=self.deploy,
                  bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        ckw = dict(use_bias=True, kernel_init=nn.initializers.zeros, impl=self.conv_impl,
                   dtype=self.dtype)
        cls_out, reg_out = [], []
        for i, feat in enumerate(feats):
            b, h, w, _ = feat.shape
            avg = jnp.mean(feat, axis=(1, 2), keepdims=True)
            cls_feat = ESEAttn(name=f"stem_cls_{i}", **kw)(feat, avg, train) + feat
            reg_feat = ESEAttn(name=f"stem_reg_{i}", **kw)(feat, avg, train)
            cls_logit = Conv(self.num_classes, 3, 1, 1, bias_init=_constant(
                bias_init_with_prob(0.01)), name=f"pred_cls_{i}", **ckw)(cls_feat)
            reg_logit = Conv(4 * bins, 3, 1, 1, bias_init=_constant(1.0),
                             name=f"pred_reg_{i}", **ckw)(reg_feat)
            cls_out.append(cls_logit.reshape(b, h * w, self.num_classes))
            reg_out.append(reg_logit.reshape(b, h * w, 4, bins))
        points, strides = anchor_points([f.shape[1:3] for f in feats], self.fpn_strides,
                                        self.grid_cell_offset)
        return {
            "cls_logits": jnp.concatenate(cls_out, axis=1).astype(jnp.float32),
            "reg_logits": jnp.concatenate(reg_out, axis=1).astype(jnp.float32),
            "anchor_points": points,
            "stride_tensor": strides,
        }


__all__ = ["PPYOLOEHead", "ESEAttn", "anchor_points", "generate_anchors", "decode_boxes", "dfl_project",
           "distance2bbox", "bias_init_with_prob"]
