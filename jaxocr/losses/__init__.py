from jaxocr.losses.ctc import batch_mean, ctc_loss

LOSSES = {"CTCLoss": ctc_loss}


def build_loss(loss_cfg: dict | None):
    cfg = dict(loss_cfg or {"name": "CTCLoss"})
    name = cfg.pop("name", "CTCLoss")
    if name not in LOSSES:
        raise ValueError(f"Loss.name: unknown loss {name!r}; known: {', '.join(LOSSES)}")
    fn = LOSSES[name]
    return lambda logits, labels, lengths: fn(logits, labels, lengths, **cfg)


__all__ = ["batch_mean", "build_loss", "ctc_loss"]
