"""CTC loss as PaddleOCR's CTCLoss: per-sample loss (not length-normalised), batch mean."""
import jax.numpy as jnp
import optax


def ctc_loss(logits, labels, lengths, use_focal_loss=False):
    """logits (B, T, C) float; labels (B, L) int, zero-padded; lengths (B,) int.

    Returns the per-sample losses (B,); log-softmax runs in at least float32 whatever the
    compute dtype.
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    b, t, _ = logits.shape
    logit_paddings = jnp.zeros((b, t), logits.dtype)
    label_paddings = (jnp.arange(labels.shape[1])[None, :] >= lengths[:, None]).astype(logits.dtype)
    loss = optax.ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=0)
    if use_focal_loss:
        loss = loss * jnp.square(1.0 - jnp.exp(-loss))
    return loss


def batch_mean(values, weights=None):
    if weights is None:
        return jnp.mean(values)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)
