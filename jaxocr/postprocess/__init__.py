from jaxocr.postprocess.ctc_decode import best_path, ctc_greedy_decode, decode_labels
from jaxocr.postprocess.db_postprocess import DBPostProcess

POSTPROCESS = {"CTCLabelDecode": ctc_greedy_decode}
# detection post-processes: classes built from the PostProcess section, called on host arrays
DET_POSTPROCESS = {"DBPostProcess": DBPostProcess}


def build_det_postprocess(post_cfg: dict):
    cfg = dict(post_cfg or {})
    name = cfg.pop("name", None)
    if name not in DET_POSTPROCESS:
        raise ValueError(f"PostProcess.name: unknown detection post-process {name!r}; "
                         f"known: {', '.join(DET_POSTPROCESS)}")
    return DET_POSTPROCESS[name](**cfg)


__all__ = ["DBPostProcess", "DET_POSTPROCESS", "POSTPROCESS", "best_path",
           "build_det_postprocess", "ctc_greedy_decode", "decode_labels"]
