"""PP-OCRv3's recogniser (SVTR-LCNet): the SVTR neck and SAR branch of MultiHead, its labels
(MultiLabelEncode) and loss (MultiLoss). The shipped configs' parameter counts are in
test_config.py, their training step in test_paddleocr_configs.py.

Checked once against PaddleOCR 2.7 in paddle 3.0 (2026-12-03): the en MultiHead (dropouts 0)
with shared random weights on a random (3, 512, 1, 40) map, valid ratios 0.3 / 0.77 / 1.0 and
random SAR labels gives the same CTC probabilities in eval mode (to 3.7e-6), the same CTC
logits, SVTR-neck features and SAR logits in train mode (to 2.2e-8, 9.7e-8, 9.5e-7)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from jaxocr.data.charset import CharacterDict
from jaxocr.data.transforms import BadSample, build_transforms
from jaxocr.distributed import data_mesh
from jaxocr.losses import multi_loss_parts, sar_token_losses
from jaxocr.models.heads.multi_head import MultiHead
from jaxocr.tasks.rec import MultiLossObjective
from jaxocr.training.step import batch_sharding, create_state, make_train_step, replicated

EN = CharacterDict("ppocr/utils/en_dict.txt", use_space_char=True)  # 96 characters
HEAD_LIST = [{"CTCHead": {"Neck": {"name": "svtr", "dims": 64, "depth": 2, "hidden_dims": 120,
                                   "use_guide": True}, "Head": {"fc_decay": 1e-5}}},
             {"SARHead": {"enc_dim": 512, "max_text_length": 25}}]


def test_multi_label_encode_writes_the_ctc_and_sar_labels():
    ops = build_transforms([{"MultiLabelEncode": None}], EN, {"max_text_length": 25})
    out = ops({"label": "Ab 9", "image": 0})
    ids = EN.encode("Ab 9")
    assert out["length"] == 4 and "label" not in out
    np.testing.assert_array_equal(out["label_ctc"], ids + [0] * 21)
    # SAR: characters 0..95, unknown 96, start/end 97, padding 98
    np.testing.assert_array_equal(out["label_sar"], [97] + [i - 1 for i in ids] + [97] + [98] * 19)
    assert out["label_sar"].dtype == np.int32 and out["label_sar"].shape == (25,)
    assert ops({"label": "x" * 22, "image": 0})["length"] == 22
    with pytest.raises(BadSample, match="too long for SAR"):
        ops({"label": "x" * 24, "image": 0})  # CTC takes it, SAR (start + end) does not
    blank = ops.blank()
    assert blank["length"] == 0 and not blank["label_ctc"].any()
    np.testing.assert_array_equal(blank["label_sar"], [97, 97] + [98] * 23)


def _head_and_vars(batch=2, width=40):
    head = MultiHead(HEAD_LIST, {"CTCLabelDecode": 97, "SARLabelDecode": 99})
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, 1, width, 512))
    return head, head.init(jax.random.PRNGKey(0), x), x


def test_multi_head_trains_both_branches_and_answers_with_ctc():
    head, variables, x = _head_and_vars()
    assert set(variables["params"]) == {"ctc_encoder", "ctc_head", "sar_head"}
    n = sum(a.size for a in jax.tree.leaves(variables["params"]["sar_head"]))
    assert n == 11_491_939  # PaddleOCR's SARHead(512, 99, enc_dim 512)
    probs = head.apply(variables, x)
    assert probs.shape == (2, 40, 97)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    targets = {"label_sar": jnp.full((2, 25), 98, jnp.int32), "valid_ratio": jnp.ones(2)}
    out, _ = head.apply(variables, x, train=True, targets=targets, mutable=["batch_stats"],
                        rngs={"dropout": jax.random.PRNGKey(2)})
    assert out["ctc"].shape == (2, 40, 97) and out["ctc_neck"].shape == (2, 40, 64)
    assert out["sar"].shape == (2, 25, 98)
    with pytest.raises(ValueError, match="trains its SAR branch on targets"):
        head.apply(variables, x, train=True, mutable=["batch_stats"],
                   rngs={"dropout": jax.random.PRNGKey(2)})


def test_use_guide_keeps_ctc_gradients_out_of_the_backbone_and_sar_masks_the_padding():
    head, variables, x = _head_and_vars()
    targets = {"label_sar": jnp.asarray(np.random.default_rng(0).integers(0, 98, (2, 25)),
                                        jnp.int32), "valid_ratio": jnp.array([0.5, 1.0])}

    def outputs(x):
        out, _ = head.apply(variables, x, train=True, targets=targets, mutable=["batch_stats"],
                            rngs={"dropout": jax.random.PRNGKey(2)})
        return out

    ctc_grad = jax.grad(lambda x: outputs(x)["ctc"].sum())(x)
    sar_grad = jax.grad(lambda x: outputs(x)["sar"].sum())(x)
    assert not np.asarray(ctc_grad).any()  # the stop-gradient of use_guide
    assert np.abs(np.asarray(sar_grad)).sum() > 0
    # row 0 is valid over 20 of 40 columns: the SAR encoder reads the state at column 19,
    # the attention sees columns < 20 and the 3x3 key conv column 20; beyond, nothing counts
    x2 = x.at[0, :, 21:].set(100.0).at[1, :, 39].add(1.0)
    a, b = outputs(x)["sar"], outputs(x2)["sar"]
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(a[1] - b[1])).max() > 1e-4


def test_sar_loss_is_the_token_mean_with_the_shift_and_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 4)).astype(np.float32)
    label = np.array([[3, 0, 1, 3, 9], [3, 2, 3, 9, 9]], np.int32)  # start/end 3, padding 9
    tokens, counted = sar_token_losses(jnp.asarray(logits), jnp.asarray(label), 9)
    logp = logits[:, :-1] - np.log(np.exp(logits[:, :-1]).sum(-1, keepdims=True))
    want = [-logp[0, 0, 0], -logp[0, 1, 1], -logp[0, 2, 3], -logp[1, 0, 2], -logp[1, 1, 3]]
    np.testing.assert_array_equal(counted, [[1, 1, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_allclose(np.asarray(tokens).sum() / 5, np.mean(want), rtol=1e-6)


class TinyTwoBranch(nn.Module):
    """Stands in for the v3 net: CTC and SAR logits from the image (no BatchNorm)."""

    @nn.compact
    def __call__(self, x, train=False, targets=None):
        h = jnp.tanh(nn.Dense(24)(x.reshape(x.shape[0], -1)))
        ctc = nn.Dense(6 * 5)(h).reshape(-1, 6, 5)
        if not train:
            return jax.nn.softmax(ctc)
        emb = nn.Embed(7, 8)(targets["label_sar"])
        sar = nn.Dense(6)(emb + nn.Dense(8)(h)[:, None] * targets["valid_ratio"][:, None, None])
        return {"ctc": ctc, "sar": sar}


def test_multi_loss_is_split_invariant_ctc_row_mean_plus_global_sar_token_mean():
    """The same batch on 1 and 4 devices: the same loss and update, although the devices hold
    very different numbers of SAR tokens; and the loss is weight_1 * CTC + weight_2 * SAR."""
    rng = np.random.default_rng(0)
    n = 8
    lengths = np.array([1, 1, 3, 3, 2, 1, 3, 2], np.int32)
    ctc = rng.integers(1, 5, (n, 3)).astype(np.int32) * (np.arange(3) < lengths[:, None])
    sar = np.full((n, 5), 6, np.int32)
    for i, k in enumerate(lengths):
        sar[i, :k + 2] = [5, *(ctc[i, :k] - 1), 5]
    batch = {"image": rng.normal(size=(n, 4, 4, 1)).astype(np.float32), "label_ctc": ctc,
             "label_sar": sar, "length": lengths, "valid_ratio": np.ones(n, np.float32),
             "mask": np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)}
    parts = multi_loss_parts({"name": "MultiLoss", "loss_config_list": [{"CTCLoss": None},
                                                                      {"SARLoss": None}],
                              "weight_1": 1.0, "weight_2": 0.5})
    objective = MultiLossObjective(parts, ignore_index=6)
    model, tx = TinyTwoBranch(), optax.sgd(0.1)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)), train=True,
                           targets={"label_sar": jnp.zeros((1, 5), jnp.int32),
                                    "valid_ratio": jnp.ones(1)})
    params = jax.device_get(variables["params"])

    def run(devices):
        mesh = data_mesh(jax.devices()[:devices])
        state = jax.device_put(create_state({"params": params}, tx, 0), replicated(mesh))
        b = jax.device_put(batch, batch_sharding(mesh))
        state, out = make_train_step(model, tx, objective, mesh)(state, b)
        return jax.device_get(state.params), float(out["loss"]), objective.summarize(
            out["metric"])

    p1, loss1, log1 = run(1)
    p4, loss4, log4 = run(4)
    np.testing.assert_allclose(loss1, loss4, rtol=1e-6)
    # the log line's terms (Paddle's MultiLoss keys, weighted) add up to the loss on any split
    assert list(log1) == ["CTCLoss", "SARLoss"]
    for log in (log1, log4):
        np.testing.assert_allclose(log["CTCLoss"] + log["SARLoss"], loss1, rtol=1e-5)
    np.testing.assert_allclose(log4["SARLoss"], log1["SARLoss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    out = model.apply({"params": params}, jnp.asarray(batch["image"]), train=True,
                      targets={"label_sar": sar, "valid_ratio": batch["valid_ratio"]})
    real = batch["mask"] == 1
    ctc_rows = optax.ctc_loss(out["ctc"], jnp.zeros((n, 6)), ctc,
                              (np.arange(3) >= lengths[:, None]).astype(np.float32))
    tokens, counted = sar_token_losses(out["sar"], jnp.asarray(sar), 6)
    sar_mean = float(np.asarray(tokens)[real].sum() / np.asarray(counted)[real].sum())
    want = float(np.mean(np.asarray(ctc_rows)[real])) + 0.5 * sar_mean
    np.testing.assert_allclose(loss1, want, rtol=1e-5)
    np.testing.assert_allclose(log1["SARLoss"], 0.5 * sar_mean, rtol=1e-5)
