"""Run a trained model on an image or a directory of images; prints one line per image,
`path<TAB>` and the task's result (rec: `text<TAB>score`; det: PaddleOCR's
`[{"points": [[x, y], ...]}, ...]`).

    python launch/infer.py -c CONFIG -o Global.checkpoints=DIR Global.infer_img=FILE_OR_DIR
    python launch/infer.py -c PPDET_CONFIG -o weights=RUN/best_model --infer_dir DIR \
        --output_dir OUT          # PaddleDetection's tools/infer.py flags

With `Global.save_res_path` the lines also go to that file (PaddleOCR's det_results.txt /
predicts); a detector also writes each image with its boxes drawn to `det_results/` beside it.
`--output_dir` writes the drawn images there (boxes scoring `--draw_threshold` or more, with
class names and scores for PP-YOLOE) and `bbox.json`: every result in COCO's results format
(image_id the image's position in the list, `file_name` beside it).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxocr import cli  # noqa: E402


def main():
    p = cli.parser(__doc__)
    p.add_argument("--infer_img", default=None, help="an image (PaddleDetection's flag)")
    p.add_argument("--infer_dir", default=None, help="a directory of images")
    p.add_argument("--output_dir", default=None, help="drawn images and bbox.json go here")
    p.add_argument("--draw_threshold", type=float, default=0.5)
    args = p.parse_args()
    cli.set_cpu_devices(args.cpu_devices)
    cfg = cli.load(args)
    if args.infer_img or args.infer_dir:
        cfg["Global"]["infer_img"] = args.infer_img or args.infer_dir
    import cv2
    from jaxocr.infer import predict
    from jaxocr.tasks import build_task
    task = build_task(cfg)
    res_path = cfg["Global"].get("save_res_path")
    out = draw_dir = None
    if res_path:
        os.makedirs(os.path.dirname(os.path.abspath(res_path)), exist_ok=True)
        out = open(res_path, "w", encoding="utf-8")
        if hasattr(task, "draw"):
            draw_dir = os.path.join(os.path.dirname(os.path.abspath(res_path)), "det_results")
            os.makedirs(draw_dir, exist_ok=True)
    if args.output_dir:
        draw_dir = args.output_dir
        os.makedirs(draw_dir, exist_ok=True)
    coco = []
    try:
        for k, (path, result) in enumerate(predict(cfg)):
            line = f"{path}\t{task.format(result)}"
            print(line, flush=True)
            if out:
                out.write(line + "\n")
            if args.output_dir and hasattr(task, "results"):
                coco += [{**r, "file_name": os.path.basename(path)}
                         for r in task.results(result, image_id=k)]
            if draw_dir and hasattr(task, "draw"):
                image = cv2.imread(path)
                if image is not None:
                    kw = {"threshold": args.draw_threshold} if hasattr(task, "results") else {}
                    cv2.imwrite(os.path.join(draw_dir, os.path.basename(path)),
                                task.draw(image, result, **kw))
    finally:
        if out:
            out.close()
    if args.output_dir and hasattr(task, "results"):
        import json
        with open(os.path.join(args.output_dir, "bbox.json"), "w") as f:
            json.dump(coco, f)
        print(f"drawn images and bbox.json in {args.output_dir}", file=sys.stderr)
    if res_path:
        print(f"results in {res_path}" + (f", drawn boxes in {draw_dir}" if draw_dir else ""),
              file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
