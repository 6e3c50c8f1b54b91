"""PaddleOCR transform ops (ppocr/data/imaug/), configured by the YAML `transforms:` list.

    build_transforms([{'DecodeImage': {'img_mode': 'BGR', 'channel_first': False}},
                      {'RecAug': None}, {'CTCLabelEncode': None},
                      {'RecResizeImg': {'image_shape': [3, 32, 100]}},
                      {'KeepKeys': {'keep_keys': ['image', 'label', 'length']}}],
                     charset, global_cfg)   ->   fn(sample: dict, rng: np.random.Generator) -> dict

This package holds the registry `OPS` (the recognition and the DB detection ops), `Compose` and
`build_transforms`; the ops live in one module per job, as PaddleOCR's imaug/ splits them:

    common       BadSample, DecodeImage, KeepKeys, NormalizeImage, ToCHWImage (operators.py)
    rec_aug      RecAug and the TIA / blur / jitter / noise helpers (rec_img_aug.py)
    svtr_aug     SVTRRecAug: geometry, deterioration, colour jitter (rec_img_aug.py, abinet_aug.py)
    rec_concat   RecConAug: other samples of the set joined on (rec_img_aug.py)
    rec_label    CTCLabelEncode, MultiLabelEncode (label_ops.py)
    rec_resize   RecResizeImg, SVTRRecResizeImg (rec_img_aug.py)
    det_label    DetLabelEncode (label_ops.py), pad_polygons
    det_aug      IaaAugment (iaa_augment.py)
    det_crop     EastRandomCropData (random_crop_data.py)
    det_maps     MakeBorderMap, MakeShrinkMap (make_border_map.py, make_shrink_map.py)
    det_resize   DetResizeForTest (operators.py), shape_buckets, pad_to_bucket, DetPadToBucket

Every random choice comes from the `rng` passed in (the pipeline seeds it per sample), so a
sample's augmentation is reproducible whatever the worker layout. A sample that cannot be used
raises `BadSample` (the pipeline substitutes another and counts it) instead of returning None.

The train pipeline of det_mv3_db.yml:

    DecodeImage -> DetLabelEncode -> IaaAugment -> EastRandomCropData -> MakeBorderMap
        -> MakeShrinkMap -> NormalizeImage -> ToCHWImage -> KeepKeys
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from jaxocr.config import ConfigError
from jaxocr.data.charset import CharacterDict
from jaxocr.data.transforms.common import (INTERNAL_KEYS, LABEL_KEYS, BadSample, DecodeImage,
                                           KeepKeys, NormalizeImage, ToCHWImage, _check_options,
                                           _is_label_key, normalize, op_entries)
from jaxocr.data.transforms.common import _LOGGED  # noqa: F401 (tests clear the log-once set)
from jaxocr.data.transforms.det_aug import IaaAugment
from jaxocr.data.transforms.det_crop import EastRandomCropData, crop_area
from jaxocr.data.transforms.det_label import DetLabelEncode, pad_polygons
from jaxocr.data.transforms.det_maps import MakeBorderMap, MakeShrinkMap
from jaxocr.data.transforms.det_resize import (DetPadToBucket, DetResizeForTest, pad_to_bucket,
                                               shape_buckets)
from jaxocr.data.transforms.rec_aug import RecAug, jitter
from jaxocr.data.transforms.rec_concat import RecConAug
from jaxocr.data.transforms.rec_label import CTCLabelEncode, MultiLabelEncode
from jaxocr.data.transforms.svtr_aug import SVTRRecAug
from jaxocr.data.transforms.rec_resize import (RecResizeImg, SVTRRecResizeImg, resize_img,
                                               resize_norm_img)

__all__ = [
    "op_options",
    "OPS", "REC_OPS", "DET_OPS", "Compose", "build_transforms", "BadSample", "LABEL_KEYS",
    "INTERNAL_KEYS", "DecodeImage", "KeepKeys", "NormalizeImage", "ToCHWImage", "normalize",
    "RecAug", "jitter", "SVTRRecAug", "RecConAug", "CTCLabelEncode", "MultiLabelEncode", "RecResizeImg", "SVTRRecResizeImg", "resize_img",
    "resize_norm_img", "DetLabelEncode", "pad_polygons", "IaaAugment", "EastRandomCropData",
    "crop_area", "MakeBorderMap", "MakeShrinkMap", "DetResizeForTest", "DetPadToBucket",
    "pad_to_bucket", "shape_buckets",
]


# ----------------------------------------------------------------------------------------------
# name -> (factory(kwargs, charset, global_cfg), accepted option names)
def _decode(kw, charset, g):
    return DecodeImage(**kw)


def _ctc(kw, charset, g):
    # PaddleOCR merges Global into every op's options; Global.max_text_length wins
    return CTCLabelEncode(charset, g.get("max_text_length", kw.get("max_text_length", 25)))


def _multi(kw, charset, g):
    return MultiLabelEncode(charset, g.get("max_text_length", kw.get("max_text_length", 25)),
                            gtc_encode=kw.get("gtc_encode"))


REC_OPS: dict[str, tuple[Callable, set[str]]] = {
    "DecodeImage": (_decode, {"img_mode", "channel_first", "ignore_orientation"}),
    "RecAug": (lambda kw, c, g: RecAug(**kw),
               {"tia_prob", "crop_prob", "reverse_prob", "noise_prob", "jitter_prob",
                "blur_prob", "hsv_aug_prob", "use_tia", "aug_prob", "hsv_delta", "noise_var"}),
    # Global.max_text_length wins over the op's, as PaddleOCR merges Global into every op
    "RecConAug": (lambda kw, c, g: RecConAug(**{**kw, **{k: g[k] for k in ("max_text_length",)
                                                         if k in g}}),
                  {"prob", "image_shape", "max_text_length", "ext_data_num"}),
    "SVTRRecAug": (lambda kw, c, g: SVTRRecAug(**kw),
                   {"aug_type", "geometry_p", "deterioration_p", "colorjitter_p"}),
    "CTCLabelEncode": (_ctc, {"max_text_length", "character_dict_path", "use_space_char"}),
    "MultiLabelEncode": (_multi, {"max_text_length", "character_dict_path", "use_space_char",
                                  "gtc_encode"}),
    "RecResizeImg": (lambda kw, c, g: RecResizeImg(**kw),
                     {"image_shape", "padding", "infer_mode", "character_dict_path",
                      "eval_mode"}),
    "SVTRRecResizeImg": (lambda kw, c, g: SVTRRecResizeImg(**kw), {"image_shape", "padding"}),
    "KeepKeys": (lambda kw, c, g: KeepKeys(**kw), {"keep_keys"}),
}


# The DB detection ops. The Global options PaddleOCR merges into every op are not passed to them
# (their factories use neither the charset nor Global).
_RATIO_EPOCH = {"total_epoch", "epoch"}

DET_OPS: dict[str, tuple[Callable, set[str]]] = {
    "DetLabelEncode": (lambda kw, c, g: DetLabelEncode(), set()),
    "IaaAugment": (lambda kw, c, g: IaaAugment(**kw), {"augmenter_args"}),
    "EastRandomCropData": (lambda kw, c, g: EastRandomCropData(**kw),
                           {"size", "max_tries", "min_crop_side_ratio", "keep_ratio"}),
    "MakeBorderMap": (lambda kw, c, g: MakeBorderMap(**kw),
                      {"shrink_ratio", "thresh_min", "thresh_max"} | _RATIO_EPOCH),
    "MakeShrinkMap": (lambda kw, c, g: MakeShrinkMap(**kw),
                      {"shrink_ratio", "min_text_size"} | _RATIO_EPOCH),
    "NormalizeImage": (lambda kw, c, g: NormalizeImage(**kw), {"scale", "mean", "std", "order"}),
    "ToCHWImage": (lambda kw, c, g: ToCHWImage(), set()),
    "DetResizeForTest": (lambda kw, c, g: DetResizeForTest(**kw),
                         {"image_shape", "keep_ratio", "limit_side_len", "limit_type",
                          "resize_long"}),
    "DetPadToBucket": (lambda kw, c, g: DetPadToBucket(**kw), {"buckets"}),
}

assert not set(REC_OPS) & set(DET_OPS), sorted(set(REC_OPS) & set(DET_OPS))
OPS: dict[str, tuple[Callable, set[str]]] = {**REC_OPS, **DET_OPS}


class Compose:
    """`random`: whether any op draws from the rng (the pipeline builds a generator per sample
    only then). `blank()`: the sample a masked row carries (zeros of every output key).
    `ext_data_num`: how many other samples an op (RecConAug) joins on, which the pipeline puts
    through `load_ops` (the list's first `ext_op_transform_idx` ops) into `ext_data`."""

    def __init__(self, ops: list, ext_op_transform_idx: int = 2):
        self.ops = ops
        self.random = any(getattr(op, "random", False) for op in ops)
        self.ext_data_num = next((op.ext_data_num for op in ops if hasattr(op, "ext_data_num")),
                                 0)
        self.ext_op_transform_idx = int(ext_op_transform_idx)

    def load_ops(self) -> "Compose":
        return Compose(self.ops[:self.ext_op_transform_idx])

    def blank(self) -> dict:
        data: dict = {}
        for op in self.ops:
            if hasattr(op, "blank"):
                data = op.blank(data)
        return data

    def __call__(self, data: dict, rng: np.random.Generator | None = None) -> dict:
        if rng is None and self.random:
            rng = np.random.default_rng(0)
        data = dict(data)  # the source's dict is not modified
        for op in self.ops:
            data = op(data, rng)
        return data

    def __repr__(self) -> str:
        return f"Compose({[type(op).__name__ for op in self.ops]})"


def op_options(ops_cfg: list | None, *names: str) -> dict | None:
    """The options of the first op of a `transforms:` list named one of `names` ({} for an op
    written without options), or None when there is none."""
    for entry in ops_cfg or []:
        if isinstance(entry, str):
            entry = {entry: None}
        if isinstance(entry, dict) and len(entry) == 1:
            (name, kwargs), = entry.items()
            if name in names:
                return dict(kwargs or {})
    return None


def build_transforms(ops_cfg: list | None, charset: CharacterDict, global_cfg: dict | None = None,
                     infer: bool = False, ext_op_transform_idx: int = 2
                     ) -> Callable[[dict, np.random.Generator], dict]:
    """The YAML `transforms:` list -> fn(sample, rng) -> sample.

    infer=True drops the label ops (`*LabelEncode`), label keys from KeepKeys and RecConAug
    (it joins training samples), as PaddleOCR's infer_rec.py does the first two.
    `ext_op_transform_idx`: the dataset's key of that name (see Compose).
    """
    g = global_cfg or {}
    ops = []
    for name, kwargs in op_entries(ops_cfg):
        if name not in OPS:
            raise ConfigError(f"unknown transform op {name!r}; known: {sorted(OPS)}")
        if infer and (name.endswith("LabelEncode") or name == "RecConAug"):
            continue
        if infer and name == "KeepKeys":
            kwargs["keep_keys"] = [k for k in kwargs.get("keep_keys") or []
                                   if not _is_label_key(k)]
        factory, known = OPS[name]
        _check_options(name, kwargs, known)
        try:
            ops.append(factory(kwargs, charset, g))
        except TypeError as e:  # a required option missing
            raise ConfigError(f"transform {name}: {e}") from None
    return Compose(ops, ext_op_transform_idx)
