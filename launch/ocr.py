"""Detection then recognition on an image or a directory of images, as PaddleOCR's
tools/infer/predict_system.py: a trained det model and a trained rec model (jaxocr checkpoints).

    python launch/ocr.py --det_config configs/det/quickstart_db.yml \\
        --det_opt Global.checkpoints=output/det/quickstart_db \\
        --rec_config configs/rec/quickstart_crnn.yml \\
        --rec_opt Global.checkpoints=output/rec/quickstart_crnn \\
        --image_dir IMAGE_OR_DIR [--drop_score 0.5] [--out ./inference_results]

Prints and writes to OUT/system_results.txt one line per image, Paddle's format:
`name<TAB>[{"transcription": ..., "points": [[x, y], ...]}, ...]` (the image's file name; JSON
with ensure_ascii=False; `--with_score` adds each "score"), and OUT/<name> the image drawn
beside its texts (Paddle's draw_ocr_box_txt). Unreadable images are skipped with a warning.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxocr import cli  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--det_config", required=True, help="the det model's YAML config")
    p.add_argument("--rec_config", required=True, help="the rec model's YAML config")
    for kind in ("det", "rec"):
        p.add_argument(f"--{kind}_opt", nargs="+", action="append", default=[],
                       metavar="Key.sub=value", help=f"overrides of the {kind} config, as -o "
                       f"(Global.checkpoints=DIR names its weights)")
    p.add_argument("--image_dir", required=True, help="an image file or a directory of images")
    p.add_argument("--drop_score", type=float, default=0.5,
                   help="leave out texts recognised with a lower score (default 0.5)")
    p.add_argument("--rec_batch_num", type=int, default=6,
                   help="crops per recogniser call (default 6)")
    p.add_argument("--out", default="./inference_results",
                   help="folder for system_results.txt and the drawn images")
    p.add_argument("--with_score", action="store_true",
                   help="also write each text's score in system_results.txt")
    return p


def _config(path: str, opts, kind: str) -> dict:
    """The config, checked to be a `kind` model with weights that exist."""
    from jaxocr.config import ConfigError, load_config, parse_overrides
    from jaxocr.training.checkpoint import resolve
    cfg = load_config(path, parse_overrides(opts))
    flag = f"--{kind}_opt"
    got = cfg["Architecture"].get("model_type", "rec")
    if got != kind:
        raise ConfigError(f"{path}: Architecture.model_type is {got!r}; --{kind}_config must be "
                          f"a {kind} model")
    ckpt = cfg["Global"].get("checkpoints") or cfg["Global"].get("pretrained_model")
    if not ckpt:
        raise ConfigError(f"{path}: no weights; set {flag} Global.checkpoints=DIR (a run "
                          f"directory, latest/ or best_accuracy/)")
    resolve(str(ckpt))  # a missing checkpoint fails here, before any compile
    return cfg


def _read(path: str):
    """BGR uint8 image, or None (cv2's decoders, then PIL's for what they lack, e.g. GIF)."""
    import cv2
    import numpy as np
    try:
        img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    except (OSError, ValueError, cv2.error):
        img = None
    if img is None:
        try:
            from PIL import Image
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB"))[:, :, ::-1].copy()
        except Exception:  # noqa: BLE001 (anything PIL cannot read is just unreadable)
            return None
    return img


def main():
    args = parser().parse_args()
    from jaxocr.config import ConfigError
    if not 0.0 <= args.drop_score <= 1.0:
        raise ConfigError(f"--drop_score must be in [0, 1], got {args.drop_score}")
    if args.rec_batch_num < 1:
        raise ConfigError(f"--rec_batch_num must be >= 1, got {args.rec_batch_num}")
    det_cfg = _config(args.det_config, args.det_opt, "det")
    rec_cfg = _config(args.rec_config, args.rec_opt, "rec")
    if not os.path.exists(args.image_dir):
        raise FileNotFoundError(f"--image_dir not found: {args.image_dir}")
    import logging

    import cv2
    from jaxocr.data.transforms import BadSample
    from jaxocr.infer import image_paths
    from jaxocr.system import TextSystem, draw_ocr, paddle_line
    log = logging.getLogger("jaxocr")
    paths = image_paths(args.image_dir)
    if not paths:
        raise FileNotFoundError(f"no image files in {args.image_dir}")
    system = TextSystem.from_configs(det_cfg, rec_cfg, drop_score=args.drop_score,
                                     rec_batch_num=args.rec_batch_num)
    os.makedirs(args.out, exist_ok=True)
    res_path = os.path.join(args.out, "system_results.txt")
    done = skipped = 0
    with open(res_path, "w", encoding="utf-8") as out:
        for path in paths:
            img = _read(path)
            if img is None:
                log.warning("skipped %s: the image could not be read", path)
                skipped += 1
                continue
            try:
                results = system(img)
            except BadSample as e:
                log.warning("skipped %s: %s", path, e)
                skipped += 1
                continue
            name = os.path.basename(path)
            line = paddle_line(name, results, with_score=args.with_score)
            print(line, flush=True)
            out.write(line + "\n")
            out.flush()
            stem, ext = os.path.splitext(name)
            if ext.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"):
                name = stem + ".png"  # as Paddle saves a GIF's drawing
            cv2.imwrite(os.path.join(args.out, name), draw_ocr(img, results))
            done += 1
    if skipped:
        log.warning("%d unreadable images skipped", skipped)
    print(f"{done} images: results in {res_path}, drawn images in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
