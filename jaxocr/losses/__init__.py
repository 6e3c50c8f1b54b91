from jaxocr.losses.ctc import batch_mean, ctc_loss
from jaxocr.losses.det_db import db_loss

# recognition losses: loss(logits, labels, lengths) -> per-sample losses (B,)
LOSSES = {"CTCLoss": ctc_loss}
# detection losses: loss(predicts, batch) -> {'loss': scalar, parts...}; batch-level ratios
DET_LOSSES = {"DBLoss": db_loss}


def build_loss(loss_cfg: dict | None):
    cfg = dict(loss_cfg or {"name": "CTCLoss"})
    name = cfg.pop("name", "CTCLoss")
    if name not in LOSSES:
        hint = f" ({name} is a detection loss: build_det_loss)" if name in DET_LOSSES else ""
        raise ValueError(f"Loss.name: unknown loss {name!r}; known: {', '.join(LOSSES)}{hint}")
    fn = LOSSES[name]
    return lambda logits, labels, lengths: fn(logits, labels, lengths, **cfg)


def build_det_loss(loss_cfg: dict):
    """Loss section -> loss(predicts, batch) returning the dict of scalar parts ('loss' first)."""
    cfg = dict(loss_cfg or {})
    name = cfg.pop("name", None)
    if name not in DET_LOSSES:
        raise ValueError(f"Loss.name: unknown detection loss {name!r}; known: {', '.join(DET_LOSSES)}")
    fn = DET_LOSSES[name]
    return lambda predicts, batch: fn(predicts, batch, **cfg)


__all__ = ["DET_LOSSES", "LOSSES", "batch_mean", "build_det_loss", "build_loss", "ctc_loss", "db_loss"]
