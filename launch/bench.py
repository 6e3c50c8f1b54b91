"""Benchmarks. Every performance figure in the README comes from here.

    python launch/bench.py converge -c configs/rec/quickstart_crnn.yml [--json PATH]
        train the config to the end, then evaluate the final weights: wall time and accuracy
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxocr import cli  # noqa: E402


def machine() -> dict:
    import jax
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "backend": jax.default_backend(), "devices": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__}


def converge(cfg) -> dict:
    from jaxocr.training.loop import Components, evaluate, train
    from jaxocr.training.step import make_eval_step
    t0 = time.perf_counter()
    result = train(cfg)
    train_s = time.perf_counter() - t0
    comp = Components(cfg)
    loader = comp.eval_loader()
    metrics = evaluate(comp, result["state"], make_eval_step(comp.model, comp.mesh, comp.dtype),
                       loader)
    return {"train_s": round(train_s, 1), "steps": result["global_step"],
            "images": result["global_step"] * cfg["Train"]["loader"]["batch_size_per_card"]
            * comp.mesh.size,
            "final_acc": metrics["acc"], "final_norm_edit_dis": metrics["norm_edit_dis"],
            "best": result["best"], "machine": machine()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("converge", parents=[cli.parser(__doc__)], add_help=False)
    conv.add_argument("--json", default=None)
    args = p.parse_args()
    cli.set_cpu_devices(args.cpu_devices)
    cfg = cli.load(args)
    out = converge(cfg)
    for k, v in out.items():
        print(f"{k}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)


if __name__ == "__main__":
    cli.run(main)
