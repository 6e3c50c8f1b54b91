"""RecMetric as PaddleOCR's: exact-match accuracy and 1 - mean normalised edit distance.

Accumulates raw sums, so per-process partial results add up exactly across hosts.
"""
import re
import string

import numpy as np
from rapidfuzz.distance import Levenshtein

_KEEP = re.compile(f"[^{re.escape(string.digits + string.ascii_letters)}]")


class RecMetric:
    def __init__(self, main_indicator="acc", is_filter=False, ignore_space=True, name=None):
        self.main_indicator = main_indicator
        self.is_filter = is_filter
        self.ignore_space = ignore_space
        self.reset()

    def _normalize(self, text):
        if self.ignore_space:
            text = text.replace(" ", "")
        if self.is_filter:
            text = _KEEP.sub("", text).lower()
        return text

    def update(self, preds, targets, weights=None):
        """preds: list of predicted strings; targets: label strings; weights: 0/1 per sample."""
        weights = np.ones(len(preds)) if weights is None else np.asarray(weights)
        for pred, target, w in zip(preds, targets, weights):
            if not w:
                continue
            pred, target = self._normalize(pred), self._normalize(target)
            self.sums += (pred == target, Levenshtein.normalized_distance(pred, target), 1.0)

    def state(self) -> np.ndarray:
        """The partial result to merge into another process's metric: the sums."""
        return self.sums.copy()

    def merge(self, sums):
        self.sums += np.asarray(sums, np.float64)

    def get_metric(self, reset=True):
        correct, dist, n = self.sums
        out = {"acc": correct / (n + 1e-5), "norm_edit_dis": 1 - dist / (n + 1e-5)}
        if reset:
            self.reset()
        return out

    def reset(self):
        self.sums = np.zeros(3, np.float64)  # correct, edit distance sum, count
