"""Images are shipped to the devices as uint8 (a quarter of float32's bytes) and
normalised there, inside the compiled step:

    x = normalize_rec_images(batch["image"], batch["valid_width"])   # (B, H, W, C) float32

equals PaddleOCR's resize_norm_img: (x / 255 - 0.5) / 0.5 in the first `valid_width` columns of
each image, exactly 0.0 in the zero padding on the right. Detection images:

    x = normalize_det_images(batch["image"], mean, std, scale, batch.get("valid_shape"))

equals PaddleOCR's NormalizeImage (hwc: (x · scale − mean) / std per channel, float32), and 0.0
in the padding of a fixed eval canvas below / right of `valid_shape`, which is what Paddle's
convolutions see past the border of an unpadded image.
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


def normalize_det_images(image_u8, mean, std, scale=1.0 / 255.0, valid_shape=None,
                         dtype=jnp.float32):
    """(B, H, W, C) uint8 -> (B, H, W, C) `dtype`: (x · scale − mean) / std in float32, as
    PaddleOCR's NormalizeImage; 0 outside the top-left (h, w) of `valid_shape` (B, 2) when
    given."""
    image_u8 = jnp.asarray(image_u8)
    if image_u8.ndim != 4:
        raise ValueError(f"normalize_det_images: expected (B, H, W, C), got {image_u8.shape}")
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    x = (image_u8.astype(jnp.float32) * jnp.float32(scale) - mean) / std
    if valid_shape is not None:
        hw = jnp.asarray(valid_shape, jnp.int32).reshape(-1, 2)
        rows = jnp.arange(image_u8.shape[1], dtype=jnp.int32)[None, :] < hw[:, :1]  # (B, H)
        cols = jnp.arange(image_u8.shape[2], dtype=jnp.int32)[None, :] < hw[:, 1:]  # (B, W)
        inside = rows[:, :, None] & cols[:, None, :]
        x = jnp.where(inside[..., None], x, 0.0)
    return x.astype(dtype)
