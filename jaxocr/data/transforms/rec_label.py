"""CTCLabelEncode: PaddleOCR 2.7's ppocr/data/imaug/label_ops.py CTCLabelEncode (text -> ids
padded with the blank to max_text_length, plus `length`)."""
from __future__ import annotations

import numpy as np

from jaxocr.data.charset import CharacterDict
from jaxocr.data.transforms.common import BadSample


class CTCLabelEncode:
    """label str -> int32 ids padded with 0 (blank) to Global.max_text_length, plus `length` and
    `label_ace` (each class's count in the padded ids, Paddle's input of ACELoss).

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
        return self._write(data, label, len(ids))

    def blank(self, data: dict) -> dict:
        """A masked row's label: all blank, length 0."""
        return self._write(data, np.zeros(self.max_text_length, np.int32), 0)

    def _write(self, data: dict, label, length: int) -> dict:
        data["label"] = label
        data["length"] = np.int32(length)
        data["label_ace"] = np.bincount(label, minlength=self.charset.num_classes).astype(np.int32)
        return data


class MultiLabelEncode:
    """PP-OCRv3's two labels of one text (PaddleOCR's MultiLabelEncode with SARLabelEncode):
    `label_ctc` and `length` as CTCLabelEncode writes them, and `label_sar` = [start] + the
    characters + [end], padded to max_text_length. SAR numbers the N dictionary characters
    0..N-1 (a CTC id minus one), then unknown N, start/end N+1 and padding N+2. SAR rejects a
    text of max_text_length - 1 characters or more (BadSample: the pipeline draws another, as
    Paddle's loader does when an op returns None). The other keys pass through (Paddle keeps
    only the image); `label` is replaced."""

    def __init__(self, charset: CharacterDict, max_text_length: int, unknown_chars: str = "skip",
                 gtc_encode: str | None = None):
        if gtc_encode is not None:
            raise ValueError(f"MultiLabelEncode: gtc_encode {gtc_encode!r} (NRTR) is not "
                             "supported; PP-OCRv3's SAR branch (gtc_encode None) is")
        self.ctc = CTCLabelEncode(charset, max_text_length, unknown_chars)
        self.max_text_length = self.ctc.max_text_length
        n = len(charset)
        self.start_end, self.padding = n + 1, n + 2

    def __call__(self, data: dict, rng=None) -> dict:
        data = self.ctc(data)
        n = int(data["length"])
        if n >= self.max_text_length - 1:
            raise BadSample(f"label of {n} characters is too long for SAR (max_text_length "
                            f"{self.max_text_length} with its start and end tokens)")
        return self._split(data, data["label"][:n] - 1, n)

    def _split(self, data: dict, sar_ids: np.ndarray, n: int) -> dict:
        sar = np.full(self.max_text_length, self.padding, np.int32)
        sar[:n + 2] = [self.start_end, *sar_ids, self.start_end]
        data["label_ctc"] = data.pop("label")
        data.pop("label_ace")  # Paddle's MultiLabelEncode writes no ACE counts
        data["label_sar"] = sar
        return data

    def blank(self, data: dict) -> dict:
        """A masked row: CTC all blank, SAR [start, end] and padding, length 0."""
        return self._split(self.ctc.blank(data), np.zeros(0, np.int32), 0)
