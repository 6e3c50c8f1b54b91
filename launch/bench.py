"""Benchmarks. Every performance figure in the README comes from here.

    python launch/bench.py train -c CFG [--steps 20 --warmup 3] [-o ...] [--json PATH]
        steady-state training speed: images/s, data wait / compute / host split, compile time
    python launch/bench.py data -c CFG [--workers 1,2] [--batches 20]
        the input pipeline alone, images/s per worker count
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


def train_speed(cfg, steps: int, warmup: int) -> dict:
    import resource

    import jax
    from jaxocr.data.pipeline import Loader
    from jaxocr.losses import build_loss
    from jaxocr.training.loop import Components
    from jaxocr.training.step import make_train_step
    comp = Components(cfg)
    loader = Loader(cfg, "Train", comp.charset, comp.mesh)
    state, tx, _ = comp.build_state(loader.load(0, 0)["image"].shape, loader.steps_per_epoch)
    state = jax.device_put(state, comp.repl)
    step = make_train_step(comp.model, tx, build_loss(cfg.get("Loss")), comp.mesh, comp.dtype)
    batches = _forever(loader, comp, int(cfg["Global"]["prefetch"]))
    device, _ = next(batches)
    t0 = time.perf_counter()
    compiled = step.lower(state, device).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, out = compiled(state, next(batches)[0])
    jax.block_until_ready(state)
    wait = compute = 0.0
    t_start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        device, _ = next(batches)
        t1 = time.perf_counter()
        state, out = compiled(state, device)
        jax.block_until_ready(out["loss"])  # per-step sync: the bench measures, training doesn't
        t2 = time.perf_counter()
        wait, compute = wait + t1 - t0, compute + t2 - t1
    total = time.perf_counter() - t_start
    images = steps * loader.global_batch
    mem = jax.local_devices()[0].memory_stats() or {}
    return {"images_per_s": images / total, "images_per_s_per_device": images / total / comp.mesh.size,
            "step_s": total / steps, "data_wait_s": wait / steps, "compute_s": compute / steps,
            "host_overhead_s": (total - wait - compute) / steps, "data_wait_frac": wait / total,
            "compile_s": compile_s, "global_batch": loader.global_batch, "devices": comp.mesh.size,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_device_mb": mem.get("peak_bytes_in_use", 0) / 2**20 or None,
            "machine": machine()}


def _forever(loader, comp, prefetch):
    epoch = 0
    while True:
        it = loader.batches(epoch, 0, comp.batch_sharding, prefetch)
        yield from it
        epoch += 1


def data_speed(cfg, workers: list[int], batches: int) -> dict:
    import jax
    from jaxocr.data.charset import CharacterDict
    from jaxocr.data.pipeline import Loader
    from jaxocr.distributed import data_mesh
    out = {}
    for n in workers:
        cfg["Train"]["loader"]["num_workers"] = n
        loader = Loader(cfg, "Train", CharacterDict.from_config(cfg["Global"]), data_mesh())
        it = loader.host_batches(0)
        next(it)  # start-up (worker processes, first decode) is not throughput
        t0 = time.perf_counter()
        count = sum(1 for _, _ in zip(range(batches), it))
        out[f"workers_{n}"] = count * loader.local_batch / (time.perf_counter() - t0)
    out["machine"] = machine()
    return out


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
    for name in ("train", "data", "converge"):
        sp = sub.add_parser(name, parents=[cli.parser(__doc__)], add_help=False)
        sp.add_argument("--json", default=None, help="also write the results here")
        if name == "train":
            sp.add_argument("--steps", type=int, default=20)
            sp.add_argument("--warmup", type=int, default=3)
        if name == "data":
            sp.add_argument("--workers", default="1,2")
            sp.add_argument("--batches", type=int, default=20)
    args = p.parse_args()
    cli.set_cpu_devices(args.cpu_devices)
    cfg = cli.load(args)
    if args.command == "train":
        out = train_speed(cfg, args.steps, args.warmup)
    elif args.command == "data":
        out = data_speed(cfg, [int(w) for w in args.workers.split(",")], args.batches)
    else:
        out = converge(cfg)
    for k, v in out.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)


if __name__ == "__main__":
    cli.run(main)
