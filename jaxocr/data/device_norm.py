"""Recognition images are shipped to the devices as uint8 (a quarter of float32's bytes) and
normalised there, inside the compiled step:

    x = normalize_rec_images(batch["image"], batch["valid_width"])   # (B, H, W, C) float32

equals PaddleOCR's resize_norm_img: (x / 255 - 0.5) / 0.5 in the first `valid_width` columns of
each image, exactly 0.0 in the zero padding on the right.
"""
from __future__ import annotations

import jax.numpy as jnp


def normalize_rec_images(image_u8, valid_width=None, dtype=jnp.float32):
    """(B, H, W, C) uint8 and (B,) int valid widths -> (B, H, W, C) `dtype` in [-1, 1], 0 past
    each row's valid width. valid_width None: the whole width is valid. The arithmetic is
    float32 (PaddleOCR's), cast to `dtype` at the end."""
    image_u8 = jnp.asarray(image_u8)
    if image_u8.ndim != 4:
        raise ValueError(f"normalize_rec_images: expected (B, H, W, C), got {image_u8.shape}")
    x = image_u8.astype(jnp.float32) / 255.0
    x = (x - 0.5) / 0.5
    if valid_width is not None:
        width = image_u8.shape[2]
        cols = jnp.arange(width, dtype=jnp.int32)
        inside = cols[None, :] < jnp.asarray(valid_width, jnp.int32).reshape(-1, 1)  # (B, W)
        x = jnp.where(inside[:, None, :, None], x, 0.0)
    return x.astype(dtype)
