"""PaddleOCR-schema YAML configs: load, apply `-o Key.sub=value` overrides, validate.

Validation names the bad key path and, for a misspelt key, the closest valid one. Keys that
PaddleOCR has but that mean nothing here are accepted and reported once at info level.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging

import yaml

log = logging.getLogger("jaxocr")

SECTIONS = ("Global", "Architecture", "Loss", "Optimizer", "PostProcess", "Metric", "Train", "Eval")

# Keys this project reads, per section path. Architecture / transform parameters are checked by
# the builders that consume them (they know their own signatures).
KNOWN = {
    "Global": {
        "epoch_num", "max_steps", "log_smooth_window", "print_batch_step", "save_model_dir",
        "save_epoch_step", "eval_batch_step", "cal_metric_during_train", "pretrained_model",
        "checkpoints", "infer_img", "character_dict_path", "character_type", "max_text_length",
        "use_space_char", "save_res_path", "seed", "use_sync_bn", "use_amp", "amp_dtype",
        "use_tensorboard", "conv_impl", "prefetch", "skip_nonfinite_updates",
        "auto_resume", "save_every_steps", "save_every_minutes", "compilation_cache_dir",
        # from PaddleDetection configs (config_ppdet.py): eval every N epochs (--eval), the EMA
        # of the weights, the checkpoint eval / infer read (`weights`)
        "eval_epoch_step", "use_ema", "ema_decay", "infer_checkpoint", "pretrained_key",
    },
    "Optimizer": {
        "name", "beta1", "beta2", "epsilon", "momentum", "lr", "regularizer", "clip_norm",
        "clip_norm_global", "weight_decay", "no_weight_decay_name",
        "one_dim_param_no_weight_decay",
    },
    "Optimizer.lr": {
        "name", "learning_rate", "warmup_epoch", "decay_epochs", "values", "T_max", "eta_min",
        "step_size", "gamma", "end_lr", "power",
        # PaddleDetection's CosineDecay / LinearWarmup (config_ppdet.py)
        "max_epochs", "warmup_steps", "warmup_start_factor",
    },
    "Optimizer.regularizer": {"name", "factor", "norm_factor"},
    "Train": {"dataset", "loader", "sampler"},  # sampler: rejected below unless empty
    "Eval": {"dataset", "loader", "sampler"},
    "Train.dataset": {
        "name", "data_dir", "label_file_list", "ratio_list", "delimiter", "transforms",
        "ext_op_transform_idx", "num_samples", "seed", "min_len", "max_len", "fonts", "mixed_case", "unknown_chars",
        # SynthTextScene (detection) and the fixed eval canvas of a det model
        "image_size", "words_per_image", "dont_care_prob", "word_len", "font_size",
        "max_angle", "canvas",
        # COCO-format object detection (COCODataSet, SynthShapes) and its reader's batch ops
        "dataset_dir", "image_dir", "anno_path", "data_fields", "sample_num", "load_crowd",
        "allow_empty", "empty_ratio", "repeat", "clip_bbox", "num_classes",
        "objects_per_image", "object_size", "min_visible", "min_contrast", "noise_prob",
        "batch_transforms",
        # TFDSDataSet (jaxocr/data/tfds_data.py)
        "tfds_name", "split", "image_key", "label_key",
    },
    "Train.loader": {"shuffle", "drop_last", "batch_size_per_card", "num_workers", "worker_type"},
}
KNOWN["Eval.dataset"] = KNOWN["Train.dataset"]

# The Loss / PostProcess / Metric sections of each Architecture.model_type, with the one
# PostProcess each task decodes with.
TASK_KEYS = {
    "rec": {
        "Loss": {"name", "use_focal_loss", "loss_config_list", "weight_1", "weight_2"},
        "PostProcess": {"name", "character_dict_path", "use_space_char", "model_name", "key",
                        "multi_head"},
        "Metric": {"name", "main_indicator", "ignore_space", "is_filter", "base_metric_name",
                   "key"},
    },
    "det": {
        "Loss": {"name", "balance_loss", "main_loss_type", "alpha", "beta", "ohem_ratio", "eps"},
        "PostProcess": {"name", "thresh", "box_thresh", "max_candidates", "unclip_ratio",
                        "use_dilation", "score_mode", "box_type"},
        "Metric": {"name", "main_indicator"},
    },
    "yolo": {  # filled from PaddleDetection's PPYOLOEHead section (config_ppdet.py)
        "Loss": {"name", "num_classes", "static_assigner_epoch", "use_varifocal_loss",
                 "loss_weight", "static_assigner", "assigner"},
        "PostProcess": {"name", "score_threshold", "nms_top_k", "keep_top_k", "nms_threshold",
                        "normalized", "nms_eta", "background_label", "return_index"},
        "Metric": {"name", "main_indicator"},
    },
}
TASK_POSTPROCESS = {"rec": "CTCLabelDecode", "det": "DBPostProcess", "yolo": "MultiClassNMS"}
# The losses, hence the model families, each PaddleOCR model_type trains here
TASK_LOSSES = {"rec": ({"CTCLoss", "MultiLoss", "CombinedLoss"},
                       "CTC recognisers (CRNN, Rosetta, STAR-Net, SVTR; PP-OCRv3's SVTR-LCNet "
                       "with its SAR branch, MultiLoss, and its distillation, CombinedLoss)"),
               "det": ({"DBLoss"}, "DB")}
KNOWN["Eval.loader"] = KNOWN["Train.loader"]

# PaddleOCR keys with no meaning in jaxocr: accepted, ignored with one info line.
IGNORED = {
    "Global": {
        "use_gpu", "use_xpu", "use_npu", "use_mlu", "use_visualdl", "use_wandb", "distributed",
        "infer_mode", "save_inference_dir", "d2s_train_image_shape", "amp_level", "scale_loss",
        "use_dynamic_loss_scaling", "amp_custom_black_list", "amp_custom_white_list",
        "uniform_output_enabled", "model_name", "return_all_feats", "use_shared_memory",
        "profiler_options", "auto_log", "save_log_path", "debug",
    },
    # PaddleOCR overwrites lr.epochs with Global.epoch_num before building the schedule
    "Optimizer.lr": {"epochs"},
    # num_sections (ch_PP-OCRv2_rec_distillation.yml) is read by no code of PaddleOCR's
    "Train.loader": {"use_shared_memory", "collate_fn", "num_sections"},
    "Train.dataset": {"ds_width"},
    "wandb": None,  # a whole top-level section
    "profiler_options": None,  # top level in PaddleOCR's current configs
}
IGNORED["Eval.loader"] = IGNORED["Train.loader"]
IGNORED["Eval.dataset"] = IGNORED["Train.dataset"]

DEFAULTS = {
    "Global": {
        "epoch_num": 1, "max_steps": None, "log_smooth_window": 20, "print_batch_step": 10,
        "save_model_dir": "./output/rec", "save_epoch_step": 1, "eval_batch_step": [0, 2000],
        "cal_metric_during_train": True, "pretrained_model": None, "checkpoints": None,
        "character_dict_path": None, "max_text_length": 25, "use_space_char": False,
        "seed": 1024, "use_sync_bn": False, "use_amp": False, "amp_dtype": "bfloat16",
        "use_tensorboard": True, "conv_impl": "auto", "prefetch": 2,
        "skip_nonfinite_updates": False, "auto_resume": True, "save_every_steps": None,
        "save_every_minutes": None,
        "compilation_cache_dir": "auto",
    },
    "loader": {"shuffle": True, "drop_last": True, "batch_size_per_card": 256, "num_workers": 2,
               "worker_type": "auto"},
}


class ConfigError(ValueError):
    """A config problem, with the offending key path in the message."""


def load_config(path: str, overrides: list[str] | None = None,
                eval_in_training: bool = False) -> dict:
    """The run config of a PaddleOCR config, or of a PaddleDetection one (`_BASE_` includes,
    its own keys; config_ppdet.py maps it onto this schema). `eval_in_training`: PaddleDetection
    tools/train.py's `--eval` (a PaddleOCR config evaluates by its Global.eval_batch_step)."""
    from jaxocr import config_ppdet
    raw = config_ppdet.read_yaml(path)
    if config_ppdet.is_ppdet_config(raw):
        cfg = config_ppdet.to_run_config(config_ppdet.read_ppdet_config(path, overrides),
                                         eval_in_training)
    else:
        cfg = raw
        for item in overrides or []:
            apply_override(cfg, item)
    validate(cfg)
    return fill_defaults(cfg)


def parse_overrides(items: list[str] | None) -> list[str]:
    """`-o A=1 B.c=2` may arrive as one list or as several `-o` groups; flatten."""
    out = []
    for item in items or []:
        out.extend(item if isinstance(item, list) else [item])
    return out


def apply_override(cfg: dict, item: str) -> None:
    """`A.b.c=value`: value parsed through YAML, as PaddleOCR's `-o` does; a number steps
    into a list (`Train.dataset.transforms.1.RecAug.prob=0.2`)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like Key.sub=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    parts = key.strip().split(".")
    node = cfg
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):  # a transforms list: `...transforms.2.Resize.interp=1`
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i])} is a list of "
                                  f"{len(node)}; {part!r} is not an index into it")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if last:
            node[part] = value
            return
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section")
        node = child


def validate(cfg: dict) -> None:
    ignored = []
    for name in cfg:
        if name in SECTIONS:
            continue
        if name in IGNORED:
            ignored.append(name)
            continue
        raise ConfigError(_unknown(name, SECTIONS))
    for section in ("Global", "Architecture", "Train", "Eval"):
        if section not in cfg:
            raise ConfigError(f"missing section {section}")
    model_type = (cfg.get("Architecture") or {}).get("model_type", "rec")
    if model_type not in TASK_KEYS:
        raise ConfigError(f"Architecture.model_type: {model_type!r} is not supported; known: "
                          f"{', '.join(TASK_KEYS)}")
    loss = (cfg.get("Loss") or {}).get("name")
    if model_type in TASK_LOSSES and loss is not None and loss not in TASK_LOSSES[model_type][0]:
        algorithm = cfg["Architecture"].get("algorithm", "?")
        raise ConfigError(f"Architecture.algorithm {algorithm} (Loss.name: {loss}) is not a "
                          f"model jaxocr trains; for model_type {model_type} it trains "
                          f"{TASK_LOSSES[model_type][1]}")
    for path, allowed in {**KNOWN, **TASK_KEYS[model_type]}.items():
        node = _get(cfg, path)
        if node is None:
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{path} must be a mapping, got {type(node).__name__}")
        skip = IGNORED.get(path) or set()
        for key in node:
            if key in allowed:
                continue
            if key in skip:
                ignored.append(f"{path}.{key}")
                continue
            raise ConfigError(_unknown(f"{path}.{key}", allowed | skip))
    for mode in ("Train", "Eval"):
        sampler = (cfg.get(mode) or {}).get("sampler")
        if sampler:
            name = sampler.get("name", "?") if isinstance(sampler, dict) else sampler
            raise ConfigError(f"{mode}.sampler ({name}): "
                              "samplers are not supported yet (one input shape per run); "
                              "remove the key")
    expected = TASK_POSTPROCESS[model_type]
    post = (cfg.get("PostProcess") or {}).get("name", expected)
    if post != expected and (model_type, post) != ("rec", "DistillationCTCLabelDecode"):
        raise ConfigError(f"PostProcess.name: {post!r} is not supported for model_type "
                          f"{model_type}; jaxocr decodes it with {expected}")
    if ignored:
        log.info("ignoring PaddleOCR keys that mean nothing in jaxocr: %s", ", ".join(ignored))


def fill_defaults(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    g = cfg["Global"]
    for k, v in DEFAULTS["Global"].items():
        g.setdefault(k, v)
    for mode in ("Train", "Eval"):
        loader = cfg[mode].setdefault("loader", {})
        for k, v in DEFAULTS["loader"].items():
            loader.setdefault(k, v if mode == "Train" or k not in ("shuffle", "drop_last") else False)
    return cfg


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _get(cfg: dict, path: str):
    node = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _unknown(path: str, allowed) -> str:
    leaf = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, sorted(allowed), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(allowed))}"
    return f"unknown config key {path}{hint}"
