"""CustomCSPPAN, PP-YOLOE's neck (PaddleDetection ``ppdet/modeling/necks/custom_pan.py``,
release/2.7.1), without its optional transformer encoder (``use_trans``) and DropBlock.

Input: the backbone's [C3, C4, C5] (strides 8, 16, 32; NHWC).  ``out_channels`` (listed from
the deepest level, scaled by ``width_mult``: round, at least 1) and ``block_num`` (scaled by
``depth_mult``) as Paddle.  For PP-YOLOE-s: out channels [384, 192, 96], 1 block per stage.

* FPN, top-down from C5: level i (i = 0 is C5) is ``fpn_stages_i`` = ``stage_num`` CSPStages on
  concat([route, C_i]) (route first; only C5 for i = 0); the route is ``fpn_routes_i`` (ConvBN
  1x1 -> half the channels) upsampled x2 (nearest).  An SPP (max-pools 5, 9, 13, stride 1,
  same padding) sits in level 0's CSPStage after block (n - 1) // 2.
* PAN, bottom-up: ``pan_routes_i`` (ConvBN 3x3 stride 2, same channels) of the finer output,
  concat with FPN level i (route first), ``pan_stages_i``.

Output ``[P5, P4, P3]`` = strides [32, 16, 8] (Paddle returns ``pan_feats[::-1]``), channels
``out_channels`` in that order.  CSPStage(in, out, n): mid = out // 2; concat(ConvBN1x1(x),
convs(ConvBN1x1(x))) -> ConvBN1x1 -> out, convs = n BasicBlocks without shortcut [+ SPP].

Defaults are ``configs/ppyoloe/_base_/ppyoloe_crn.yml``'s (Paddle's code defaults differ:
out_channels [1024, 512, 256], act 'leaky', spp False).  Names mirror Paddle's state-dict keys
with ``.`` of LayerList / Sequential indices as ``_``: ``fpn_stages.0.0.convs.spp.conv`` ->
``fpn_stages_0_0/convs_spp/conv``, ``pan_routes.1`` -> ``pan_routes_1``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxocr.models.backbones.cspresnet import BasicBlock, ConvBNLayer, scaled_channels
from jaxocr.models.necks.db_fpn import upsample_nearest

Array = jax.Array


class SPP(nn.Module):
    """concat(x, maxpool_k(x) for k in pool_size) (stride 1, padding k // 2) -> ConvBN k x k."""

    out_channels: int
    kernel_size: int = 1
    pool_size: Sequence[int] = (5, 9, 13)
    act: str | None = "swish"
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        outs = [x]
        for k in self.pool_size:
            p = k // 2
            outs.append(nn.max_pool(x, (k, k), strides=(1, 1), padding=((p, p), (p, p))))
        y = jnp.concatenate(outs, axis=-1)
        k = self.kernel_size
        return ConvBNLayer(self.out_channels, k, 1, k // 2, act=self.act,
                           bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl,
                           dtype=self.dtype, name="conv")(y, train)


class CSPStage(nn.Module):
    """Paddle custom_pan ``CSPStage`` with ``BasicBlock`` blocks (shortcut off)."""

    out_channels: int
    num_blocks: int
    act: str | None = "swish"
    spp: bool = False
    use_alpha: bool = False
    deploy: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        mid = self.out_channels // 2
        y1 = ConvBNLayer(mid, 1, 1, 0, act=self.act, name="conv1", **kw)(x, train)
        y2 = ConvBNLayer(mid, 1, 1, 0, act=self.act, name="conv2", **kw)(x, train)
        for i in range(self.num_blocks):
            y2 = BasicBlock(mid, act=self.act, shortcut=False, use_alpha=self.use_alpha,
                            deploy=self.deploy, name=f"convs_{i}", **kw)(y2, train)
            if i == (self.num_blocks - 1) // 2 and self.spp:
                y2 = SPP(mid, 1, (5, 9, 13), act=self.act, name="convs_spp", **kw)(y2, train)
        y = jnp.concatenate([y1, y2], axis=-1)
        return ConvBNLayer(self.out_channels, 1, 1, 0, act=self.act, name="conv3", **kw)(y, train)


class CustomCSPPAN(nn.Module):
    """PP-YOLOE's CSP-PAN neck; ``__call__([C3, C4, C5], train) -> [P5, P4, P3]``."""

    out_channels: Sequence[int] = (768, 384, 192)
    in_channels: Sequence[int] | None = None  # optional: checked against the inputs
    act: str = "swish"
    stage_num: int = 1
    block_num: int = 3
    spp: bool = True
    drop_block: bool = False
    block_size: int = 3
    keep_prob: float = 0.9
    width_mult: float = 1.0
    depth_mult: float = 1.0
    use_alpha: bool = False
    use_trans: bool = False
    deploy: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @property
    def scaled_out_channels(self) -> list[int]:
        return scaled_channels(self.out_channels, self.width_mult)

    @nn.compact
    def __call__(self, blocks: Sequence[Array], train: bool = False) -> list[Array]:
        if self.drop_block:
            raise NotImplementedError(
                "CustomCSPPAN: drop_block=True (DropBlock after each stage, train only) is not "
                "implemented; PP-YOLOE's configs leave it False")
        if self.use_trans:
            raise NotImplementedError("CustomCSPPAN: use_trans=True (the transformer encoder "
                                      "on C5) is not implemented")
        if not isinstance(blocks, (list, tuple)):
            raise ValueError(f"CustomCSPPAN expects the backbone's list of feature maps, got "
                             f"{type(blocks).__name__}")
        chans = [int(b.shape[-1]) for b in blocks]
        if self.in_channels is not None and list(self.in_channels) != chans:
            raise ValueError(f"CustomCSPPAN: in_channels {list(self.in_channels)} != the "
                             f"inputs' channels {chans}")
        out_ch = self.scaled_out_channels
        n_levels = len(blocks)
        if len(out_ch) != n_levels:
            raise ValueError(f"CustomCSPPAN: {len(out_ch)} out_channels for {n_levels} inputs")
        for i in range(1, n_levels):
            a, b = blocks[i - 1].shape, blocks[i].shape
            if a[1] != 2 * b[1] or a[2] != 2 * b[2]:
                raise ValueError(f"CustomCSPPAN: inputs {[tuple(x.shape[1:3]) for x in blocks]} "
                                 f"are not at successive strides x2 (input H, W multiples of 32)")
        block_num = max(round(self.block_num * self.depth_mult), 1)
        kw = dict(bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl, dtype=self.dtype)
        skw = dict(act=self.act, use_alpha=self.use_alpha, deploy=self.deploy, **kw)

        def stage(prefix: str, x: Array, c: int, spp: bool) -> Array:
            for j in range(self.stage_num):
                x = CSPStage(c, block_num, spp=spp, name=f"{prefix}_{j}", **skw)(x, train)
            return x

        fpn_feats = []
        route = None
        for i, block in enumerate(blocks[::-1]):
            if i > 0:
                block = jnp.concatenate([route, block], axis=-1)
            route = stage(f"fpn_stages_{i}", block, out_ch[i], self.spp and i == 0)
            fpn_feats.append(route)
            if i < n_levels - 1:
                route = ConvBNLayer(out_ch[i] // 2, 1, 1, 0, act=self.act,
                                    name=f"fpn_routes_{i}", **kw)(route, train)
                route = upsample_nearest(route, 2)

        pan_feats = [fpn_feats[-1]]
        route = fpn_feats[-1]
        for i in reversed(range(n_levels - 1)):
            route = ConvBNLayer(out_ch[i + 1], 3, 2, 1, act=self.act, name=f"pan_routes_{i}",
                                **kw)(route, train)
            block = jnp.concatenate([route, fpn_feats[i]], axis=-1)
            route = stage(f"pan_stages_{i}", block, out_ch[i], False)
            pan_feats.append(route)
        return pan_feats[::-1]


__all__ = ["CustomCSPPAN", "CSPStage", "SPP"]
