"""A trained model's inference graph, serialised for serving outside this code base.

StableHLO, through `jax.export`: the function below with its weights as constants, eval mode,
traced for a symbolic batch (and image size where the model allows), serialised to one file
that `jax.export.deserialize` turns back into a callable on any jax of the same or a later
version (jax's calling-convention guarantees), on CPU or GPU; a JSON file beside it says how to
call it. The inputs and outputs are those of PaddleOCR's / PaddleDetection's inference models:

| task | inputs | output |
| --- | --- | --- |
| rec | `x`: (B, 3, H, W) float32, NCHW, (pixel / 255 - 0.5) / 0.5, W any multiple of 4 | (B, T, C) float32: the per-step softmax over blank + the dictionary |
| det | `x`: (B, 3, H, W) float32, NCHW, NormalizeImage's (pixel * scale - mean) / std, H and W multiples of 32 | (B, 1, H, W) float32: the shrink-probability map |
| yolo | `image` as det (PP-YOLOE's mean / std), `scale_factor`: (B, 2) float32 (resized / source, y then x) | `boxes` (B, K, 4) x1 y1 x2 y2 in source pixels, `scores` (B, K), `classes` (B, K) int32, `valid` (B, K) bool: the NMS rows |
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

# Symbolic image sizes each task's model takes (rec: the width only, its height is the
# model's; det / yolo: both sides, in the models' 32-pixel steps)
SIZES = {"rec": ("H", "4*w"), "det": ("32*h", "32*w"), "yolo": ("32*h", "32*w")}


def constraints(comp) -> tuple[str, ...]:
    """What the symbolic sizes must satisfy. PP-YOLOE: at least `nms_top_k` anchors (its NMS
    takes the top k of them per class), `sum (32 / stride)^2` per 32-pixel cell."""
    if comp.task.name == "rec":
        return ("w >= 2",)
    if comp.task.name == "yolo":
        per_cell = sum((32 // s) ** 2 for s in comp.objective.fpn_strides)
        top_k = int(comp.objective.nms["nms_top_k"])
        return (f"{per_cell}*h*w >= {top_k}",) if top_k > 0 else ()
    return ()


def serving_function(comp, variables: dict):
    """f(x[, scale_factor]) -> the task's serving output (see the module docstring)."""
    task, model, objective = comp.task.name, comp.model, comp.objective

    def serve(x, *extra):
        images = jnp.transpose(x, (0, 2, 3, 1))  # the models are NHWC
        outputs = model.apply(variables, images, train=False)
        if task == "rec":
            from jaxocr.tasks.rec import logits_of
            return jax.nn.softmax(logits_of(outputs).astype(jnp.float32), axis=-1)
        if task == "det":
            return jnp.transpose(outputs["maps"][..., :1], (0, 3, 1, 2)).astype(jnp.float32)
        return objective.predictions(outputs, {"image": images, "scale_factor": extra[0]})
    return serve


def input_specs(comp, image_shape) -> list[jax.ShapeDtypeStruct]:
    task = comp.task.name
    h, w, c = image_shape
    height, width = SIZES[task]
    height = str(h) if height == "H" else height
    scope = jax.export.SymbolicScope(constraints(comp))
    specs = [jax.ShapeDtypeStruct(
        jax.export.symbolic_shape(f"B, {c}, {height}, {width}", scope=scope), jnp.float32)]
    if task == "yolo":
        specs.append(jax.ShapeDtypeStruct(jax.export.symbolic_shape("B, 2", scope=scope),
                                          jnp.float32))
    return specs


def export_stablehlo(comp, variables: dict, image_shape, out: str,
                     platforms=("cpu", "cuda")) -> dict:
    """Serialise the serving function to `out`, lowered for each of `platforms` (one file
    serves on any of them); writes `out`.json (the calling convention) and returns it."""
    task = comp.task.name
    specs = input_specs(comp, image_shape)
    exported = jax.export.export(jax.jit(serving_function(comp, variables)),
                                 platforms=tuple(platforms))(*specs)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "wb") as f:
        f.write(exported.serialize())
    names = ["x"] if task != "yolo" else ["image", "scale_factor"]
    card = {
        "format": "jax.export serialized StableHLO: "
                  "jax.export.deserialize(open(PATH, 'rb').read()).call(*inputs)",
        "task": task,
        "calling_convention_version": exported.calling_convention_version,
        "exported_with_jax": jax.__version__,
        "platforms": list(exported.platforms),
        "constraints": list(constraints(comp)),
        "inputs": [{"name": n, "shape": [str(d) for d in s.shape], "dtype": "float32"}
                   for n, s in zip(names, exported.in_avals)],
        "outputs": [str(a) for a in exported.out_avals],
        "layout": "NCHW", "normalisation": _normalisation(comp),
    }
    charset = getattr(comp.task, "charset", None)
    if charset is not None:  # output class k > 0 is the dictionary's character k - 1
        card["characters"] = list(charset.characters)
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump(card, f, ensure_ascii=False, indent=1)
    return card


def _normalisation(comp) -> str:
    objective = comp.objective
    if comp.task.name == "rec":
        return "(pixel / 255 - 0.5) / 0.5, RGB order as read by cv2 (BGR), PaddleOCR's"
    mean, std = (np.asarray(v).round(4).tolist() for v in (objective.mean, objective.std))
    return f"(pixel * {float(objective.scale):g} - mean) / std, mean {mean}, std {std}"


def load_stablehlo(path: str):
    """The exported function, callable on arrays of the shapes its card gives."""
    with open(path, "rb") as f:
        return jax.export.deserialize(bytearray(f.read())).call
