"""Checkpoint inference: a `Predictor` runs a trained model of any task on images in memory;
`predict(cfg)` on the files of `Global.infer_img` (a file or a directory)."""
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


class Predictor:
    """A trained model on one local device, in eval mode, with the Eval transforms of its config
    (label ops dropped, as PaddleOCR's infer scripts do) and the task's post-process.

        predictor = Predictor(cfg)               # Global.checkpoints: a run dir or checkpoint
        results = predictor([img1, img2, ...])   # HxWx3 uint8 BGR (as cv2.imread gives)

    Results as the task decodes them: rec (text, score); det {'points': [...], 'scores': [...]}
    in source-image pixels. Batches are padded to `batch_size` rows (the task's default: 16 text
    lines, 1 detection canvas), so every call runs one compiled shape."""

    def __init__(self, cfg: dict, batch_size: int | None = None):
        self.cfg = cfg
        self.device = jax.local_devices()[0]
        self.comp = Components(cfg, mesh=None)
        self.task = self.comp.task
        self.batch_size = int(batch_size or self.task.infer_batch_size)
        g = cfg["Global"]
        options = self.task.loader_options(self.comp.model, "Eval")
        self.transform = options.get("transform") or build_transforms(
            cfg["Eval"]["dataset"]["transforms"], self.task.charset, g, infer=True)
        self.finalize = options.get("finalize")
        self.keys = self.task.device_keys["Eval"]
        self._variables = None
        comp, objective = self.comp, self.comp.objective
        self._forward = jax.jit(lambda v, batch: objective.predictions(comp.model.apply(
            v, objective.inputs(batch, comp.dtype), train=False), batch))

    def prepare(self, sample: dict) -> dict:
        """{'image': array} or {'image_bytes': bytes} -> the transformed sample (BadSample if
        unreadable)."""
        out = self.transform(sample, np.random.default_rng(0))
        return out if self.finalize is None else self.finalize(out)

    def _load(self, image_shape):
        if self._variables is None:
            state, _ = self.comp.restore_for_inference(image_shape)
            self._variables = jax.device_put(
                {"params": state.params, "batch_stats": state.batch_stats}, self.device)
        return self._variables

    def run(self, samples: list[dict]) -> list:
        """Prepared samples -> one result per sample."""
        results = []
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start:start + self.batch_size]
            pad = self.batch_size - len(chunk)
            host = {k: np.stack([s[k] for s in chunk] + [np.zeros_like(chunk[0][k])] * pad)
                    for k in chunk[0] if isinstance(chunk[0][k], (np.ndarray, np.generic))
                    and k not in self.task.ragged_keys}
            variables = self._load(chunk[0]["image"].shape)
            batch = {k: host[k] for k in self.keys if k in host}
            out = jax.device_get(self._forward(variables, jax.device_put(batch, self.device)))
            out = jax.tree.map(lambda x: np.asarray(x)[:len(chunk)], out)
            results.extend(self.task.decode(out, {k: v[:len(chunk)] for k, v in host.items()}))
        return results

    def __call__(self, images) -> list:
        """HxWx3 uint8 BGR images -> one result each (an unreadable one raises BadSample)."""
        return self.run([self.prepare({"image": np.asarray(img)}) for img in images])


def predict(cfg: dict, batch_size: int | None = None):
    """Yields (path, result) per readable image of `Global.infer_img`; unreadable images are
    logged and skipped. `Predictor.task.format` turns a result into the printed line."""
    g = cfg["Global"]
    if not g.get("infer_img"):
        raise FileNotFoundError("set Global.infer_img=FILE_OR_DIR")
    paths = image_paths(g["infer_img"])
    predictor = Predictor(cfg, batch_size)
    batch_size = predictor.batch_size
    samples, skipped = [], 0
    for path in paths:
        try:
            with open(path, "rb") as f:
                samples.append((path, predictor.prepare({"image_bytes": f.read()})))
        except (BadSample, OSError) as e:
            log.warning("skipped %s: %s", path, e)
            skipped += 1
    if skipped:
        log.warning("%d unreadable images skipped", skipped)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        for (path, _), result in zip(chunk, predictor.run([s for _, s in chunk])):
            yield path, result
