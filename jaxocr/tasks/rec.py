"""Text recognition with CTC (`Architecture.model_type: rec`): CRNN, SVTR.

What the task-agnostic core asks of it: the character dictionary and the head size, the input
shape, the keys and loader options of its batches, the objective the compiled step runs
(model input, per-row loss, on-device train metric), what the eval step returns, and the
host-side decoding and metric.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxocr.data.charset import CharacterDict
from jaxocr.data.device_norm import normalize_rec_images
from jaxocr.data.transforms import op_options
from jaxocr.config import ConfigError
from jaxocr.distributed import AXIS
from jaxocr.losses import build_loss, multi_loss_parts, sar_token_losses
from jaxocr.metrics import build_metric
from jaxocr.models import distillation_members, infer_member
from jaxocr.metrics.rec_device import canonical_ids, rec_metric_sums
from jaxocr.postprocess import best_path, ctc_greedy_decode, decode_labels

RESIZE_OPS = ("RecResizeImg", "SVTRRecResizeImg")


def logits_of(outputs):
    """The CTC logits of a head's output: CTCHead's return_feats gives (features, logits),
    MultiHead's training output is a dict with them under 'ctc'."""
    if isinstance(outputs, dict):
        outputs = outputs["ctc"]
    return outputs[-1] if isinstance(outputs, (tuple, list)) else outputs


class CTCObjective:
    """What the compiled step computes for a CTC recogniser.

    inputs: uint8 images (with `valid_width`) normalised on the device as PaddleOCR's
    resize_norm_img; float images pass through. loss: the masked sum of the per-row CTC
    losses over the device's rows / its row count, the share of real rows, and RecMetric's
    (correct, edit distance, count) over the real rows when a metric table is given.
    """

    share_floor = 1e-12  # the real rows' share: the mean over devices, unclipped
    loss_names: tuple[str, ...] = ()  # the logged loss terms, for a loss of several

    def __init__(self, loss_fn, metric_table=None, label_key: str = "label"):
        self.loss_fn = loss_fn
        self.metric_table = metric_table
        self.label_key = label_key  # MultiLabelEncode writes the CTC label as label_ctc

    @property
    def has_metric(self) -> bool:
        return self.metric_table is not None or bool(self.loss_names)

    @staticmethod
    def targets(batch):
        """What the model trains on besides the image: nothing."""
        return None

    @staticmethod
    def inputs(batch, dtype):
        if not isinstance(batch, dict):
            return batch.astype(dtype)
        images = batch["image"]
        if images.dtype == jnp.uint8:
            return normalize_rec_images(images, batch["valid_width"], dtype)
        return images.astype(dtype)

    def loss(self, outputs, batch, mask):
        return self.ctc_loss(outputs, batch, mask), jnp.mean(mask), self.metric(outputs, batch,
                                                                                mask)

    def ctc_loss(self, outputs, batch, mask):
        rows = self.loss_fn(logits_of(outputs), batch[self.label_key], batch["length"])
        return jnp.sum(rows * mask) / mask.shape[0]

    def metric(self, outputs, batch, mask, parts=()):
        """The log's vector: RecMetric's sums (with a metric table), then the device's value of
        each loss term and its share (with `parts`, one per loss_names), or None."""
        pieces = []
        if self.metric_table is not None:
            ids, _ = best_path(logits_of(outputs))
            pieces.append(rec_metric_sums(ids, batch[self.label_key], batch["length"], mask,
                                          self.metric_table).astype(jnp.float32))
        if parts:
            pieces.append(jnp.stack([jnp.asarray(p, jnp.float32) for p in parts]
                                    + [jnp.mean(mask).astype(jnp.float32)]))
        return jnp.concatenate(pieces) if pieces else None

    def summarize(self, vector) -> dict:
        """The step's vector (averaged over devices) -> the log line's values: each loss term
        over the mean share, as the total loss; acc and norm_edit_dis (ratios of sums)."""
        v = [float(x) for x in vector]
        out = {}
        if self.loss_names:
            share = max(v[-1], 1e-12)
            k = len(self.loss_names)
            out.update({n: x / share for n, x in zip(self.loss_names, v[-1 - k:-1])})
        if self.metric_table is not None:
            correct, dist, n = v[:3]
            out.update(acc=correct / max(n, 1e-12), norm_edit_dis=1 - dist / max(n, 1e-12))
        return out

    @staticmethod
    def predictions(outputs, batch=None):
        """Eval mode: the best path (ids, probabilities), the only arrays that leave the device."""
        return best_path(logits_of(outputs).astype(jnp.float32))


class MultiLossObjective(CTCObjective):
    """PP-OCRv3's MultiLoss: weight_1 * CTC (mean over the real rows, as CTCObjective) +
    weight_2 * SAR (token cross-entropy, mean over the real tokens).

    The SAR mean is over the tokens of the *global* batch, not Paddle's per-card mean averaged
    over cards, so the loss does not depend on how the batch is split. The step divides the
    all-reduced gradient by the mean row share S; each device therefore scales its token sum by
    psum(share) / psum(tokens) = n S / K, and the mean over the n devices, divided by S, is the
    sum over all tokens / K."""

    loss_names = ("CTCLoss", "SARLoss")  # Paddle's MultiLoss keys, logged weighted

    def __init__(self, parts: dict, ignore_index: int, metric_table=None):
        super().__init__(build_loss({"name": "CTCLoss", **parts["ctc"]}), metric_table,
                         label_key="label_ctc")
        self.weights = parts["weight_1"], parts["weight_2"]
        self.ignore_index = int(ignore_index)

    @staticmethod
    def targets(batch):
        return {"label_sar": batch["label_sar"], "valid_ratio": batch["valid_ratio"]}

    def loss(self, outputs, batch, mask):
        sar = self.weights[1] * sar_global_mean(outputs["sar"], batch["label_sar"],
                                                self.ignore_index, mask)
        ctc = self.weights[0] * self.ctc_loss(outputs, batch, mask)
        return ctc + sar, jnp.mean(mask), self.metric(outputs, batch, mask, (ctc, sar))


def sar_global_mean(logits, label_sar, ignore_index: int, mask):
    """This device's part of the SAR loss averaged over the real tokens of the global batch
    (see MultiLossObjective): its token sum times psum(share) / psum(tokens)."""
    tokens, counted = sar_token_losses(logits, label_sar, ignore_index)
    counted = counted * mask[:, None]
    scale = jax.lax.stop_gradient(jax.lax.psum(jnp.mean(mask), AXIS) / jnp.maximum(
        jax.lax.psum(jnp.sum(counted), AXIS), 1.0))
    return jnp.sum(tokens * counted) * scale


_STEPS: dict[tuple[str, tuple], int] = {}


def _output_steps(model, shape) -> int:
    """The CTC frames `model` emits for an (H, W, C) image, traced once per model and shape
    (tracing takes seconds; modules with list fields do not hash, their repr does)."""
    key = (repr(model), tuple(shape))
    if key not in _STEPS:
        x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
        out, _ = jax.eval_shape(lambda x: model.init_with_output(
            jax.random.PRNGKey(0), x, train=False), x)
        _STEPS[key] = int(out.shape[1])
    return _STEPS[key]


class RecTask:
    name = "rec"
    log_style = "paddleocr"  # the train log line: PaddleOCR's
    infer_batch_size = 16
    ragged_keys = ()
    device_keys = {"Train": ("image", "valid_width", "label", "length", "mask"),
                   "Eval": ("image", "valid_width")}

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.charset = CharacterDict.from_config(cfg["Global"])
        arch = cfg["Architecture"]
        self.distillation = arch.get("name") == "DistillationModel"
        members = distillation_members(arch).values() if self.distillation else [arch]
        n = len(self.charset)
        multi = False
        for member in members:  # the class counts, as Paddle's train.py fills them
            head = member.setdefault("Head", {})
            if head.get("name", "CTCHead") == "CTCHead":
                head["out_channels"] = self.charset.num_classes
            elif head["name"] == "MultiHead":
                head["out_channels_list"] = {"CTCLabelDecode": n + 1, "SARLabelDecode": n + 3}
                multi = True
        if self.distillation:
            key = (cfg.get("Metric") or {}).get("key", infer_member(arch))
            if key != infer_member(arch):
                raise ConfigError(f"Metric.key {key!r}: jaxocr evaluates, infers and exports "
                                  f"the distillation's {infer_member(arch)} (PaddleOCR's "
                                  "export does too)")
        self.sar_ignore_index = n + 2  # SAR's padding token
        self.label_key = "label_ctc" if multi else "label"
        if multi:  # MultiLabelEncode's keys; the SAR branch trains on two of them
            self.device_keys = {
                "Train": ("image", "valid_width", "label_ctc", "label_sar", "length",
                          "valid_ratio", "mask"),
                "Eval": self.device_keys["Eval"]}
        self.main_indicator = (cfg.get("Metric") or {}).get("main_indicator", "acc")

    def input_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) of the Train images, from the config's resize op."""
        resize = op_options(self.cfg["Train"]["dataset"].get("transforms"), *RESIZE_OPS)
        if not resize or not resize.get("image_shape"):
            return None
        c, h, w = (int(v) for v in resize["image_shape"])
        return h, w, c

    def loader_options(self, model, mode: str) -> dict:
        """Train labels needing more CTC frames than the model emits are dropped at scan."""
        shape = self.input_shape()
        if mode != "Train" or shape is None:
            return {}
        return {"max_ctc_steps": _output_steps(model, shape)}

    @staticmethod
    def phase(epoch: int) -> None:
        """One compiled train step for the whole run."""
        return None

    def objective(self, phase=None) -> CTCObjective:
        table = None
        if self.cfg["Global"]["cal_metric_during_train"]:
            table = canonical_ids(self.charset, build_metric(self.cfg.get("Metric")))
        loss_cfg = self.cfg.get("Loss") or {}
        name = loss_cfg.get("name", "CTCLoss")
        head = "DistillationModel" if self.distillation else \
            self.cfg["Architecture"]["Head"].get("name", "CTCHead")
        if name == "CombinedLoss":
            return self._combined_objective(loss_cfg, head, table)
        expected = {"MultiLoss": "MultiHead"}.get(name)
        if (head in ("DistillationModel", "MultiHead") or expected) and head != expected:
            raise ConfigError(f"Loss {name} does not train an Architecture with "
                              f"{head}: MultiLoss trains MultiHead (PP-OCRv3), CombinedLoss a "
                              "DistillationModel or a CTCHead")
        if name == "MultiLoss":
            return MultiLossObjective(multi_loss_parts(loss_cfg), self.sar_ignore_index, table)
        return CTCObjective(build_loss(loss_cfg), table)

    def _combined_objective(self, loss_cfg: dict, head: str, table):
        """CombinedLoss: Distillation* terms train a DistillationModel's members, CTCLoss and
        CenterLoss one CTCHead recogniser (PP-OCRv2's enhanced CTC)."""
        from jaxocr.losses.combined import DISTILLATION_TERMS
        from jaxocr.tasks.rec_combined import CombinedObjective
        try:
            objective = CombinedObjective(
                loss_cfg, infer_member(self.cfg["Architecture"]) if self.distillation else None,
                self.sar_ignore_index, table, self.label_key, int(self.cfg["Global"]["seed"]))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for t in objective.terms:
            if (t.kind in DISTILLATION_TERMS) != self.distillation:
                raise ConfigError(f"Loss CombinedLoss: {t.kind} does not train an Architecture "
                                  f"with {head} (the Distillation* terms train a "
                                  "DistillationModel, CTCLoss and CenterLoss a CTCHead)")
            if t.kind == "CenterLoss":
                arch_head = self.cfg["Architecture"]["Head"]
                if head != "CTCHead" or not arch_head.get("return_feats"):
                    raise ConfigError("Loss CombinedLoss: CenterLoss reads the head's features:"
                                      " it needs Architecture.Head CTCHead with return_feats: true")
                width = arch_head.get("mid_channels")
                feat_dim = dict(t.options).get("feat_dim", 96)
                if width is not None and int(width) != int(feat_dim):
                    raise ConfigError(f"Loss CombinedLoss: CenterLoss.feat_dim {feat_dim} is not "
                                      f"the head's feature width (Head.mid_channels {width})")
        return objective

    def build_metric(self, source=None):
        return build_metric(self.cfg.get("Metric"))

    def decode(self, predictions, host: dict | None = None) -> list[tuple[str, float]]:
        """Host rows of the eval step's output -> (text, score) per image."""
        ids, probs = predictions
        return ctc_greedy_decode(ids, probs, self.charset)

    def labels(self, host: dict) -> list[str]:
        """The ground truth of a host batch, as text."""
        return decode_labels(host[self.label_key], host["length"], self.charset)

    def update_metric(self, metric, predictions, host: dict):
        preds = [text for text, _ in self.decode(predictions)]
        metric.update(preds, self.labels(host), host["mask"])

    @staticmethod
    def format(result) -> str:
        text, score = result
        return f"{text}\t{score:.6f}"

