"""The compiled step's part for PaddleOCR's CombinedLoss in recognition: a distillation's
Teacher and Student trained together (PP-OCRv2, PP-OCRv3), or one recogniser's CTC and centre
losses (PP-OCRv2's enhanced CTC). The terms are in losses/combined.py; the train metric reads
the evaluated member's CTC output."""
from __future__ import annotations

import jax.numpy as jnp

from jaxocr.losses import build_loss
from jaxocr.losses.center import center_rows, class_centers
from jaxocr.losses.combined import combined_loss_terms, distance_rows, dml_rows
from jaxocr.tasks.rec import CTCObjective, logits_of, sar_global_mean


class CombinedObjective(CTCObjective):
    """Loss: the per-row terms (DML, distance, CTC, centre) averaged over the real rows, as
    CTCObjective's, plus each SAR term averaged over the global batch's real tokens; the log
    shows each term under Paddle's key (dml_ctc_0, loss_ctc_Student_1, loss_center, ...)."""

    def __init__(self, loss_cfg: dict, student: str | None, ignore_index: int,
                 metric_table=None, label_key: str = "label", seed: int = 1024):
        super().__init__(build_loss({"name": "CTCLoss"}), metric_table, label_key)
        self.terms = combined_loss_terms(loss_cfg)
        self.loss_names = tuple(n for t in self.terms for n in t.names)
        self.student = student  # None: a plain model
        self.ignore_index = int(ignore_index)
        self.ctc = {i: build_loss({"name": "CTCLoss", **dict(t.options)})
                    for i, t in enumerate(self.terms) if t.kind == "CTCLoss"}
        self.centers = {}
        for i, t in enumerate(self.terms):
            if t.kind == "CenterLoss":
                opts = dict(t.options)
                self.centers[i] = class_centers(int(opts.get("num_classes", 6625)),
                                                int(opts.get("feat_dim", 96)), seed,
                                                opts.get("center_file_path"))

    def targets(self, batch):
        if "label_sar" not in batch:
            return None
        return {"label_sar": batch["label_sar"], "valid_ratio": batch["valid_ratio"]}

    def loss(self, outputs, batch, mask):
        """The weighted terms, their sum, and the logged ones: one value per model (pair) as
        Paddle's loss dict holds them."""
        row_mean = lambda rows: jnp.sum(rows * mask) / mask.shape[0]
        labels, lengths = batch[self.label_key], batch["length"]
        total, logged = 0.0, []
        for i, t in enumerate(self.terms):
            for m, name in zip(t.models, t.names or (None,) * len(t.models)):
                if t.kind == "DistillationDMLLoss":
                    value = row_mean(dml_rows(t.pick(outputs, m[0]), t.pick(outputs, m[1]), t.act))
                elif t.kind == "DistillationDistanceLoss":
                    value = row_mean(distance_rows(t.pick(outputs, m[0]), t.pick(outputs, m[1]),
                                                   t.mode))
                elif t.kind == "DistillationCTCLoss":
                    value = row_mean(self.loss_fn(logits_of(t.pick(outputs, m)), labels, lengths))
                elif t.kind == "CTCLoss":
                    value = row_mean(self.ctc[i](logits_of(outputs), labels, lengths))
                elif t.kind == "CenterLoss":
                    if not isinstance(outputs, (tuple, list)):
                        raise ValueError("CenterLoss reads the head's features: set "
                                         "Architecture.Head.return_feats: true")
                    value = row_mean(center_rows(outputs[0], outputs[1], self.centers[i]))
                else:
                    value = sar_global_mean(t.pick(outputs, m), batch["label_sar"],
                                            self.ignore_index, mask)
                total = total + t.weight * value
                if name is not None:
                    logged.append(t.weight * value)
        return total, jnp.mean(mask), self.metric(self.student_head(outputs), batch, mask,
                                                  logged)

    def student_head(self, outputs):
        """The evaluated member's head output (its whole output without return_all_feats)."""
        if self.student is None:
            return outputs
        out = outputs[self.student]
        return out["head_out"] if isinstance(out, dict) and "head_out" in out else out
