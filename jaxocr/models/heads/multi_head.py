"""MultiHead: PP-OCRv3's two-branch recognition head (PaddleOCR
``ppocr/modeling/heads/rec_multi_head.py``).

``head_list`` as the config writes it::

    - CTCHead: {Neck: {name: svtr, dims: 64, ...}, Head: {fc_decay: 1.0e-05}}
    - SARHead: {enc_dim: 512, max_text_length: 25}

The CTC branch is a SequenceEncoder (the Neck's `name` is its encoder type) and a CTCHead; the
SAR branch reads the backbone's map directly. ``out_channels_list`` holds each branch's class
count, filled from the dictionary (`CTCLabelDecode`: N + 1, `SARLabelDecode`: N + 3) as
Paddle's train.py does. Training returns ``{'ctc': logits, 'ctc_neck': features, 'sar':
logits}``; eval returns the CTC probabilities alone, so inference and export are CTC models.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxocr.config import ConfigError
from jaxocr.models.heads.ctc import CTCHead
from jaxocr.models.heads.sar import SARHead
from jaxocr.models.necks.rnn import SequenceEncoder

Array = jax.Array
BRANCHES = ("CTCHead", "SARHead")


def branches(head_list) -> dict[str, dict]:
    """head_list -> {branch name: options}; the CTC branch and one SAR branch are required."""
    if not isinstance(head_list, (list, tuple)) or not all(
            isinstance(e, Mapping) and len(e) == 1 for e in head_list):
        raise ConfigError(f"MultiHead.head_list must be a list of one-key mappings, got "
                          f"{head_list!r}")
    found = {next(iter(e)): dict(next(iter(e.values())) or {}) for e in head_list}
    unknown = sorted(set(found) - set(BRANCHES))
    if unknown or set(found) != set(BRANCHES):
        raise ConfigError(f"MultiHead.head_list: supported is exactly {list(BRANCHES)} "
                          f"(CTC + SAR, PP-OCRv3); got {list(found)}")
    return found


class MultiHead(nn.Module):
    head_list: Sequence[dict]
    out_channels_list: dict | None = None
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @staticmethod
    def l2_decay(cfg: dict) -> dict[tuple, float]:
        """The CTC branch's head keeps CTCHead's fc_decay; the rest takes the regularizer's."""
        ctc = branches(cfg.get("head_list")).get("CTCHead", {})
        return {("ctc_head",): CTCHead.l2_decay(ctc.get("Head") or {})[()]}

    def setup(self):
        from jaxocr.models import construct  # the registry module imports this one
        if not self.out_channels_list:
            raise ConfigError("MultiHead.out_channels_list is filled from the dictionary "
                              "(RecTask does it); got none")
        opts = branches(self.head_list)
        g = {"bn_axis_name": self.bn_axis_name, "conv_impl": self.conv_impl, "dtype": self.dtype}
        ctc = opts["CTCHead"]
        neck = dict(ctc.get("Neck") or {})
        if "name" not in neck:
            raise ConfigError("MultiHead CTCHead.Neck needs a name (the encoder type, e.g. svtr)")
        neck["encoder_type"] = neck.pop("name")
        self.ctc_encoder = construct(SequenceEncoder, neck, "MultiHead CTCHead.Neck", g)
        self.ctc_head = construct(
            CTCHead, {**(ctc.get("Head") or {}),
                      "out_channels": self.out_channels_list["CTCLabelDecode"]},
            "MultiHead CTCHead.Head", g)
        self.sar_head = construct(
            SARHead, {**opts["SARHead"],
                      "out_channels": self.out_channels_list["SARLabelDecode"]},
            "MultiHead SARHead", g)

    def __call__(self, x: Array, train: bool = False, targets: dict | None = None):
        features = self.ctc_encoder(x, train)
        ctc = self.ctc_head(features, train)
        if not train and not self.is_initializing():
            return ctc
        if targets is None:
            if not self.is_initializing():
                raise ValueError("MultiHead trains its SAR branch on targets "
                                 "{'label_sar', 'valid_ratio'}; got none")
            b = x.shape[0]  # init: create the SAR branch's parameters from dummy targets
            targets = {"label_sar": jnp.zeros((b, self.sar_head.max_text_length), jnp.int32),
                       "valid_ratio": jnp.ones((b,), jnp.float32)}
        sar = self.sar_head(x, targets["label_sar"], targets["valid_ratio"], train)
        return {"ctc": ctc, "ctc_neck": features, "sar": sar} if train else ctc
