"""PaddleDetection-schema configs: _BASE_ merging, tags as plain mappings, -o, key validation."""
import logging
import textwrap

import pytest

from jaxocr.config import ConfigError
from jaxocr.config_ppdet import is_ppdet_config, read_ppdet_config, read_yaml

PPYOLOE_S = "configs/ppyoloe/ppyoloe_crn_s_300e_coco.yml"


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_upstream_ppyoloe_s_reads_with_its_bases():
    cfg = read_ppdet_config(PPYOLOE_S)
    assert cfg["architecture"] == "YOLOv3" and cfg["filename"] == "ppyoloe_crn_s_300e_coco"
    assert (cfg["depth_mult"], cfg["width_mult"]) == (0.33, 0.50)   # the s file over its bases
    assert cfg["log_iter"] == 100 and cfg["snapshot_epoch"] == 10    # over runtime.yml's 20, 1
    assert cfg["YOLOv3"] == {"backbone": "CSPResNet", "neck": "CustomCSPPAN",
                             "yolo_head": "PPYOLOEHead", "post_process": None}
    assert cfg["eval_size"] == [640, 640]                            # YAML aliases
    resize = cfg["EvalReader"]["sample_transforms"][1]["Resize"]
    assert resize["target_size"] == [640, 640] and resize["interp"] == 2
    assert cfg["TrainReader"]["batch_size"] == 8 and cfg["epoch"] == 300
    assert [s["name"] for s in cfg["LearningRate"]["schedulers"]] == ["CosineDecay", "LinearWarmup"]
    assert cfg["TrainDataset"]["name"] == "COCODataSet" and cfg["num_classes"] == 80
    assert is_ppdet_config(read_yaml(PPYOLOE_S))
    assert not is_ppdet_config(read_yaml("configs/rec/quickstart_crnn.yml"))


def test_bases_merge_in_order_and_overrides_nest(tmp_path):
    _write(tmp_path / "base/a.yml", """
        architecture: YOLOv3
        YOLOv3: {backbone: CSPResNet}
        CSPResNet: {layers: [3, 6, 6, 3], use_large_stem: true}
        epoch: 300
        log_iter: 20
        """)
    _write(tmp_path / "base/b.yml", """
        CSPResNet: {layers: [1, 1, 1, 1]}
        log_iter: 50
        """)
    top = _write(tmp_path / "top.yml", """
        _BASE_: ['./base/a.yml', './base/b.yml']
        log_iter: 100
        """)
    cfg = read_ppdet_config(top, ["CSPResNet.return_idx=[1, 2]", "epoch=3"])
    assert cfg["log_iter"] == 100                    # the file over its bases
    assert cfg["CSPResNet"] == {"layers": [1, 1, 1, 1], "use_large_stem": True,
                                "return_idx": [1, 2]}  # later base over earlier; lists replaced
    assert cfg["epoch"] == 3


def test_tags_are_mappings_and_construct_nothing(tmp_path):
    legacy = _write(tmp_path / "legacy.yml", """
        architecture: YOLOv3
        YOLOv3: {backbone: CSPResNet}
        CSPResNet: {}
        TrainDataset:
          !COCODataSet
            image_dir: train2017
            anno_path: annotations/instances_train2017.json
        TrainReader:
          sample_transforms:
            - !Decode {}
            - !RandomFlip {prob: 0.5}
        """)
    cfg = read_ppdet_config(legacy)
    assert cfg["TrainDataset"] == {"name": "COCODataSet", "image_dir": "train2017",
                                   "anno_path": "annotations/instances_train2017.json"}
    assert cfg["TrainReader"]["sample_transforms"] == [{"name": "Decode"},
                                                       {"name": "RandomFlip", "prob": 0.5}]
    evil = _write(tmp_path / "evil.yml", """
        architecture: !!python/object/apply:os.system ["echo pwned"]
        """)
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_ppdet_config(evil)


def test_config_errors_name_the_key(tmp_path, caplog):
    with pytest.raises(ConfigError, match="unknown config key snapshot_epochs; did you mean "
                                          "'snapshot_epoch'"):
        read_ppdet_config(PPYOLOE_S, ["snapshot_epochs=5"])
    with pytest.raises(ConfigError, match="config file not found"):
        read_ppdet_config(str(tmp_path / "nope.yml"))
    loop = _write(tmp_path / "loop.yml", "_BASE_: ['./loop.yml']\narchitecture: YOLOv3\n")
    with pytest.raises(ConfigError, match="includes itself"):
        read_ppdet_config(loop)
    gone = _write(tmp_path / "gone.yml", "_BASE_: ['./missing.yml']\narchitecture: YOLOv3\n")
    with pytest.raises(ConfigError, match="_BASE_ file not found.*missing.yml"):
        read_ppdet_config(gone)
    no_part = _write(tmp_path / "nopart.yml", "architecture: YOLOv3\nYOLOv3: {neck: Foo}\n")
    with pytest.raises(ConfigError, match="Foo: the architecture names it"):
        read_ppdet_config(no_part)
    with caplog.at_level(logging.INFO, logger="jaxocr"):
        read_ppdet_config(PPYOLOE_S)
    assert any("ignoring PaddleDetection keys" in r.getMessage() and "print_flops" in
               r.getMessage() for r in caplog.records)


def test_paddles_pretrained_backbone_fails_in_one_line_naming_pretrain_weights(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "launch/multihost.py", "-c", PPYOLOE_S,
                        "-o", f"save_dir={tmp_path}"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxocr: error: pretrain_weights https://paddledet") and \
        last.endswith("To train from scratch: -o pretrain_weights="), last


def test_optimizer_builder_maps_momentum_l2_and_adamw():
    from jaxocr.config import load_config
    s = load_config(PPYOLOE_S, ["pretrain_weights="])["Optimizer"]
    assert s["name"] == "Momentum" and s["momentum"] == 0.9
    assert s["regularizer"] == {"name": "L2", "factor": 0.0005, "norm_factor": 0.0}
    q = load_config("configs/ppyoloe/quickstart_ppyoloe_s.yml")["Optimizer"]
    assert q["name"] == "AdamW" and q["weight_decay"] == 0.0001 and "regularizer" not in q
    with pytest.raises(ConfigError, match="optimizer.momentum: not an option of AdamW"):
        load_config(PPYOLOE_S, ["OptimizerBuilder.optimizer.type=AdamW"])


def test_reader_worker_type_reaches_the_loader():
    from jaxocr.config import load_config
    cfg = load_config(PPYOLOE_S, ["pretrain_weights=", "TrainReader.worker_type=process",
                                  "worker_num=4"])
    assert cfg["Train"]["loader"]["worker_type"] == "process"
    assert cfg["Train"]["loader"]["num_workers"] == 4
    assert cfg["Eval"]["loader"]["worker_type"] == "auto"  # the default
    with pytest.raises(ConfigError, match="TrainReader.worker_typ.*did you mean 'worker_type'"):
        load_config(PPYOLOE_S, ["pretrain_weights=", "TrainReader.worker_typ=process"])


def test_amp_is_paddledetections_switch_for_mixed_precision():
    """tools/train.py --amp sets `amp: true`; here it computes in bfloat16 (Global.use_amp)."""
    from jaxocr.config import load_config
    assert load_config(PPYOLOE_S, ["pretrain_weights="])["Global"]["use_amp"] is False
    assert load_config(PPYOLOE_S, ["pretrain_weights=", "amp=true"])["Global"]["use_amp"] is True
