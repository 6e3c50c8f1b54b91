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
from jaxocr.losses import build_loss
from jaxocr.metrics import build_metric
from jaxocr.metrics.rec_device import canonical_ids, rec_metric_sums
from jaxocr.postprocess import best_path, ctc_greedy_decode, decode_labels

RESIZE_OPS = ("RecResizeImg", "SVTRRecResizeImg")


def logits_of(outputs):
    """A head may return (features, logits) in training (CTCHead's return_feats)."""
    return outputs[-1] if isinstance(outputs, (tuple, list)) else outputs


class CTCObjective:
    """What the compiled step computes for a CTC recogniser.

    inputs: uint8 images (with `valid_width`) normalised on the device as PaddleOCR's
    resize_norm_img; float images pass through. loss: the masked sum of the per-row CTC
    losses over the device's rows / its row count, the share of real rows, and RecMetric's
    (correct, edit distance, count) over the real rows when a metric table is given.
    """

    share_floor = 1e-12  # the real rows' share: the mean over devices, unclipped

    def __init__(self, loss_fn, metric_table=None):
        self.loss_fn = loss_fn
        self.metric_table = metric_table
        self.has_metric = metric_table is not None

    @staticmethod
    def inputs(batch, dtype):
        if not isinstance(batch, dict):
            return batch.astype(dtype)
        images = batch["image"]
        if images.dtype == jnp.uint8:
            return normalize_rec_images(images, batch["valid_width"], dtype)
        return images.astype(dtype)

    def loss(self, outputs, batch, mask):
        rows = self.loss_fn(logits_of(outputs), batch["label"], batch["length"])
        loss = jnp.sum(rows * mask) / mask.shape[0]
        return loss, jnp.mean(mask), self.metric(outputs, batch, mask)

    def metric(self, outputs, batch, mask):
        if self.metric_table is None:
            return None
        ids, _ = best_path(logits_of(outputs))
        return rec_metric_sums(ids, batch["label"], batch["length"], mask, self.metric_table)

    @staticmethod
    def predictions(outputs, batch=None):
        """Eval mode: the best path (ids, probabilities), the only arrays that leave the device."""
        return best_path(logits_of(outputs).astype(jnp.float32))


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
        head = cfg["Architecture"].setdefault("Head", {})
        if head.get("name", "CTCHead") == "CTCHead":
            head["out_channels"] = self.charset.num_classes
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
        return CTCObjective(build_loss(self.cfg.get("Loss")), table)

    @staticmethod
    def summarize(sums) -> dict:
        """A step's train-metric sums -> the log line's values (ratios: the device average
        the all-reduce takes cancels)."""
        correct, dist, n = (float(v) for v in sums)
        return {"acc": correct / max(n, 1e-12), "norm_edit_dis": 1 - dist / max(n, 1e-12)}

    def build_metric(self, source=None):
        return build_metric(self.cfg.get("Metric"))

    def decode(self, predictions, host: dict | None = None) -> list[tuple[str, float]]:
        """Host rows of the eval step's output -> (text, score) per image."""
        ids, probs = predictions
        return ctc_greedy_decode(ids, probs, self.charset)

    def labels(self, host: dict) -> list[str]:
        """The ground truth of a host batch, as text."""
        return decode_labels(host["label"], host["length"], self.charset)

    def update_metric(self, metric, predictions, host: dict):
        preds = [text for text, _ in self.decode(predictions)]
        metric.update(preds, self.labels(host), host["mask"])

    @staticmethod
    def format(result) -> str:
        text, score = result
        return f"{text}\t{score:.6f}"

