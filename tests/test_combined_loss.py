"""PaddleOCR's CombinedLoss beyond PP-OCRv3's distillation (test_distillation.py): PP-OCRv2's
distillation (DML on the whole head output, no multi_head) and its enhanced CTC (CTCLoss +
CenterLoss on one recogniser). The configs' counts are in test_config.py, their training steps
in test_paddleocr_configs.py."""
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT
from jaxocr.config import ConfigError, load_config
from jaxocr.data.charset import CharacterDict
from jaxocr.data.transforms.rec_label import CTCLabelEncode
from jaxocr.losses.center import center_rows, class_centers
from jaxocr.tasks.rec import RecTask
from test_distillation import _dml

V2 = os.path.join(ROOT, "configs/rec/ch_PP-OCRv2")
ENHANCED = os.path.join(V2, "ch_PP-OCRv2_rec_enhanced_ctc_loss.yml")
SYNTH = ["Train.dataset.name=SynthTextLine", "Eval.dataset.name=SynthTextLine"]


def _paddle_center_loss(features, predicts, centers):
    """ppocr/losses/center_loss.py in float64 numpy: the full distance matrix, the one-hot mask
    of the argmax class, every entry clipped, the sum over the B*T rows."""
    f = features.reshape(-1, features.shape[-1]).astype(np.float64)
    label = predicts.argmax(-1).reshape(-1)
    c = centers.astype(np.float64)
    distmat = (f ** 2).sum(1, keepdims=True) + (c ** 2).sum(1)[None] - 2 * f @ c.T
    mask = (np.arange(len(c))[None] == label[:, None]).astype(np.float64)
    return np.clip(distmat * mask, 1e-12, 1e12).sum() / len(f)


def _apply(objective, outputs, batch, mask):
    loss, _, vector = jax.vmap(lambda _: objective.loss(
        jax.tree.map(jnp.asarray, outputs), jax.tree.map(jnp.asarray, batch), jnp.asarray(mask)),
        axis_name="data")(jnp.zeros(1))
    return float(loss[0]) / mask.mean(), objective.summarize(vector[0])


def _labels(rng, b, classes, width=4):
    lengths = rng.integers(1, width + 1, b).astype(np.int32)
    label = (rng.integers(1, classes, (b, width)) * (np.arange(width) < lengths[:, None]))
    return label.astype(np.int32), lengths


def test_center_loss_is_paddles_formula():
    rng = np.random.default_rng(0)
    centers = class_centers(7, 5, seed=3)
    assert centers.shape == (7, 5) and centers.dtype == np.float32
    np.testing.assert_array_equal(centers, class_centers(7, 5, seed=3))  # same on every host
    features = rng.normal(size=(3, 6, 5)).astype(np.float32)
    predicts = rng.normal(size=(3, 6, 7)).astype(np.float32)
    rows = np.asarray(center_rows(jnp.asarray(features), jnp.asarray(predicts), centers))
    np.testing.assert_allclose(rows.mean(), _paddle_center_loss(features, predicts, centers),
                               rtol=1e-5)
    # a head wider than the centres: frames predicting a class beyond them add only the floor
    wide = np.concatenate([predicts, np.full((3, 6, 1), 50.0, np.float32)], -1)
    wide[0, :3, -1] = -50.0
    rows = np.asarray(center_rows(jnp.asarray(features), jnp.asarray(wide), centers))
    np.testing.assert_allclose(rows.mean(), _paddle_center_loss(features, wide, centers),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="feat_dim 5 != the head's feature width 4"):
        center_rows(jnp.asarray(features[..., :4]), jnp.asarray(predicts), centers)


def test_center_file_overwrites_the_classes_it_holds(tmp_path):
    path = tmp_path / "train_center.pkl"
    with open(path, "wb") as f:  # tools/export_center.py's form: {class id: mean feature}
        pickle.dump({2: np.arange(5.0), 6: np.ones(5)}, f)
    drawn, loaded = class_centers(7, 5, 0), class_centers(7, 5, 0, str(path))
    np.testing.assert_array_equal(loaded[2], np.arange(5.0))
    np.testing.assert_array_equal(loaded[6], np.ones(5))
    np.testing.assert_array_equal(np.delete(loaded, [2, 6], 0), np.delete(drawn, [2, 6], 0))
    with pytest.raises(ValueError, match="does not fit num_classes 3, feat_dim 5"):
        class_centers(3, 5, 0, str(path))
    with pytest.raises(ValueError, match="no such file"):
        class_centers(7, 5, 0, str(tmp_path / "none.pkl"))


def test_enhanced_ctc_is_ctc_plus_the_weighted_centre_loss():
    cfg = load_config(ENHANCED, SYNTH)
    objective = RecTask(cfg).objective()
    assert [(t.kind, t.weight) for t in objective.terms] == [("CTCLoss", 1.0),
                                                             ("CenterLoss", 0.05)]
    centers = objective.centers[1]
    assert centers.shape == (6625, 96)
    rng = np.random.default_rng(1)
    b, t = 3, 10
    features = rng.normal(size=(b, t, 96)).astype(np.float32)
    logits = rng.normal(size=(b, t, 6625)).astype(np.float32)
    label, lengths = _labels(rng, b, 6625)
    mask = np.array([1, 1, 0], np.float32)
    loss, logged = _apply(objective, (features, logits), {"label": label, "length": lengths}, mask)
    real = mask == 1
    ctc = np.asarray(optax.ctc_loss(logits, np.zeros((b, t)), label,
                                    (np.arange(4) >= lengths[:, None]).astype(np.float32)))
    center = _paddle_center_loss(features[real], logits[real], centers)
    # the log has Paddle's keys: its CTCLoss 'loss' is overwritten by the total
    assert [k for k in logged if k not in ("acc", "norm_edit_dis")] == ["loss_center"]
    np.testing.assert_allclose(logged["loss_center"], 0.05 * center, rtol=1e-5)
    np.testing.assert_allclose(loss, ctc[real].mean() + 0.05 * center, rtol=1e-5)


@pytest.mark.parametrize("override,message", [
    ("Architecture.Head.return_feats=false", "CenterLoss reads the head's features"),
    ("Loss.loss_config_list.1.CenterLoss.feat_dim=64", "CenterLoss.feat_dim 64 is not the head's "
                                                       "feature width"),
    ("Loss.loss_config_list.1.CenterLoss.center_file_path=/no/centers.pkl", "no such file"),
])
def test_enhanced_ctc_config_errors_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        RecTask(load_config(ENHANCED, SYNTH + [override])).objective()


def test_v2_distillation_dml_reads_the_whole_head_output():
    cfg = load_config(os.path.join(V2, "ch_PP-OCRv2_rec_distillation.yml"), SYNTH)
    objective = RecTask(cfg).objective()
    rng = np.random.default_rng(2)
    b, t, c = 3, 8, 11
    outs = {m: {"backbone_out": rng.normal(size=(b, 1, t, 4)).astype(np.float32),
                "head_out": rng.normal(size=(b, t, c)).astype(np.float32)}
            for m in ("Teacher", "Student")}
    label, lengths = _labels(rng, b, c)
    mask = np.array([1, 0, 1], np.float32)
    loss, logged = _apply(objective, outs, {"label": label, "length": lengths}, mask)
    terms = {k: v for k, v in logged.items() if k not in ("acc", "norm_edit_dis")}
    assert list(terms) == ["loss_ctc_Student_0", "loss_ctc_Teacher_1", "dml_0",
                           "loss_distance_l2_Student_Teacher_0"]
    real = mask == 1
    s, te = outs["Student"]["head_out"], outs["Teacher"]["head_out"]
    np.testing.assert_allclose(terms["dml_0"], _dml(s, te)[real].mean(), rtol=1e-5)
    np.testing.assert_allclose(sum(terms.values()), loss, rtol=1e-5)
    # a distillation term on a plain model, a plain term on a distillation: one line each
    with pytest.raises(ConfigError, match="CTCLoss does not train an Architecture with "
                                          "DistillationModel"):
        RecTask(load_config(os.path.join(V2, "ch_PP-OCRv2_rec_distillation.yml"), SYNTH + [
            "Loss.loss_config_list.0={CTCLoss: {weight: 1.0}}"])).objective()


def test_ctc_label_encode_writes_paddles_ace_counts():
    charset = CharacterDict.from_config({"character_dict_path": None, "use_space_char": False})
    data = CTCLabelEncode(charset, 6)({"label": "abca"})
    ids = data["label"]
    assert data["label_ace"].shape == (charset.num_classes,)
    assert data["label_ace"][0] == 2 and data["label_ace"][ids[0]] == 2
    assert data["label_ace"].sum() == 6
