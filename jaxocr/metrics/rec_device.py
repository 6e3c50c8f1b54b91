"""RecMetric's sums computed inside the compiled train step, so a log line never waits for the
host to decode a batch.

Greedy CTC decoding (merge repeats, drop blanks), RecMetric's normalisation (`ignore_space`,
`is_filter`) as a table from class id to a canonical id (0 = dropped), then exact match and the
Levenshtein distance divided by the longer length (rapidfuzz's `normalized_distance`), per row.
Characters are compared as dictionary entries: equal to RecMetric on strings for dictionaries of
single characters (every PaddleOCR dictionary).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxocr.metrics.rec_metric import RecMetric


def canonical_ids(charset, metric: RecMetric) -> np.ndarray:
    """(num_classes,) int32: class id -> id of its normalised text; 0 for blank and for
    entries the metric removes (a space under ignore_space, punctuation under is_filter)."""
    table = np.zeros(charset.num_classes, np.int32)
    seen: dict[str, int] = {}
    for i in range(1, charset.num_classes):
        text = metric._normalize(charset.decode([i]))
        if text:
            table[i] = seen.setdefault(text, len(seen) + 1)
    return table


def _compact(ids, keep):
    """Rows of `ids` with the kept entries moved to the front, zero after; and their count."""
    n = ids.shape[1]
    pos = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, n)
    out = jnp.zeros_like(ids)
    rows = jnp.arange(ids.shape[0])[:, None]
    out = out.at[rows, pos].set(ids, mode="drop")
    return out, keep.sum(axis=1)


def edit_distance(a, len_a, b, len_b):
    """Levenshtein distance per row between a[:len_a] and b[:len_b] (B,), one DP row per
    element of a. Within a row, d[j] = min_k (t[k] + j - k) is a running minimum."""
    cols = jnp.arange(b.shape[1] + 1)
    first = jnp.broadcast_to(cols, (a.shape[0], cols.size)).astype(jnp.int32)

    def row(prev, x):
        i, ai = x
        sub = prev[:, :-1] + (ai[:, None] != b)
        t = jnp.concatenate([jnp.full((a.shape[0], 1), i), jnp.minimum(prev[:, 1:] + 1, sub)], 1)
        cur = jax.lax.cummin(t - cols, axis=1) + cols
        return jnp.where((i <= len_a)[:, None], cur, prev), None

    steps = (jnp.arange(1, a.shape[1] + 1, dtype=jnp.int32), a.T)
    last, _ = jax.lax.scan(row, first, steps)
    return jnp.take_along_axis(last, len_b[:, None].astype(jnp.int32), axis=1)[:, 0]


def rec_metric_sums(pred_ids, labels, lengths, mask, table):
    """(correct, normalised edit distance, count) summed over the rows where mask is 1."""
    table = jnp.asarray(table)
    prev = jnp.pad(pred_ids, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
    pred = table[pred_ids]
    pred, len_p = _compact(pred, (pred_ids != prev) & (pred_ids != 0) & (pred != 0))
    label = table[labels]
    label, len_l = _compact(label, (jnp.arange(labels.shape[1]) < lengths[:, None]) & (label != 0))
    width = max(pred.shape[1], label.shape[1])
    pad = lambda x: jnp.pad(x, ((0, 0), (0, width - x.shape[1])))
    correct = jnp.all(pad(pred) == pad(label), axis=1)
    dist = edit_distance(pred, len_p, label, len_l)
    norm = dist / jnp.maximum(jnp.maximum(len_p, len_l), 1)
    mask = mask.astype(jnp.float32)
    return jnp.stack([jnp.sum(correct * mask), jnp.sum(norm * mask), jnp.sum(mask)])
