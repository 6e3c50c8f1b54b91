import os

import pytest

from jaxocr.config import ConfigError, apply_override, load_config
from conftest import ROOT

CRNN = os.path.join(ROOT, "configs/rec/rec_mv3_none_bilstm_ctc.yml")


def test_loads_paddleocr_config_with_defaults():
    cfg = load_config(CRNN)
    assert cfg["Architecture"]["Backbone"] == {"name": "MobileNetV3", "scale": 0.5, "model_name": "large"}
    assert cfg["Train"]["loader"]["batch_size_per_card"] == 256
    assert cfg["Global"]["seed"] == 1024  # PaddleOCR's default, filled in
    assert cfg["Eval"]["loader"]["shuffle"] is False


def test_overrides_parse_values_through_yaml():
    cfg = load_config(CRNN, ["Global.epoch_num=3", "Optimizer.lr.learning_rate=1e-3",
                             "Global.eval_batch_step=[0, 50]", "Train.dataset.name=SynthTextLine",
                             "Global.checkpoints="])
    assert cfg["Global"]["epoch_num"] == 3
    assert cfg["Optimizer"]["lr"]["learning_rate"] == pytest.approx(1e-3)
    assert cfg["Global"]["eval_batch_step"] == [0, 50]
    assert cfg["Train"]["dataset"]["name"] == "SynthTextLine"
    assert cfg["Global"]["checkpoints"] is None


def test_misspelt_key_names_path_and_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config(CRNN, ["Global.epoch_nums=3"])
    assert "Global.epoch_nums" in str(e.value) and "'epoch_num'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(CRNN, ["Train.loader.batch_size_per_crad=8"])
    assert "Train.loader.batch_size_per_crad" in str(e.value)
    assert "'batch_size_per_card'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(CRNN, ["Optimiser.name=Adam"])
    assert "'Optimizer'" in str(e.value)


def test_paddle_only_keys_are_accepted_and_logged(caplog):
    with caplog.at_level("INFO", logger="jaxocr"):
        cfg = load_config(CRNN, ["Global.use_gpu=false", "Global.debug=false",
                                 "profiler_options=null"])
    assert cfg["Global"]["use_gpu"] is False
    assert "Global.use_gpu" in caplog.text and "Global.use_visualdl" in caplog.text
    assert "Global.debug" in caplog.text and "profiler_options" in caplog.text


def test_keys_that_would_change_training_are_honoured_or_refused(caplog):
    with pytest.raises(ConfigError, match="Train.sampler .MultiScaleSampler"):
        load_config(CRNN, ["Train.sampler.name=MultiScaleSampler"])
    with pytest.raises(ConfigError, match="PostProcess.name: 'AttnLabelDecode'"):
        load_config(CRNN, ["PostProcess.name=AttnLabelDecode"])
    with caplog.at_level("INFO", logger="jaxocr"):
        load_config(CRNN, ["Optimizer.lr.epochs=5"])
    assert "Optimizer.lr.epochs" in caplog.text  # PaddleOCR overwrites it with epoch_num
    from jaxocr.training.loop import compute_dtype
    cfg = load_config(CRNN, ["Global.use_amp=true", "Global.amp_dtype=float16"])
    with pytest.raises(ConfigError, match="amp_dtype: 'float16'"):
        compute_dtype(cfg["Global"])
    import jax.numpy as jnp
    assert compute_dtype(load_config(CRNN, ["Global.use_amp=true"])["Global"]) == jnp.bfloat16


def test_compilation_cache_under_the_run_directory(tmp_path, monkeypatch):
    import jax
    from jaxocr.training.loop import enable_compilation_cache
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    try:
        enable_compilation_cache({"compilation_cache_dir": "auto"}, str(tmp_path))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "compile_cache")
        enable_compilation_cache({"compilation_cache_dir": str(tmp_path / "c")}, str(tmp_path))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
        jax.config.update("jax_compilation_cache_dir", before)
        enable_compilation_cache({"compilation_cache_dir": None}, str(tmp_path))
        assert jax.config.jax_compilation_cache_dir == before
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="Key.sub=value"):
        apply_override({}, "Global.epoch_num")
    with pytest.raises(ConfigError, match="not a section"):
        apply_override({"Global": {"epoch_num": 1}}, "Global.epoch_num.x=1")
    with pytest.raises(ConfigError, match="a list of 1; '3' is not an index"):
        apply_override({"T": [{"A": {}}]}, "T.3.A.b=1")


def test_overrides_step_into_transform_lists():
    cfg = {"Train": {"dataset": {"transforms": [{"DecodeImage": {}}, {"RecAug": None}]}}}
    apply_override(cfg, "Train.dataset.transforms.1.RecAug.prob=0.2")
    apply_override(cfg, "Train.dataset.transforms.0={KeepKeys: {keep_keys: [image]}}")
    assert cfg["Train"]["dataset"]["transforms"] == [{"KeepKeys": {"keep_keys": ["image"]}},
                                                     {"RecAug": {"prob": 0.2}}]


def test_missing_config_file():
    with pytest.raises(ConfigError, match="nope.yml"):
        load_config("nope.yml")


# PaddleOCR's counts: its layers' trainable parameters (BN running statistics aside), each
# equal to PaddleOCR 2.7's own model built from the same config in paddle 3.0 (checked once,
# 2026-12-03, with PaddleOCR's class count from its CTCLabelDecode)
SHIPPED = {"rec_mv3_none_bilstm_ctc.yml": 1_451_787, "quickstart_crnn.yml": 1_451_787,
           "rec_svtrnet.yml": 6_022_605, "quickstart_svtr.yml": 6_022_605,
           "quickstart_svtr_scenes.yml": 6_022_605,
           "rec_r34_vd_none_bilstm_ctc.yml": 24_481_029,  # CRNN, ResNet34_vd
           "rec_mv3_tps_bilstm_ctc.yml": 1_560_569,  # STAR-Net (TPS 108,782 with its ex_fc)
           "rec_mv3_none_none_ctc.yml": 795_819,  # Rosetta
           "rec_svtrnet_ch.yml": 4_806_913,  # SVTR-Tiny-ch, 6,625 classes, 32x320
           "ch_ppocr_v2.0/rec_chinese_lite_train_v2.0.yml": 1_081_377,  # the Chinese-lite CRNN
           "quickstart_chinese_lite.yml": 1_081_377,
           "ch_PP-OCRv2/ch_PP-OCRv2_rec.yml": 2_066_433,  # MobileNetV1Enhance + BiLSTM 64
           "ch_PP-OCRv2/ch_PP-OCRv2_rec_distillation.yml": 2 * 2_066_433,  # Teacher + Student
           # the same net; CenterLoss's 6,625 x 96 centres are not parameters (nor in Paddle)
           "ch_PP-OCRv2/ch_PP-OCRv2_rec_enhanced_ctc_loss.yml": 2_066_433,
           # SVTR-LCNet: MobileNetV1Enhance 1,016,160, SVTR neck 1,192,880, CTC head, and the
           # SAR branch trained beside it (11,491,939 in en, 97 + 99 classes)
           "PP-OCRv3/en_PP-OCRv3_rec.yml": 13_707_284,
           "PP-OCRv3/ch_PP-OCRv3_rec.yml": 27_507_476,
           "PP-OCRv3/ch_PP-OCRv3_rec_distillation.yml": 2 * 27_507_476,  # Teacher + Student
           "quickstart_ppocrv3.yml": 13_580_444,  # the en net over 36 characters (37 + 39)
           "quickstart_ppocrv3_chinese.yml": 27_507_476}


def shipped_rec_configs() -> list[str]:
    top = os.path.join(ROOT, "configs/rec")
    return sorted(os.path.relpath(os.path.join(d, f), top) for d, _, files in os.walk(top)
                  for f in files if f.endswith(".yml"))


def test_every_shipped_config_is_listed_here():
    assert shipped_rec_configs() == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_config_builds_its_model(name):
    import jax
    import numpy as np
    from jaxocr.models import build_model
    from jaxocr.tasks.rec import RecTask
    cfg = load_config(os.path.join(ROOT, "configs/rec", name))
    resize = [t for t in cfg["Train"]["dataset"]["transforms"]
              if list(t)[0] in ("RecResizeImg", "SVTRRecResizeImg")][0]
    _, h, w = list(resize.values())[0]["image_shape"]
    arch = cfg["Architecture"]
    RecTask(cfg)  # fills the head's class counts from the dictionary
    model = build_model(arch)
    x = jax.ShapeDtypeStruct((1, h, w, 3), np.float32)
    params = jax.eval_shape(lambda k, x: model.init(k, x), jax.random.PRNGKey(0), x)["params"]
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == SHIPPED[name]


@pytest.mark.parametrize("override,message", [
    ("Architecture.Backbone.name=ResNeXt", "Architecture.Backbone.name: unknown Backbone 'ResNeXt'"),
    ("Architecture.Head.fc_decay2=1", "Architecture.Head (CTCHead): unknown key(s) ['fc_decay2']"),
    ("Train.dataset.transforms=[{DecodeImage: {}}, {RecAugment: {}}]",
     "unknown transform op 'RecAugment'"),
    ("Train.dataset.transforms=[{DecodeImage: {img_mod: BGR}}]",
     "transform DecodeImage: unknown option(s) ['img_mod']"),
    ("Train.dataset.name=SimpleDataSets", "unknown dataset name 'SimpleDataSets'"),
    ("Global.character_dict_path=ppocr/utils/no_dict.txt", "character_dict_path not found"),
    ("Loss.name=SARLoss", "Architecture.algorithm CRNN (Loss.name: SARLoss) is not a model "
                          "jaxocr trains; for model_type rec it trains CTC recognisers"),
])
def test_a_config_error_is_one_line_naming_the_config(override, message):
    """Unknown parts, transforms, options, datasets, missing files: one line, no traceback
    (JAXOCR_TRACEBACK=1 shows it)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT
    synthetic = ["Train.dataset.name=SynthTextLine", "Eval.dataset.name=SynthTextLine"]
    cmd = [sys.executable, "launch/multihost.py", "-c", CRNN, "-o", *synthetic, override]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "JAXOCR_TRACEBACK": ""})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxocr: error: ") and message in last, last
    if "character_dict_path" not in override:
        assert last.startswith(f"jaxocr: error: {CRNN}: "), last
    shown = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                           env={**os.environ, "JAXOCR_TRACEBACK": "1"})
    assert "Traceback" in shown.stderr
