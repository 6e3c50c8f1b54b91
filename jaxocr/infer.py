"""Checkpoint inference on image files: `Global.infer_img` is a file or a directory."""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

from jaxocr.data.transforms import BadSample, build_transforms
from jaxocr.training.loop import Components

log = logging.getLogger("jaxocr")

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def image_paths(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        return sorted(os.path.join(path, f) for f in os.listdir(path)
                      if os.path.splitext(f)[1].lower() in IMAGE_EXTS)
    raise FileNotFoundError(f"Global.infer_img not found: {path}")


def predict(cfg: dict, batch_size: int = 64):
    """Yields (path, result) per readable image, the result as the task decodes it (rec:
    (text, score)); unreadable images are logged and skipped. `Components.task.format`
    turns a result into the printed line."""
    g = cfg["Global"]
    if not g.get("infer_img"):
        raise FileNotFoundError("set Global.infer_img=FILE_OR_DIR")
    paths = image_paths(g["infer_img"])
    device = jax.local_devices()[0]
    comp = Components(cfg, mesh=None)
    transform = build_transforms(cfg["Eval"]["dataset"]["transforms"], comp.task.charset, g,
                                 infer=True)
    keys = comp.task.device_keys["Eval"]
    samples = _prepare(paths, transform, keys)
    if not samples:
        return
    state, _ = comp.restore_for_inference(samples[0][1]["image"].shape)
    variables = jax.device_put({"params": state.params, "batch_stats": state.batch_stats}, device)
    objective = comp.objective
    forward = jax.jit(lambda v, batch: objective.predictions(comp.model.apply(
        v, objective.inputs(batch, comp.dtype), train=False)))
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        pad = batch_size - len(chunk)  # one compiled shape for every batch
        batch = {k: np.stack([s[k] for _, s in chunk] + [np.zeros_like(chunk[0][1][k])] * pad)
                 for k in chunk[0][1]}
        out = jax.device_get(forward(variables, jax.device_put(batch, device)))
        results = comp.task.decode(jax.tree.map(lambda x: np.asarray(x)[:len(chunk)], out))
        for (path, _), result in zip(chunk, results):
            yield path, result


def _prepare(paths, transform, keys):
    samples, skipped = [], 0
    rng = np.random.default_rng(0)
    for path in paths:
        try:
            with open(path, "rb") as f:
                out = transform({"image_bytes": f.read()}, rng)
        except (BadSample, OSError) as e:
            log.warning("skipped %s: %s", path, e)
            skipped += 1
            continue
        samples.append((path, {k: out[k] for k in keys if k in out}))
    if skipped:
        log.warning("%d unreadable images skipped", skipped)
    return samples
