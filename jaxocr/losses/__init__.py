from jaxocr.losses.ctc import batch_mean, ctc_loss
from jaxocr.losses.det_db import db_loss
from jaxocr.losses.sar import sar_token_losses

# recognition losses: loss(logits, labels, lengths) -> per-sample losses (B,)
LOSSES = {"CTCLoss": ctc_loss}
# detection losses: loss(predicts, batch) -> {'loss': scalar, parts...}; batch-level ratios
DET_LOSSES = {"DBLoss": db_loss}


def build_loss(loss_cfg: dict | None):
    cfg = dict(loss_cfg or {"name": "CTCLoss"})
    name = cfg.pop("name", "CTCLoss")
    if name not in LOSSES:
        hint = f" ({name} is a detection loss: build_det_loss)" if name in DET_LOSSES else (
            " (MultiLoss: multi_loss_parts)" if name == "MultiLoss" else "")
        raise ValueError(f"Loss.name: unknown loss {name!r}; known: {', '.join(LOSSES)}{hint}")
    fn = LOSSES[name]
    return lambda logits, labels, lengths: fn(logits, labels, lengths, **cfg)


def multi_loss_parts(loss_cfg: dict) -> dict:
    """PaddleOCR's MultiLoss section -> {'ctc': CTCLoss options, 'sar': SARLoss options,
    'weight_1', 'weight_2'}. PP-OCRv3's pair (CTCLoss then SARLoss) is the one supported; as
    in Paddle, the section's own options (weights aside) reach both losses."""
    cfg = dict(loss_cfg)
    entries = cfg.pop("loss_config_list", None)
    shared = {k: v for k, v in cfg.items() if k not in ("name", "weight_1", "weight_2")}
    names = [next(iter(e)) for e in entries or [] if isinstance(e, dict) and len(e) == 1]
    if names != ["CTCLoss", "SARLoss"] or len(names) != len(entries):
        raise ValueError(f"Loss (MultiLoss).loss_config_list: supported is [CTCLoss, SARLoss] "
                         f"(PP-OCRv3), got {entries!r}")
    opts = [{**shared, **(next(iter(e.values())) or {})} for e in entries]
    ctc = {k: v for k, v in opts[0].items() if k == "use_focal_loss"}
    unknown = sorted(set(opts[1]) - {"ignore_index", "use_focal_loss"})
    if unknown:
        raise ValueError(f"Loss (MultiLoss) SARLoss: unknown option(s) {unknown}")
    return {"ctc": ctc, "sar": opts[1], "weight_1": float(cfg.get("weight_1", 1.0)),
            "weight_2": float(cfg.get("weight_2", 1.0))}


def build_det_loss(loss_cfg: dict):
    """Loss section -> loss(predicts, batch) returning the dict of scalar parts ('loss' first)."""
    cfg = dict(loss_cfg or {})
    name = cfg.pop("name", None)
    if name not in DET_LOSSES:
        raise ValueError(f"Loss.name: unknown detection loss {name!r}; known: {', '.join(DET_LOSSES)}")
    fn = DET_LOSSES[name]
    return lambda predicts, batch: fn(predicts, batch, **cfg)


__all__ = ["DET_LOSSES", "LOSSES", "batch_mean", "build_det_loss", "build_loss", "ctc_loss", "db_loss",
           "multi_loss_parts", "sar_token_losses"]
