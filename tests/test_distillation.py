"""PP-OCRv3's recognition distillation (configs/rec/PP-OCRv3/ch_PP-OCRv3_rec_distillation.yml):
Teacher and Student v3 nets side by side, PaddleOCR's CombinedLoss over their outputs, the
Student alone in evaluation; the shipped config's count is in test_config.py, its training
step in test_paddleocr_configs.py."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, run_multihost
from jaxocr.config import ConfigError, load_config
from jaxocr.distributed import data_mesh
from jaxocr.losses import sar_token_losses
from jaxocr.losses.combined import combined_loss_terms
from jaxocr.models import build_model
from jaxocr.tasks.rec import RecTask
from jaxocr.training.optimizer import build_optimizer, l2_factors
from jaxocr.training.step import batch_sharding, create_state, make_train_step, replicated

DISTILL = os.path.join(ROOT, "configs/rec/PP-OCRv3/ch_PP-OCRv3_rec_distillation.yml")
SYNTH = ["Train.dataset.name=SynthTextLine", "Eval.dataset.name=SynthTextLine"]


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _dml(a, b):
    """Paddle's DMLLoss(act softmax, use_log) per row, in numpy."""
    pa, pb = np.exp(_log_softmax(a)) + 1e-10, np.exp(_log_softmax(b)) + 1e-10
    kl = lambda p, q: (q * (np.log(q + 1e-10) - np.log(p))).reshape(len(p), -1).sum(-1)
    return (kl(pa, pb) + kl(pb, pa)) / 2


def test_combined_loss_is_the_weighted_sum_of_paddles_terms():
    """The shipped config's five terms on random member outputs (one masked row) against
    numpy: DML on CTC (1.0) and SAR (0.5), l2 on backbone_out (1.0), both members' CTC (1.0)
    and SAR (1.0), the SAR ones averaged over the real tokens."""
    cfg = load_config(DISTILL, SYNTH)
    objective = RecTask(cfg).objective()
    assert [(t.kind, t.weight, t.branch) for t in objective.terms] == [
        ("DistillationDMLLoss", 1.0, "ctc"), ("DistillationDMLLoss", 0.5, "sar"),
        ("DistillationDistanceLoss", 1.0, None), ("DistillationCTCLoss", 1.0, "ctc"),
        ("DistillationSARLoss", 1.0, "sar")]
    rng = np.random.default_rng(0)
    b, t, c = 3, 8, 11
    outs = {m: {"backbone_out": rng.normal(size=(b, 1, t, 4)).astype(np.float32),
                "head_out": {"ctc": rng.normal(size=(b, t, c)).astype(np.float32),
                             "sar": rng.normal(size=(b, 5, c + 1)).astype(np.float32)}}
            for m in ("Teacher", "Student")}
    lengths = np.array([2, 1, 3], np.int32)
    label = (rng.integers(1, c, (b, 4)) * (np.arange(4) < lengths[:, None])).astype(np.int32)
    objective.ignore_index = c + 1
    sar = np.full((b, 5), c + 1, np.int32)
    for i, k in enumerate(lengths):
        sar[i, :k + 2] = [c, *(label[i, :k] - 1), c]
    batch = {"label_ctc": label, "label_sar": sar, "length": lengths}
    mask = np.array([1, 1, 0], np.float32)
    loss, _, vector = jax.vmap(lambda _: objective.loss(
        jax.tree.map(jnp.asarray, outs), jax.tree.map(jnp.asarray, batch), jnp.asarray(mask)),
        axis_name="data")(jnp.zeros(1))
    loss = loss[0]
    # the log: each term under PaddleOCR's loss-dict key, the terms adding up to the loss
    logged = objective.summarize(vector[0])
    terms = {k: v for k, v in logged.items() if k not in ("acc", "norm_edit_dis")}
    assert list(terms) == ["dml_ctc_0", "dml_sar_0", "loss_distance_l2_Student_Teacher_0",
                           "loss_ctc_Student_0", "loss_ctc_Teacher_1", "loss_sar_Student_0",
                           "loss_sar_Teacher_1"]
    np.testing.assert_allclose(sum(terms.values()), float(loss) / mask.mean(), rtol=1e-5)

    real = mask == 1
    s, te = outs["Student"], outs["Teacher"]
    rows = _dml(s["head_out"]["ctc"], te["head_out"]["ctc"])
    rows += 0.5 * _dml(s["head_out"]["sar"], te["head_out"]["sar"])
    rows += ((s["backbone_out"] - te["backbone_out"]) ** 2).reshape(b, -1).mean(-1)
    sar_total = 0.0
    for m in (s, te):
        rows += np.asarray(optax.ctc_loss(m["head_out"]["ctc"], np.zeros((b, t)), label,
                                       (np.arange(4) >= lengths[:, None]).astype(np.float32)))
        tok, counted = sar_token_losses(jnp.asarray(m["head_out"]["sar"]), sar, c + 1)
        sar_total += float(np.asarray(tok)[real].sum() / np.asarray(counted)[real].sum())
    # the step divides the objective's loss by the real rows' share (2/3)
    want = rows[real].mean() + sar_total
    np.testing.assert_allclose(float(loss) / mask.mean(), want, rtol=1e-5)
    np.testing.assert_allclose(logged["dml_sar_0"], 0.5 * _dml(
        s["head_out"]["sar"], te["head_out"]["sar"])[real].mean(), rtol=1e-5)


def test_unsupported_terms_and_a_mismatched_loss_fail_naming_them():
    with pytest.raises(ValueError, match=r"loss_config_list.0 \(DistillationCTCLogits\): not a "
                                         "loss jaxocr trains"):
        combined_loss_terms({"loss_config_list": [{"DistillationCTCLogits": {"weight": 1}}]})
    with pytest.raises(ValueError, match="needs a weight"):
        combined_loss_terms({"loss_config_list": [{"DistillationCTCLoss": {}}]})
    cfg = load_config(DISTILL, SYNTH + ["Loss.name=CTCLoss"])
    with pytest.raises(ConfigError, match="Loss CTCLoss does not train an Architecture with "
                                          "DistillationModel"):
        RecTask(cfg).objective()
    with pytest.raises(ConfigError, match="Metric.key 'Teacher'"):
        RecTask(load_config(DISTILL, SYNTH + ["Metric.key=Teacher"]))


def _small(*extra):
    """The shipped distillation at toy width: English dictionary, 32x128, SAR 64 wide."""
    over = SYNTH + ["Global.character_dict_path=ppocr/utils/en_dict.txt",
                    "Train.dataset.transforms.4.RecResizeImg.image_shape=[3,32,128]",
                    "Eval.dataset.transforms.2.RecResizeImg.image_shape=[3,32,128]"]
    for m in ("Teacher", "Student"):
        over += [f"Architecture.Models.{m}.Head.head_list.1.SARHead.enc_dim=64",
                 f"Architecture.Models.{m}.Head.head_list.1.SARHead.d_k=64"]
    return load_config(DISTILL, over + list(extra))


def test_eval_runs_the_student_alone_and_each_member_keeps_its_own_regularizer():
    cfg = _small()
    RecTask(cfg)
    model = build_model(cfg["Architecture"])
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 128, 3), minval=-1, maxval=1)
    variables = model.init(jax.random.PRNGKey(0), x)
    assert set(variables["params"]) == {"Teacher", "Student"}
    section = dict(cfg["Architecture"]["Models"]["Student"])
    for key in ("pretrained", "freeze_params"):  # DistillationModel's keys
        section.pop(key)
    student = build_model(section)
    alone = student.apply({k: v["Student"] for k, v in variables.items()}, x)
    both = model.apply(variables, x)
    assert both.shape == (2, 16, 97)
    np.testing.assert_array_equal(np.asarray(both), np.asarray(alone))
    # the CTC head's fc_decay 1e-5; everything else the regularizer's 3e-5, in both members
    factors = l2_factors(variables["params"], cfg["Optimizer"], cfg["Architecture"])
    for m in ("Teacher", "Student"):
        assert set(jax.tree.leaves(factors[m]["head"]["ctc_head"])) == {1e-5}
        assert set(jax.tree.leaves(factors[m]["head"]["sar_head"])) == {3e-5}
        assert set(jax.tree.leaves(factors[m]["backbone"])) == {3e-5}


def test_a_frozen_member_does_not_move_and_the_other_learns():
    cfg = _small("Architecture.Models.Teacher.freeze_params=true")
    task = RecTask(cfg)
    model = build_model(cfg["Architecture"])
    mesh = data_mesh(jax.devices()[:1])
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 128, 3), minval=-1, maxval=1)
    variables = jax.device_get(model.init(jax.random.PRNGKey(0), x))
    tx, _ = build_optimizer({**cfg["Optimizer"], "lr": {"name": "Const", "learning_rate": 1e-3}},
                            cfg["Architecture"], variables["params"], 10, 1)
    state = jax.device_put(create_state(variables, tx, 0), replicated(mesh))
    label = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], np.int32)
    sar = np.full((2, 25), 98, np.int32)
    sar[0, :5], sar[1, :4] = [97, 4, 5, 6, 97], [97, 7, 8, 97]
    batch = {"image": np.asarray(x), "label_ctc": label, "label_sar": sar,
             "length": np.array([3, 2], np.int32), "valid_ratio": np.ones(2, np.float32)}
    step = make_train_step(model, tx, task.objective(), mesh)
    new, out = step(state, jax.device_put(batch, batch_sharding(mesh)))
    before, after = variables["params"], jax.device_get(new.params)
    assert np.isfinite(float(out["loss"]))
    for a, b in zip(jax.tree.leaves(before["Teacher"]), jax.tree.leaves(after["Teacher"])):
        np.testing.assert_array_equal(a, b)
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(before["Student"]),
                                                 jax.tree.leaves(after["Student"]))]
    assert min(moved) > 0


@pytest.mark.slow
def test_two_processes_equal_one_process_for_the_distillation(tmp_path):
    """The toy-width distillation, 3 steps, as 2 processes x 1 device and 1 process x 2
    devices (launch/multihost.py, gloo): the same Teacher and Student."""
    from test_multiprocess import assert_close, latest_params
    over = ["Global.character_dict_path=ppocr/utils/en_dict.txt",
            "Train.dataset.transforms.4.RecResizeImg.image_shape=[3,32,128]",
            "Eval.dataset.transforms.2.RecResizeImg.image_shape=[3,32,128]",
            "Train.dataset.transforms.1.RecConAug.image_shape=[32,128,3]"]
    for m in ("Teacher", "Student"):
        over += [f"Architecture.Models.{m}.Head.head_list.1.SARHead.enc_dim=64",
                 f"Architecture.Models.{m}.Head.head_list.1.SARHead.d_k=64"]
    # Momentum keeps the update linear in the gradient (see test_multiprocess.py)
    common = SYNTH + over + [
        "Train.dataset.num_samples=16", "Eval.dataset.num_samples=4",
        "Train.loader.batch_size_per_card=4", "Eval.loader.batch_size_per_card=2",
        "Train.loader.num_workers=1", "Eval.loader.num_workers=1",
        "Optimizer.name=Momentum", "Optimizer.lr.name=Const", "Optimizer.lr.learning_rate=0.01",
        "Optimizer.lr.warmup_epoch=0", "Global.max_steps=3", "Global.eval_batch_step=[0,3]",
        "Global.use_tensorboard=false", "Global.print_batch_step=1"]

    def run(save_dir, procs):
        return run_multihost(["-c", DISTILL, "-o", *common, f"Global.save_model_dir={save_dir}"],
                             procs, str(save_dir) + "_log")

    two = run(tmp_path / "two", 2)
    run(tmp_path / "one", 1)
    assert "joined the job: process 0 of 2" in two.stdout
    step_two, params_two = latest_params(tmp_path / "two")
    step_one, params_one = latest_params(tmp_path / "one")
    assert step_two == step_one == 3 and set(params_two) == {"Teacher", "Student"}
    assert_close(params_two, params_one)
