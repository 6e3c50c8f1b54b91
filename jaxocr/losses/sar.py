"""SARLoss (PaddleOCR ``ppocr/losses/rec_sar_loss.py``): cross-entropy of the SAR decoder's
steps against the label shifted by one, padding ignored."""
import jax.numpy as jnp
import optax


def sar_token_losses(logits, label_sar, ignore_index):
    """logits (B, T, C) of steps 1..T, label_sar (B, T) = [start, chars, end, pad...].

    Step t predicts token t + 1: Paddle drops the last step and the start token. Returns the
    per-token losses (B, T - 1) and the float mask of the tokens that count (not padding);
    Paddle's loss is their mean over the batch's counted tokens."""
    pred = logits[:, :-1].astype(jnp.promote_types(logits.dtype, jnp.float32))
    target = label_sar[:, 1:]
    counted = (target != ignore_index).astype(pred.dtype)
    safe = jnp.where(target == ignore_index, 0, target)
    return optax.softmax_cross_entropy_with_integer_labels(pred, safe) * counted, counted
