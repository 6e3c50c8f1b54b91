"""PaddleDetection-schema YAML configs (`configs/ppyoloe/...`): read as PaddleDetection reads them.

    raw = read_ppdet_config("configs/ppyoloe/ppyoloe_crn_s_300e_coco.yml", ["epoch=10"])

- `_BASE_: [files]` includes, resolved relative to the including file, recursively, merged as
  ppdet's `workspace._load_config_with_base`: later bases override earlier ones, the file
  overrides its bases, mappings merge key by key, anything else (lists included) is replaced.
- YAML tags (`TrainDataset: !COCODataSet {...}`, `- !Decode {}`) are read by a *safe* loader as
  plain mappings, the tag as their `name`; no tag constructs an object. Anchors and aliases
  (`*eval_size`) work as in any YAML.
- `-o key.sub=value` overrides as ppdet's ArgsParser: the value parsed as YAML, dotted keys
  nested.
- Validation: every top-level key is one PaddleDetection's trainer reads, one jaxocr ignores
  (listed once in the log), or a module section named by the architecture; otherwise a
  ConfigError with its path and the closest valid key. A module section's own keys are checked
  by the builder of that module (it knows its fields).
"""
from __future__ import annotations

import copy
import logging
import os

import yaml

from jaxocr.config import ConfigError, _unknown, apply_override

log = logging.getLogger("jaxocr")

BASE_KEY = "_BASE_"

# Top-level keys of PaddleDetection 2.7's configs that jaxocr reads.
KNOWN_TOP = {
    "architecture", "norm_type", "use_ema", "ema_decay", "ema_black_list", "depth_mult",
    "width_mult", "log_iter", "snapshot_epoch", "weights", "pretrain_weights", "epoch",
    "LearningRate", "OptimizerBuilder", "worker_num", "eval_height", "eval_width", "eval_size",
    "TrainReader", "EvalReader", "TestReader", "metric", "num_classes", "TrainDataset",
    "EvalDataset", "TestDataset", "save_dir", "filename", "use_gpu", "find_unused_parameters",
    "seed", "amp",
}
# PaddleDetection keys with no meaning here: accepted, listed once in the log.
IGNORED_TOP = {
    "use_xpu", "use_mlu", "use_npu", "use_gcu", "print_flops", "print_params", "export",
    "custom_black_list", "amp_level", "use_vdl", "vdl_log_dir", "use_wandb", "save_prediction_only",
    "profiler_options", "to_static", "fleet", "enable_ce", "ema_filter_no_grad",
    "ema_decay_type", "cycle_epoch", "log_level", "use_shared_memory", "collate_batch",
}


class _TagsAsMappings(yaml.SafeLoader):
    """SafeLoader that reads `!Name {...}` as {'name': 'Name', ...} and `!Name` on a scalar or
    sequence as {'name': 'Name', 'value': ...}."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
        return {"name": suffix, **value}
    if isinstance(node, yaml.SequenceNode):
        return {"name": suffix, "value": loader.construct_sequence(node, deep=True)}
    scalar = loader.construct_scalar(node)
    return {"name": suffix} if scalar in ("", None) else {"name": suffix, "value": scalar}


_TagsAsMappings.add_multi_constructor("!", _tagged)


def is_ppdet_config(raw: dict) -> bool:
    """A PaddleDetection config (its top level names the architecture or includes bases)."""
    return isinstance(raw, dict) and ("architecture" in raw or BASE_KEY in raw
                                      or "TrainReader" in raw)


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            cfg = yaml.load(f, Loader=_TagsAsMappings) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return cfg


def merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base` (ppdet's dict_merge)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def with_bases(path: str, _chain: tuple[str, ...] = ()) -> dict:
    """The config at `path` with its `_BASE_` files merged in (ppdet's order)."""
    real = os.path.realpath(path)
    if real in _chain:
        cycle = " -> ".join(os.path.basename(p) for p in (*_chain, real))
        raise ConfigError(f"{path}: {BASE_KEY} includes itself ({cycle})")
    cfg = read_yaml(path)
    bases = cfg.pop(BASE_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        base = os.path.expanduser(str(base))
        if not os.path.isabs(base):
            base = os.path.join(os.path.dirname(path), base)
        if not os.path.isfile(base):
            raise ConfigError(f"{path}: {BASE_KEY} file not found: {base}")
        merged = merge(merged, with_bases(base, (*_chain, real)))
    return merge(merged, cfg)


def module_sections(cfg: dict) -> set[str]:
    """The top-level sections naming modules: the architecture's, and those its parts name
    (YOLOv3: {backbone: CSPResNet, neck: CustomCSPPAN, yolo_head: PPYOLOEHead})."""
    arch = cfg.get("architecture")
    if not arch:
        return set()
    names = {str(arch)}
    parts = cfg.get(str(arch))
    if isinstance(parts, dict):
        names |= {str(v) for v in parts.values() if isinstance(v, str) and v}
    return names


def read_ppdet_config(path: str, overrides: list[str] | None = None) -> dict:
    """The merged, overridden, validated PaddleDetection config; `filename` set as ppdet does."""
    cfg = with_bases(path)
    for item in overrides or []:
        apply_override(cfg, item)
    cfg.setdefault("filename", os.path.splitext(os.path.basename(path))[0])
    validate_top(cfg)
    return cfg


def validate_top(cfg: dict) -> None:
    if not cfg.get("architecture"):
        raise ConfigError("architecture: missing (PaddleDetection's config names it, e.g. "
                          "`architecture: YOLOv3`)")
    modules = module_sections(cfg)
    ignored = []
    for key in cfg:
        if key in KNOWN_TOP or key in modules:
            continue
        if key in IGNORED_TOP:
            ignored.append(key)
            continue
        raise ConfigError(_unknown(key, KNOWN_TOP | IGNORED_TOP | modules))
    for key in modules:
        if key not in cfg:
            raise ConfigError(f"{key}: the architecture names it but the config has no "
                              f"{key} section")
    if ignored:
        log.info("ignoring PaddleDetection keys that mean nothing in jaxocr: %s",
                 ", ".join(sorted(ignored)))


# ---------------------------------------------------------------------------------------------
# the run config: PaddleDetection's keys mapped onto the schema the core reads (PaddleOCR's)

# PPYOLOEHead keys that configure the loss, the post-process or nothing here (the rest are the
# head module's fields, checked by its builder)
HEAD_LOSS_KEYS = ("static_assigner_epoch", "use_varifocal_loss", "loss_weight",
                  "static_assigner", "assigner")
HEAD_IGNORED_KEYS = ("eval_size", "trt", "exclude_nms", "exclude_post_process",
                     "use_shared_conv", "for_distill")
SHARED_BACKBONE_KEYS = ("depth_mult", "width_mult")  # ppdet's __shared__: top level -> modules


def to_run_config(cfg: dict, eval_in_training: bool = False) -> dict:
    """The run config of a PaddleDetection config read by `read_ppdet_config`.

    `eval_in_training`: tools/train.py's `--eval` (evaluate every `snapshot_epoch` epochs)."""
    arch_name = cfg["architecture"]
    if arch_name != "YOLOv3":
        raise ConfigError(f"architecture: {arch_name!r} is not supported; jaxocr trains "
                          f"YOLOv3-architecture models (PP-YOLOE)")
    parts = dict(cfg.get(arch_name) or {})
    unknown = sorted(set(parts) - {"backbone", "neck", "yolo_head", "post_process",
                                   "data_format", "for_mot"})
    if unknown:
        raise ConfigError(_unknown(f"{arch_name}.{unknown[0]}",
                                   {"backbone", "neck", "yolo_head", "post_process"}))
    if parts.get("post_process"):
        raise ConfigError(f"{arch_name}.post_process: {parts['post_process']!r} is not "
                          f"supported; PP-YOLOE's head post-processes itself (~)")
    shared = {k: cfg[k] for k in SHARED_BACKBONE_KEYS if k in cfg}
    num_classes = int(cfg.get("num_classes", 80))
    head_name = parts.get("yolo_head")
    head = dict(cfg.get(head_name) or {})
    loss = {k: head.pop(k) for k in HEAD_LOSS_KEYS if k in head}
    nms = head.pop("nms", None) or {}
    for k in HEAD_IGNORED_KEYS:
        head.pop(k, None)
    section = lambda name: dict(cfg.get(name) or {})
    arch = {"model_type": "yolo", "algorithm": "PPYOLOE",
            "Backbone": {"name": parts.get("backbone"), **shared, **section(parts.get("backbone"))},
            "Neck": {"name": parts.get("neck"), **shared, **section(parts.get("neck"))},
            "Head": {"name": head_name, "num_classes": num_classes, **head}}
    save_dir = os.path.join(str(cfg.get("save_dir", "output")), str(cfg["filename"]))
    snapshot = int(cfg.get("snapshot_epoch", 1))
    glob = {
        "epoch_num": int(cfg.get("epoch", 1)),
        "print_batch_step": int(cfg.get("log_iter", 20)),
        "save_model_dir": save_dir,
        "save_epoch_step": snapshot,
        "eval_epoch_step": snapshot if eval_in_training else None,
        "eval_batch_step": None,
        "pretrained_model": cfg.get("pretrain_weights"),
        "pretrained_key": "pretrain_weights",  # what an error tells the user to set
        "use_sync_bn": cfg.get("norm_type") == "sync_bn",
        "use_ema": bool(cfg.get("use_ema", False)),
        "ema_decay": float(cfg.get("ema_decay", 0.9998)),
        "infer_checkpoint": cfg.get("weights"),
        "use_amp": bool(cfg.get("amp", False)),  # tools/train.py --amp (bfloat16 here)
    }
    if cfg.get("seed") is not None:
        glob["seed"] = int(cfg["seed"])
    run = {
        "Global": glob,
        "Architecture": arch,
        "Loss": {"name": "PPYOLOELoss", "num_classes": num_classes, **loss},
        "PostProcess": {"name": "MultiClassNMS", **{k: v for k, v in nms.items() if k != "name"}},
        "Metric": {"name": str(cfg.get("metric", "COCO")), "main_indicator": "AP"},
        "Optimizer": _optimizer(cfg),
        "Train": _reader(cfg, "Train", num_classes),
        "Eval": _reader(cfg, "Eval", num_classes),
    }
    return run


def _optimizer(cfg: dict) -> dict:
    lr = dict(cfg.get("LearningRate") or {})
    base = float(lr.get("base_lr", 0.01))
    out_lr: dict = {"learning_rate": base, "name": "Const"}
    for sch in lr.get("schedulers") or []:
        sch = dict(sch)
        name = sch.pop("name", None)
        if name == "CosineDecay":
            out_lr.update(name="Cosine", max_epochs=float(sch.pop("max_epochs", 1000)),
                          eta_min=float(sch.pop("min_lr", 0.0)))
            sch.pop("use_warmup", None)
        elif name == "LinearWarmup":
            if sch.get("epochs") is not None:
                out_lr["warmup_epoch"] = float(sch.pop("epochs"))
                sch.pop("steps", None)
            else:
                out_lr["warmup_steps"] = int(sch.pop("steps", 500))
            out_lr["warmup_start_factor"] = float(sch.pop("start_factor", 1.0 / 3))
            sch.pop("epochs_first", None)
        elif name == "PiecewiseDecay":
            gamma = sch.pop("gamma", [0.1, 0.01])
            miles = [float(m) for m in sch.pop("milestones", [])]
            gammas = gamma if isinstance(gamma, list) else [gamma ** (i + 1)
                                                             for i in range(len(miles))]
            out_lr.update(name="Piecewise", decay_epochs=miles,
                          values=[base] + [base * float(g) for g in gammas[:len(miles)]])
            sch.pop("use_warmup", None)
        else:
            raise ConfigError(f"LearningRate.schedulers: {name!r} is not supported; known: "
                              f"CosineDecay, LinearWarmup, PiecewiseDecay")
        if sch:
            raise ConfigError(_unknown(f"LearningRate.schedulers.{name}.{sorted(sch)[0]}",
                                       {"max_epochs", "min_lr", "epochs", "steps",
                                        "start_factor", "gamma", "milestones"}))
    builder = dict(cfg.get("OptimizerBuilder") or {})
    opt = dict(builder.pop("optimizer", None) or {"type": "Momentum", "momentum": 0.9})
    opt = {k: v for k, v in opt.items() if v is not None}  # `key: ~` clears a base's key
    kind = opt.pop("type", "Momentum")
    if kind not in ("Momentum", "SGD", "Adam", "AdamW"):
        raise ConfigError(f"OptimizerBuilder.optimizer.type: {kind!r} is not supported; "
                          f"known: Momentum, SGD, Adam, AdamW")
    out = {"name": kind, "lr": out_lr}
    if kind == "Momentum":
        out["momentum"] = float(opt.pop("momentum", 0.9))
    for ppdet_key, key in (("beta1", "beta1"), ("beta2", "beta2"), ("epsilon", "epsilon")):
        if ppdet_key in opt and kind in ("Adam", "AdamW"):
            out[key] = float(opt.pop(ppdet_key))
    if kind == "AdamW":  # decoupled decay; ppdet's builder gives AdamW no regularizer
        out["weight_decay"] = float(opt.pop("weight_decay", 0.01))
    opt.pop("use_nesterov", None)
    if opt:
        raise ConfigError(f"OptimizerBuilder.optimizer.{sorted(opt)[0]}: not an option of "
                          f"{kind} here (Momentum: momentum; Adam: beta1, beta2, epsilon; "
                          f"AdamW: those and weight_decay; `{sorted(opt)[0]}: ~` clears a "
                          f"base file's value)")
    reg = builder.pop("regularizer", None)
    if kind == "AdamW":
        reg = None
    if reg and reg != "None":
        reg = dict(reg)
        out["regularizer"] = {"name": reg.get("type", "L2"), "factor": float(reg["factor"]),
                              # ppdet's ConvBNLayers give BatchNorm L2Decay(0.0) of its own
                              "norm_factor": 0.0}
    if builder.get("clip_grad_by_norm") is not None:
        out["clip_norm_global"] = float(builder.pop("clip_grad_by_norm"))
    if builder:
        raise ConfigError(_unknown(f"OptimizerBuilder.{sorted(builder)[0]}",
                                   {"optimizer", "regularizer", "clip_grad_by_norm"}))
    return out


def _reader(cfg: dict, mode: str, num_classes: int) -> dict:
    """`{mode}Dataset` + `{mode}Reader` -> the Train / Eval section."""
    dataset = dict(cfg.get(f"{mode}Dataset") or {})
    if not dataset.get("name"):
        raise ConfigError(f"{mode}Dataset: missing (or without a name: COCODataSet, "
                          f"SynthShapes)")
    reader = dict(cfg.get(f"{mode}Reader") or {})
    dataset["transforms"] = reader.pop("sample_transforms", None) or []
    dataset["batch_transforms"] = reader.pop("batch_transforms", None) or []
    if dataset["name"] == "SynthShapes":
        dataset.setdefault("num_classes", num_classes)
    loader = {"batch_size_per_card": int(reader.pop("batch_size", 1)),
              "shuffle": bool(reader.pop("shuffle", mode == "Train")),
              "drop_last": bool(reader.pop("drop_last", mode == "Train")),
              "num_workers": int(cfg.get("worker_num", 2))}
    if "worker_type" in reader:  # jaxocr's own key (thread | process | auto), as for PaddleOCR
        loader["worker_type"] = reader.pop("worker_type")
    for k in ("use_shared_memory", "collate_batch", "inputs_def", "fuse_normalize",
              "mixup_epoch", "cutmix_epoch", "mosaic_epoch"):
        reader.pop(k, None)
    if reader:
        raise ConfigError(_unknown(f"{mode}Reader.{sorted(reader)[0]}",
                                   {"sample_transforms", "batch_transforms", "batch_size",
                                    "shuffle", "drop_last", "use_shared_memory",
                                    "collate_batch", "worker_type"}))
    return {"dataset": dataset, "loader": loader}
