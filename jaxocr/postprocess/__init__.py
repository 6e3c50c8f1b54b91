from jaxocr.postprocess.ctc_decode import best_path, ctc_greedy_decode, decode_labels

POSTPROCESS = {"CTCLabelDecode": ctc_greedy_decode}

__all__ = ["POSTPROCESS", "best_path", "ctc_greedy_decode", "decode_labels"]
