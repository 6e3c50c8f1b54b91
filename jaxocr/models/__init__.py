"""Build a Flax model from PaddleOCR's ``Architecture`` config section.

Registries map the config's ``name:`` to a class, so a PaddleOCR config reads the same here::

    Architecture:
      model_type: rec
      algorithm: CRNN
      Transform:
      Backbone: {name: MobileNetV3, scale: 0.5, model_name: large}
      Neck: {name: SequenceEncoder, encoder_type: rnn, hidden_size: 96}
      Head: {name: CTCHead, fc_decay: 0, out_channels: 37}

Backbones are looked up by ``model_type`` as Paddle's ``build_backbone(config, model_type)``
does: PaddleOCR has two classes named ``MobileNetV3``, and ``Backbone: {name: MobileNetV3}``
means the rec one (``REC_BACKBONES``) under ``model_type: rec`` and the det one, returning 4
feature maps (``DET_BACKBONES``), under ``model_type: det``.  Necks, heads and transforms are
shared, as in Paddle.

New families register themselves by adding an entry to ``BACKBONES_BY_MODEL_TYPE[type]`` /
``NECKS`` / ``HEADS`` / ``TRANSFORMS``.  Module classes may declare the dataclass fields
``bn_axis_name``, ``dtype`` and ``conv_impl``; ``build_model`` fills those it finds from its own
arguments.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.core import unfreeze

from jaxocr.config import ConfigError
from jaxocr.models.backbones.cspresnet import CSPResNet
from jaxocr.models.backbones.mobilenet_v3 import MobileNetV3, MobileNetV3Det
from jaxocr.models.backbones.mobilenet_v1_enhance import MobileNetV1Enhance
from jaxocr.models.backbones.rec_resnet_vd import ResNet
from jaxocr.models.backbones.svtrnet import SVTRNet
from jaxocr.models.heads.ctc import CTCHead
from jaxocr.models.heads.db_head import DBHead
from jaxocr.models.heads.multi_head import MultiHead
from jaxocr.models.heads.ppyoloe_head import PPYOLOEHead
from jaxocr.models.necks.custom_pan import CustomCSPPAN
from jaxocr.models.necks.db_fpn import DBFPN, RSEFPN
from jaxocr.models.necks.rnn import SequenceEncoder
from jaxocr.models.transforms.stn import STN_ON
from jaxocr.models.transforms.tps import TPS

TRANSFORMS: dict[str, type[nn.Module]] = {"STN_ON": STN_ON, "TPS": TPS}
REC_BACKBONES: dict[str, type[nn.Module]] = {"MobileNetV3": MobileNetV3, "SVTRNet": SVTRNet,
                                             "ResNet": ResNet,
                                             "MobileNetV1Enhance": MobileNetV1Enhance}
DET_BACKBONES: dict[str, type[nn.Module]] = {"MobileNetV3": MobileNetV3Det}
YOLO_BACKBONES: dict[str, type[nn.Module]] = {"CSPResNet": CSPResNet}
BACKBONES_BY_MODEL_TYPE: dict[str, dict[str, type[nn.Module]]] = {
    "rec": REC_BACKBONES, "det": DET_BACKBONES, "yolo": YOLO_BACKBONES}
BACKBONES = REC_BACKBONES  # the rec registry, under its old name
NECKS: dict[str, type[nn.Module]] = {"SequenceEncoder": SequenceEncoder, "DBFPN": DBFPN,
                                     "RSEFPN": RSEFPN, "CustomCSPPAN": CustomCSPPAN}
HEADS: dict[str, type[nn.Module]] = {"CTCHead": CTCHead, "DBHead": DBHead,
                                     "PPYOLOEHead": PPYOLOEHead, "MultiHead": MultiHead}

_REGISTRIES = {"Transform": TRANSFORMS, "Neck": NECKS, "Head": HEADS}
_GLOBAL_FIELDS = ("bn_axis_name", "dtype", "conv_impl")
_RESERVED = set(_GLOBAL_FIELDS) | {"parent", "name"}


def part_class(section: str, cfg: dict, model_type: str = "rec") -> type[nn.Module]:
    """The class an ``Architecture`` section names (``Backbone`` by ``model_type``)."""
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ConfigError(f"Architecture.{section} must be a mapping with a 'name' key, got {cfg!r}")
    if section == "Backbone":
        registry = BACKBONES_BY_MODEL_TYPE[model_type]
        of_type = f" for model_type {model_type!r}"
    else:
        registry, of_type = _REGISTRIES[section], ""
    if cfg["name"] not in registry:
        raise ConfigError(f"Architecture.{section}.name: unknown {section} {cfg['name']!r}"
                          f"{of_type}; known: {sorted(registry)}")
    return registry[cfg["name"]]


def construct(cls: type[nn.Module], cfg: dict, where: str, globals_: dict[str, Any]
              ) -> nn.Module:
    """`cls(**cfg)` with the `globals_` (bn_axis_name, dtype, conv_impl) it declares; a key it
    does not accept or a missing required one is a ConfigError naming `where`."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    bad = sorted(k for k in cfg if k not in fields or k in _RESERVED)
    if bad:
        accepted = sorted(fields - _RESERVED)
        raise ConfigError(f"{where}: unknown key(s) {bad}; accepted: {accepted}")
    kwargs = {k: v for k, v in globals_.items() if k in fields}
    kwargs.update(cfg)
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required field, e.g. Head.out_channels
        raise ConfigError(f"{where}: {e}") from e


def _build_part(section: str, cfg: dict | None, globals_: dict[str, Any],
                model_type: str = "rec") -> nn.Module | None:
    if cfg is None:
        return None
    cls = part_class(section, cfg, model_type)
    cfg = dict(cfg)
    name = cfg.pop("name")
    return construct(cls, cfg, f"Architecture.{section} ({name})", globals_)


class BaseModel(nn.Module):
    """Transform -> Backbone -> Neck -> Head, each optional but the backbone (Paddle's BaseModel).

    ``__call__(x, train)``: x is NHWC float (B, H, W, 3).  For a rec model the output is
    (B, T, C): logits when ``train``, probabilities otherwise (PP-OCRv3's MultiHead trains
    on a dict: ``{'ctc', 'ctc_neck', 'sar'}``).  For a DB det model it is
    ``{'maps': (B, H, W, 3)}`` (shrink, thresh, binary) when ``train``, ``{'maps': (B, H, W, 1)}``
    (shrink) otherwise; H and W multiples of 32. For PP-YOLOE (``model_type: yolo``) it is the
    head's dict (class logits, DFL logits, anchor points and strides; ppyoloe_head.py).
    """

    backbone: nn.Module
    transform: nn.Module | None = None
    neck: nn.Module | None = None
    head: nn.Module | None = None
    model_type: str = "rec"
    algorithm: str = ""
    return_all_feats: bool = False

    def __call__(self, x: jax.Array, train: bool = False, targets: dict | None = None):
        """`targets`: the batch arrays a head trains on besides the image (MultiHead's SAR
        branch: `label_sar`, `valid_ratio`); None for every other head. With
        `return_all_feats` (a distillation member) training returns Paddle's dict of features:
        `backbone_out`, `head_out` (and MultiHead's `neck_out`)."""
        if self.transform is not None:
            x = self.transform(x, train)
        x = self.backbone(x, train)
        feats = {"backbone_out": x}
        if self.neck is not None:
            x = feats["neck_out"] = self.neck(x, train)
        if self.head is not None:
            x = self.head(x, train) if targets is None else self.head(x, train, targets)
            if isinstance(x, dict) and "ctc_neck" in x:
                feats["neck_out"] = x["ctc_neck"]
            feats["head_out"] = x
        return feats if self.return_all_feats and train else x


class DistillationModel(nn.Module):
    """PaddleOCR's DistillationModel: its `Models` (Teacher, Student, ...) side by side on the
    same input, each under its own name in the parameter tree. Training returns {name: that
    model's features}; evaluation, inference and export run the `infer_model` alone (the
    Student), as PaddleOCR exports it. `frozen`: the models with `freeze_params` (the optimizer
    leaves their parameters as they are). The members are built here from their
    Architecture sections (`members`: (name, section) pairs), so that they are named so."""

    members: tuple
    infer_model: str = "Student"
    frozen: tuple = ()
    model_type: str = "rec"
    algorithm: str = "Distillation"
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @property
    def names(self) -> tuple:
        return tuple(name for name, _ in self.members)

    def setup(self):
        for name, cfg in self.members:
            setattr(self, name, build_model(unfreeze(cfg), self.bn_axis_name, self.dtype,
                                            self.conv_impl))

    def __call__(self, x: jax.Array, train: bool = False, targets: dict | None = None):
        if not train and not self.is_initializing():
            return getattr(self, self.infer_model)(x, False)
        outputs = {name: getattr(self, name)(x, train, targets) for name in self.names}
        return outputs if train else outputs[self.infer_model]  # init creates every member


def build_model(arch_cfg: dict, bn_axis_name: str | None = None, dtype: Any = jnp.float32,
                conv_impl: str = "auto") -> nn.Module:
    """Flax module for PaddleOCR's ``Architecture`` section.

    Args:
      arch_cfg: the ``Architecture`` dict (``Head.out_channels`` already filled by the caller).
      bn_axis_name: mesh axis for synchronised BatchNorm statistics (None: per-device).
      dtype: compute dtype (params stay float32).
      conv_impl: 'auto' | 'fast' | 'xla' (see ``jaxocr.models.layers.Conv``).
    Variables: collections 'params' and 'batch_stats'.
    """
    if not isinstance(arch_cfg, dict):
        raise ConfigError(f"Architecture must be a mapping, got {type(arch_cfg).__name__}")
    if arch_cfg.get("name") == "DistillationModel":
        return build_distillation_model(arch_cfg, bn_axis_name, dtype, conv_impl)
    known = {"model_type", "algorithm", "Transform", "Backbone", "Neck", "Head",
             "return_all_feats"}
    unknown = sorted(set(arch_cfg) - known)
    if unknown:
        raise ConfigError(f"Architecture: unknown key(s) {unknown}; known: {sorted(known)}")
    if arch_cfg.get("Backbone") is None:
        raise ConfigError("Architecture.Backbone is required")
    model_type = arch_cfg.get("model_type", "rec")
    if model_type not in BACKBONES_BY_MODEL_TYPE:
        raise ConfigError(f"Architecture.model_type: unknown {model_type!r}; "
                         f"known: {sorted(BACKBONES_BY_MODEL_TYPE)}")
    g = {"bn_axis_name": bn_axis_name, "dtype": dtype, "conv_impl": conv_impl}
    return BaseModel(
        backbone=_build_part("Backbone", arch_cfg["Backbone"], g, model_type),
        transform=_build_part("Transform", arch_cfg.get("Transform"), g),
        neck=_build_part("Neck", arch_cfg.get("Neck"), g),
        head=_build_part("Head", arch_cfg.get("Head"), g),
        model_type=model_type,
        algorithm=arch_cfg.get("algorithm", "") or "",
        return_all_feats=bool(arch_cfg.get("return_all_feats", False)),
    )


def distillation_members(arch_cfg: dict) -> dict[str, dict]:
    """`Architecture.Models` of a DistillationModel: {name: that model's Architecture}."""
    models = arch_cfg.get("Models")
    if not isinstance(models, dict) or not models:
        raise ConfigError("Architecture (DistillationModel).Models must map model names to "
                          f"their Architecture sections, got {models!r}")
    unknown = sorted(set(arch_cfg) - {"name", "model_type", "algorithm", "Models"})
    if unknown:
        raise ConfigError(f"Architecture (DistillationModel): unknown key(s) {unknown}")
    return models


def infer_member(arch_cfg: dict) -> str:
    """The model a distillation evaluates and exports: the Student, else the first."""
    names = list(distillation_members(arch_cfg))
    return "Student" if "Student" in names else names[0]


def build_distillation_model(arch_cfg: dict, bn_axis_name=None, dtype: Any = jnp.float32,
                             conv_impl: str = "auto") -> DistillationModel:
    members, frozen = [], []
    for name, cfg in distillation_members(arch_cfg).items():
        cfg = copy.deepcopy(cfg)
        if cfg.pop("pretrained", None):
            raise ConfigError(f"Architecture.Models.{name}.pretrained: a member's own weights "
                              "file is not supported; Global.pretrained_model (a PaddleOCR "
                              ".onnx export) starts every member from it")
        if cfg.pop("freeze_params", False):
            frozen.append(name)
        try:
            build_model(cfg)  # a config error shows now, naming the member
        except ConfigError as e:
            raise ConfigError(f"Architecture.Models.{name}: {e}") from None
        members.append((name, cfg))
    return DistillationModel(tuple(members), infer_member(arch_cfg), tuple(frozen),
                             arch_cfg.get("model_type", "rec"),
                             arch_cfg.get("algorithm", "Distillation") or "Distillation",
                             bn_axis_name, dtype, conv_impl)


__all__ = ["build_model", "part_class", "BaseModel", "DistillationModel", "distillation_members",
           "infer_member", "TRANSFORMS", "BACKBONES", "REC_BACKBONES",
           "DET_BACKBONES", "YOLO_BACKBONES", "BACKBONES_BY_MODEL_TYPE", "NECKS", "HEADS"]
