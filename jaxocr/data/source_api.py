"""The part of the dataset-source API (jaxocr/data/sources.py) most sources share."""
from __future__ import annotations

import numpy as np


class EveryEntryEachEpoch:
    """epoch_indices / num_entries of a source that uses every entry in every epoch."""

    @property
    def num_entries(self) -> int:
        return len(self)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return np.arange(self.num_entries, dtype=np.int64)
