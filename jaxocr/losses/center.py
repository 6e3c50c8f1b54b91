"""PaddleOCR's CenterLoss (``ppocr/losses/center_loss.py``, PP-OCRv2's enhanced CTC): each CTC
frame's feature (the head's fc1 output, ``return_feats``) is pulled toward the centre of the
class the head predicts for that frame.

The centres are not trained. Paddle draws them once (randn) or reads them from
``center_file_path``, the pickle ``tools/export_center.py`` writes ({class id: mean feature});
here they are drawn from Global.seed, so every process holds the same ones.
"""
from __future__ import annotations

import os
import pickle

import jax.numpy as jnp
import numpy as np

_FLOOR, _CEIL = 1e-12, 1e12  # Paddle clips every (row, class) entry of its masked distances


def class_centers(num_classes: int, feat_dim: int, seed: int,
                  path: str | None = None) -> np.ndarray:
    """(num_classes, feat_dim) float32: normal draws, the classes in `path` overwritten."""
    centers = np.random.default_rng(seed).standard_normal((num_classes, feat_dim))
    if path:
        if not os.path.isfile(path):
            raise ValueError(f"CenterLoss.center_file_path {path!r}: no such file")
        with open(path, "rb") as f:
            saved = pickle.load(f)
        if not isinstance(saved, dict):
            raise ValueError(f"CenterLoss.center_file_path {path!r}: expected the dict "
                             f"tools/export_center.py writes, got {type(saved).__name__}")
        for key, vector in saved.items():
            vector = np.asarray(vector, np.float64).reshape(-1)
            if not 0 <= int(key) < num_classes or vector.shape != (feat_dim,):
                raise ValueError(f"CenterLoss.center_file_path {path!r}: class {key} with "
                                 f"{vector.shape[0]} values does not fit num_classes "
                                 f"{num_classes}, feat_dim {feat_dim}")
            centers[int(key)] = vector
    return centers.astype(np.float32)


def center_rows(features, logits, centers):
    """Per sample (B,): the mean over its T frames of Paddle's row value, the squared distance
    to the predicted class's centre clipped to [1e-12, 1e12] plus 1e-12 for each other class
    (a frame predicting a class beyond the centres has only those). Paddle's total, a sum over
    the B*T rows / (B*T), is the mean of these."""
    num_classes, feat_dim = centers.shape
    if features.shape[-1] != feat_dim:
        raise ValueError(f"CenterLoss.feat_dim {feat_dim} != the head's feature width "
                         f"{features.shape[-1]} (CTCHead.mid_channels)")
    label = jnp.argmax(logits, axis=-1)                                   # (B, T)
    known = label < num_classes
    center = jnp.asarray(centers)[jnp.minimum(label, num_classes - 1)]    # (B, T, D)
    dist = jnp.sum(jnp.square(features.astype(jnp.float32) - center), axis=-1)
    rows = jnp.where(known, jnp.clip(dist, _FLOOR, _CEIL) + (num_classes - 1) * _FLOOR,
                     num_classes * _FLOOR)
    return rows.mean(axis=-1)
