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
    CTCObjective's, plus each SAR term averaged over the global batch's real tokens; the log
    shows each term under Paddle's key (dml_ctc_0, loss_ctc_Student_1, ...)."""

    def __init__(self, loss_cfg: dict, student: str, ignore_index: int, metric_table=None,
                 label_key: str = "label_ctc"):
        super().__init__(build_loss({"name": "CTCLoss"}), metric_table, label_key)
        self.terms = combined_loss_terms(loss_cfg)
        self.loss_names = tuple(n for t in self.terms for n in t.names)
        self.student = student
        self.ignore_index = int(ignore_index)
        self.sar = any(t.kind == "DistillationSARLoss" for t in self.terms)

    def targets(self, batch):
        if "label_sar" not in batch:
            return None
        return {"label_sar": batch["label_sar"], "valid_ratio": batch["valid_ratio"]}

    def loss(self, outputs, batch, mask):
        """The weighted terms, one value per model (pair) as Paddle logs them, and their sum."""
        row_mean = lambda rows: jnp.sum(rows * mask) / mask.shape[0]
        parts = []
        for t in self.terms:
            for m in t.models:
                if t.kind == "DistillationDMLLoss":
                    value = row_mean(dml_rows(t.pick(outputs, m[0]), t.pick(outputs, m[1]), t.act))
                elif t.kind == "DistillationDistanceLoss":
                    value = row_mean(distance_rows(t.pick(outputs, m[0]), t.pick(outputs, m[1]),
                                                   t.mode))
                elif t.kind == "DistillationCTCLoss":
                    value = row_mean(self.loss_fn(t.pick(outputs, m), batch[self.label_key],
                                                  batch["length"]))
                else:
                    value = sar_global_mean(t.pick(outputs, m), batch["label_sar"],
                                            self.ignore_index, mask)
                parts.append(t.weight * value)
        return sum(parts), jnp.mean(mask), self.metric(self.student_head(outputs), batch, mask,
                                                       parts)

    def student_head(self, outputs):
        """The evaluated member's head output (its whole output without return_all_feats)."""
        out = outputs[self.student]
        return out["head_out"] if isinstance(out, dict) and "head_out" in out else out
