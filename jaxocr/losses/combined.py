"""PaddleOCR's CombinedLoss (``ppocr/losses/combined_loss.py``): weighted terms over a model's
outputs -- a distillation's members (``distillation_loss.py``) or one recogniser's.

    DistillationDMLLoss       mutual KL between two members' softmaxes (a head's output)
    DistillationDistanceLoss  l2 / l1 distance between two members' features (backbone_out)
    DistillationCTCLoss       each listed member's CTC loss
    DistillationSARLoss       each listed member's SAR loss
    CTCLoss                   the recogniser's CTC loss            (PP-OCRv2's enhanced CTC)
    CenterLoss                its features' distance to fixed class centres   (center_loss.py)

Every term but SAR's is a per-row loss averaged over the batch, as Paddle's (its DML and
distance losses sum, resp. average, each row's elements and average the rows).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

DISTILLATION_TERMS = ("DistillationDMLLoss", "DistillationDistanceLoss", "DistillationCTCLoss",
                      "DistillationSARLoss")
TERMS = (*DISTILLATION_TERMS, "CTCLoss", "CenterLoss")
_OPTIONS = {
    "DistillationDMLLoss": {"model_name_pairs", "act", "use_log", "key", "multi_head",
                            "dis_head", "maps_name", "name"},
    "DistillationDistanceLoss": {"model_name_pairs", "mode", "key", "name"},
    "DistillationCTCLoss": {"model_name_list", "key", "multi_head", "name"},
    "DistillationSARLoss": {"model_name_list", "key", "multi_head", "name", "ignore_index"},
    "CTCLoss": {"use_focal_loss"},
    "CenterLoss": {"num_classes", "feat_dim", "center_file_path"},
}


@dataclasses.dataclass(frozen=True)
class Term:
    kind: str                  # one of TERMS
    weight: float
    models: tuple              # pairs (DML, distance), names (CTC, SAR); (None,): the model
    key: str | None = None     # the member output it reads: head_out, backbone_out, ...
    branch: str | None = None  # MultiHead's output it reads: ctc | sar (multi_head)
    act: str | None = None
    mode: str = "l2"
    names: tuple = ()          # the log's key for each model (pair), as Paddle's loss dicts
    options: tuple = ()        # CTCLoss's and CenterLoss's own, as (key, value) pairs

    def pick(self, outputs, model: str | None):
        if model is None:  # a term of a plain model reads its whole output
            return outputs
        out = outputs[model]
        out = out[self.key] if self.key is not None else out
        return out[self.branch] if self.branch is not None else out


def combined_loss_terms(loss_cfg: dict) -> list[Term]:
    """The Loss section (name CombinedLoss) -> its terms; a term or option jaxocr does not
    train is a ValueError naming it."""
    entries = loss_cfg.get("loss_config_list")
    if not isinstance(entries, list) or not entries:
        raise ValueError("Loss (CombinedLoss).loss_config_list must be a list of one-key "
                         f"mappings, got {entries!r}")
    terms = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(f"Loss.loss_config_list.{i}: one-key mapping expected, got {entry!r}")
        (name, opts), = entry.items()
        where = f"Loss.loss_config_list.{i} ({name})"
        if name not in TERMS:
            raise ValueError(f"{where}: not a loss jaxocr trains; known: {', '.join(TERMS)}")
        opts = dict(opts or {})
        if "weight" not in opts:
            raise ValueError(f"{where}: needs a weight (PaddleOCR's CombinedLoss asserts it)")
        weight = float(opts.pop("weight"))
        unknown = sorted(set(opts) - _OPTIONS[name])
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {unknown}; accepted: "
                             f"{sorted(_OPTIONS[name])}")
        multi = bool(opts.get("multi_head", False))
        if name in ("CTCLoss", "CenterLoss"):
            # Paddle's CTCLoss returns {'loss': ...}, which the CombinedLoss total overwrites
            names = () if name == "CTCLoss" else ("loss_center",)
            terms.append(Term(name, weight, (None,), names=names,
                              options=tuple(sorted(opts.items()))))
            continue
        if name in ("DistillationDMLLoss", "DistillationDistanceLoss"):
            pairs = opts.get("model_name_pairs") or []
            pairs = [pairs] if pairs and isinstance(pairs[0], str) else pairs
            models = tuple(tuple(p) for p in pairs)
        else:
            models = tuple(opts.get("model_name_list") or [])
        if not models:
            raise ValueError(f"{where}: names no models")
        if name == "DistillationDMLLoss":
            if opts.get("maps_name") is not None or not opts.get("use_log", False):
                raise ValueError(f"{where}: only the recognition form (use_log true, no "
                                 "maps_name) is supported")
            if opts.get("act") not in (None, "softmax", "sigmoid"):
                raise ValueError(f"{where}: act must be softmax, sigmoid or none")
            branch = opts.get("dis_head", "ctc") if multi else None
            terms.append(Term(name, weight, models, opts.get("key"), branch, opts.get("act"),
                              names=_log_names(name, opts.get("name"), models)))
        elif name == "DistillationDistanceLoss":
            if opts.get("mode", "l2") not in ("l2", "l1"):
                raise ValueError(f"{where}: mode must be l2 or l1")
            terms.append(Term(name, weight, models, opts.get("key"), mode=opts.get("mode", "l2"),
                              names=_log_names(name, opts.get("name"), models)))
        else:
            branch = ("ctc" if name == "DistillationCTCLoss" else "sar") if multi else None
            terms.append(Term(name, weight, models, opts.get("key"), branch,
                              names=_log_names(name, opts.get("name"), models)))
    return terms


def _log_names(kind: str, name: str | None, models: tuple) -> tuple[str, ...]:
    """PaddleOCR's loss-dict keys of a term: DML `{name}_{i}`, distance
    `{name}_l2_{a}_{b}_{i}`, CTC / SAR `{name}_{model}_{i}`."""
    if kind == "DistillationDMLLoss":
        return tuple(f"{name or 'dml'}_{i}" for i in range(len(models)))
    if kind == "DistillationDistanceLoss":
        return tuple(f"{name or 'loss_distance'}_l2_{a}_{b}_{i}" for i, (a, b) in enumerate(models))
    base = name or ("loss_ctc" if kind == "DistillationCTCLoss" else "loss_sar")
    return tuple(f"{base}_{m}_{i}" for i, m in enumerate(models))


def _rows(x):
    return x.reshape(x.shape[0], -1)


def dml_rows(a, b, act: str | None = "softmax"):
    """Paddle's DMLLoss(use_log=True) per row: (KL(pb || pa) + KL(pa || pb)) / 2, summed over
    the row's elements; pa, pb the activations (+1e-10) of a and b."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    if act == "softmax":
        pa, pb = jax.nn.softmax(a, -1) + 1e-10, jax.nn.softmax(b, -1) + 1e-10
    elif act == "sigmoid":
        pa, pb = jax.nn.sigmoid(a) + 1e-10, jax.nn.sigmoid(b) + 1e-10
    else:
        pa, pb = a, b
    la, lb = jnp.log(pa), jnp.log(pb)
    kl_ab = pb * (jnp.log(pb + 1e-10) - la)
    kl_ba = pa * (jnp.log(pa + 1e-10) - lb)
    return (_rows(kl_ab).sum(-1) + _rows(kl_ba).sum(-1)) / 2.0


def distance_rows(a, b, mode: str = "l2"):
    """Paddle's MSELoss / L1Loss (mean over every element) per row."""
    d = a.astype(jnp.float32) - b.astype(jnp.float32)
    return _rows(jnp.square(d) if mode == "l2" else jnp.abs(d)).mean(-1)
