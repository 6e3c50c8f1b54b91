"""RecConAug: PaddleOCR's text-line concatenation (ppocr/data/imaug/rec_img_aug.py), which
joins a sample with other samples of the set, side by side, into one longer line.

The other samples (`ext_data`) come from the pipeline as PaddleOCR's SimpleDataSet fetches them:
`ext_data_num` random samples of the set put through the first `ext_op_transform_idx` ops of
the list (DecodeImage in PaddleOCR's configs), drawn here from the sample's own generator so
they are the same whatever the worker layout (`SampleMaker` in jaxocr/data/pipeline.py).
"""
from __future__ import annotations

import cv2
import numpy as np


def _width_at(img: np.ndarray, height: int) -> int:
    return int(round(img.shape[1] / img.shape[0] * height))


class RecConAug:
    """With probability `prob`, appends `ext_data` images (each resized to the line height
    `image_shape[0]`, keeping its aspect ratio) and their labels, in order, while the joined
    label stays within `max_text_length` characters and the joined aspect ratio within
    image_shape's width / height. `image_shape` is (H, W, C) as PaddleOCR writes it here."""

    random = True  # draws from the per-sample rng

    def __init__(self, prob: float = 0.5, image_shape=(32, 320, 3), max_text_length: int = 25,
                 ext_data_num: int = 1):
        self.prob = float(prob)
        self.height = int(image_shape[0])
        self.max_wh_ratio = float(image_shape[1]) / float(image_shape[0])
        self.max_text_length = int(max_text_length)
        self.ext_data_num = int(ext_data_num)

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        extra = data.pop("ext_data", None) or []
        if rng.random() > self.prob:
            return data
        for ext in extra:
            if len(data["label"]) + len(ext["label"]) > self.max_text_length:
                break
            img, other = data["image"], ext["image"]
            if img.shape[1] / img.shape[0] + other.shape[1] / other.shape[0] > self.max_wh_ratio:
                break
            data["image"] = np.concatenate(
                [cv2.resize(img, (_width_at(img, self.height), self.height)),
                 cv2.resize(other, (_width_at(other, self.height), self.height))], axis=1)
            data["label"] = data["label"] + ext["label"]
        return data
