"""Run a trained model on an image or a directory of images; prints one line per image,
`path<TAB>` and the task's result (rec: `text<TAB>score`; det: PaddleOCR's
`[{"points": [[x, y], ...]}, ...]`).

    python launch/infer.py -c CONFIG -o Global.checkpoints=DIR Global.infer_img=FILE_OR_DIR

With `Global.save_res_path` the lines also go to that file (PaddleOCR's det_results.txt /
predicts); a detector also writes each image with its boxes drawn to `det_results/` beside it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxocr import cli  # noqa: E402


def main():
    args = cli.parser(__doc__).parse_args()
    cli.set_cpu_devices(args.cpu_devices)
    cfg = cli.load(args)
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
    try:
        for path, result in predict(cfg):
            line = f"{path}\t{task.format(result)}"
            print(line, flush=True)
            if out:
                out.write(line + "\n")
            if draw_dir:
                image = cv2.imread(path)
                if image is not None:
                    cv2.imwrite(os.path.join(draw_dir, os.path.basename(path)),
                                task.draw(image, result))
    finally:
        if out:
            out.close()
    if res_path:
        print(f"results in {res_path}" + (f", drawn boxes in {draw_dir}" if draw_dir else ""),
              file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
