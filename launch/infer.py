"""Run a trained model on an image or a directory of images; prints one line per image,
`path<TAB>` and the task's result (rec: `text<TAB>score`).

    python launch/infer.py -c CONFIG -o Global.checkpoints=DIR Global.infer_img=FILE_OR_DIR
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxocr import cli  # noqa: E402


def main():
    args = cli.parser(__doc__).parse_args()
    cli.set_cpu_devices(args.cpu_devices)
    cfg = cli.load(args)
    from jaxocr.infer import predict
    from jaxocr.tasks import build_task
    task = build_task(cfg)
    for path, result in predict(cfg):
        print(f"{path}\t{task.format(result)}", flush=True)


if __name__ == "__main__":
    cli.run(main)
