"""Greedy CTC decoding as PaddleOCR's CTCLabelDecode."""
import jax.numpy as jnp
import numpy as np


def best_path(probs):
    """On device: (B, T, C) probabilities -> argmax ids and their probabilities, (B, T) each.

    Only these small arrays travel to the host, not the whole (B, T, C) tensor.
    """
    return jnp.argmax(probs, axis=-1).astype(jnp.int32), jnp.max(probs, axis=-1)


def ctc_greedy_decode(ids: np.ndarray, probs: np.ndarray, charset) -> list[tuple[str, float]]:
    """Merge repeats, drop blank (0); score = mean of the kept max-probabilities (0 if none)."""
    ids = np.asarray(ids)
    probs = np.asarray(probs, np.float32)
    keep = ids != 0
    keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    out = []
    for row_ids, row_probs, row_keep in zip(ids, probs, keep):
        kept = row_ids[row_keep]
        score = float(row_probs[row_keep].mean()) if kept.size else 0.0
        out.append((charset.decode(kept.tolist()), score))
    return out


def decode_labels(labels: np.ndarray, lengths: np.ndarray, charset) -> list[str]:
    return [charset.decode(row[:n].tolist()) for row, n in zip(np.asarray(labels), np.asarray(lengths))]
