"""The compiled step's part for a recognition distillation (PP-OCRv3's Teacher and Student
trained together): PaddleOCR's CombinedLoss over the members' outputs (losses/distillation.py),
the train metric on the evaluated member's CTC branch."""
from __future__ import annotations

import jax.numpy as jnp

from jaxocr.losses import build_loss
from jaxocr.losses.distillation import combined_loss_terms, distance_rows, dml_rows
from jaxocr.tasks.rec import CTCObjective, sar_global_mean


class DistillationObjective(CTCObjective):
    """Loss: the per-row terms (DML, distance, CTC) averaged over the real rows, as
    CTCObjective's, plus each SAR term averaged over the global batch's real tokens."""

    def __init__(self, loss_cfg: dict, student: str, ignore_index: int, metric_table=None,
                 label_key: str = "label_ctc"):
        super().__init__(build_loss({"name": "CTCLoss"}), metric_table, label_key)
        self.terms = combined_loss_terms(loss_cfg)
        self.student = student
        self.ignore_index = int(ignore_index)
        self.sar = any(t.kind == "DistillationSARLoss" for t in self.terms)

    def targets(self, batch):
        if "label_sar" not in batch:
            return None
        return {"label_sar": batch["label_sar"], "valid_ratio": batch["valid_ratio"]}

    def loss(self, outputs, batch, mask):
        rows = jnp.zeros(mask.shape[0], jnp.float32)
        sar = 0.0
        for t in self.terms:
            if t.kind == "DistillationDMLLoss":
                for a, b in t.models:
                    rows += t.weight * dml_rows(t.pick(outputs, a), t.pick(outputs, b), t.act)
            elif t.kind == "DistillationDistanceLoss":
                for a, b in t.models:
                    rows += t.weight * distance_rows(t.pick(outputs, a), t.pick(outputs, b),
                                                     t.mode)
            elif t.kind == "DistillationCTCLoss":
                for m in t.models:
                    rows += t.weight * self.loss_fn(t.pick(outputs, m), batch[self.label_key],
                                                    batch["length"])
            else:
                for m in t.models:
                    sar += t.weight * sar_global_mean(t.pick(outputs, m), batch["label_sar"],
                                                      self.ignore_index, mask)
        loss = jnp.sum(rows * mask) / mask.shape[0] + sar
        return loss, jnp.mean(mask), self.metric(self.student_head(outputs), batch, mask)

    def student_head(self, outputs):
        """The evaluated member's head output (its whole output without return_all_feats)."""
        out = outputs[self.student]
        return out["head_out"] if isinstance(out, dict) and "head_out" in out else out
