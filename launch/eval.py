"""Evaluate a checkpoint on the config's Eval set; prints PaddleOCR-style `key: value` lines.

    python launch/eval.py -c CONFIG -o Global.checkpoints=DIR [--json PATH]
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxocr import cli  # noqa: E402


def main():
    p = cli.parser(__doc__)
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    args = p.parse_args()
    cli.set_cpu_devices(args.cpu_devices)
    cfg = cli.load(args)
    from jaxocr.training.loop import Components, evaluate
    comp = Components(cfg)
    loader = comp.eval_loader()
    state, meta = comp.restore_for_inference(loader.load(0, 0)["image"].shape)
    metrics = evaluate(comp, state, comp.eval_step(), loader)
    for k, v in metrics.items():
        print(f"{k}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**metrics, "global_step": meta["global_step"]}, f, indent=2)


if __name__ == "__main__":
    cli.run(main)
