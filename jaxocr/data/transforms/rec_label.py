"""CTCLabelEncode: PaddleOCR 2.7's ppocr/data/imaug/label_ops.py CTCLabelEncode (text -> ids
padded with the blank to max_text_length, plus `length`)."""
from __future__ import annotations

import numpy as np

from jaxocr.data.charset import CharacterDict
from jaxocr.data.transforms.common import BadSample


class CTCLabelEncode:
    """label str -> int32 ids padded with 0 (blank) to Global.max_text_length, plus `length`.

    Encodes as PaddleOCR 2.7's CTCLabelEncode (`CharacterDict.encode_label`): characters outside
    the dictionary are skipped (`unknown_chars="drop"` rejects the label instead); an empty
    label, one longer than max_text_length as written, or one with no character left raises
    BadSample. The sources apply the same rule when they are built, so in training this only
    sees labels that pass it."""

    def __init__(self, charset: CharacterDict, max_text_length: int, unknown_chars: str = "skip"):
        self.charset = charset
        self.max_text_length = int(max_text_length)
        self.unknown_chars = unknown_chars
        charset.encode_label("", 0, unknown_chars)  # validates the mode

    def __call__(self, data: dict, rng=None) -> dict:
        text = data["label"]
        ids, problem = self.charset.encode_label(text, self.max_text_length, self.unknown_chars)
        if problem == "empty":
            raise BadSample("empty label")
        if problem == "too_long":
            raise BadSample(f"label {text!r} is longer than max_text_length "
                            f"{self.max_text_length}")
        if problem is not None:
            bad = "".join(sorted(self.charset.unknown_chars(text)))
            left = "no character is left" if self.unknown_chars == "skip" else "dropped"
            raise BadSample(f"label {text!r} has characters outside the dictionary: {bad!r} "
                            f"({left})")
        label = np.zeros(self.max_text_length, np.int32)
        label[:len(ids)] = ids
        data["label"] = label
        data["length"] = np.int32(len(ids))
        return data

    def blank(self, data: dict) -> dict:
        """A masked row's label: all blank, length 0."""
        data["label"] = np.zeros(self.max_text_length, np.int32)
        data["length"] = np.int32(0)
        return data
