"""Benchmarks. Every performance figure in the README comes from here.

    python launch/bench.py train -c CFG [--steps 20 --warmup 3] [-o ...] [--json PATH]
        steady-state training speed: images/s, data wait / compute / host split, compile time,
        GFLOP/s; --profile DIR adds a trace and the time per part of the model
    python launch/bench.py data -c CFG [--workers 1,2] [--batches 20] [--png N] [--no_augment]
        the input pipeline alone: images/s per worker count, per core, scaling; --png N reads
        N PNG files through a label file (decode + resize with --no_augment)
    python launch/bench.py converge -c configs/rec/quickstart_crnn.yml [--json PATH]
        train the config to the end, then evaluate the final weights: wall time and accuracy
    python launch/bench.py scaling -c CFG [--processes 1,2] [--project 32,100 [--step_s S]]
        weak scaling over local processes (each pinned to its own cores): images/s, efficiency,
        lockstep-only and independent baselines, all-reduce time; then projected to N workers
        over a GBPS Gb/s interconnect (ring all-reduce)
    python launch/bench.py ocr -c DET_CFG -o Global.checkpoints=D --rec_config REC_CFG
            --rec_opt Global.checkpoints=R [--scenes 100]
        the det -> rec system on synthetic scenes in the recogniser's dictionary: words found
        and read exactly (word recall / precision), seconds per image
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


def train_speed(cfg, steps: int, warmup: int, sync_grads: bool = True,
                allreduce_probe: bool = False, profile_dir: str | None = None) -> dict:
    import resource

    import numpy as np

    import jax
    from jaxocr.profile import all_reduce_counts
    from jaxocr.config import config_hash
    from jaxocr.distributed import check_same_config
    from jaxocr.training.loop import Components
    # as train() does: the first collective (which sets up gloo, waiting 30 s at most for the
    # peers) runs while the processes are still in step, before their builds drift apart
    check_same_config(config_hash(cfg))
    comp = Components(cfg)
    loader = comp.loader("Train")
    state, tx, _ = comp.build_state(comp.image_shape or loader.load(0, 0)["image"].shape,
                                    loader.steps_per_epoch)
    grad_bytes = all_reduce_bytes(state.params, state.batch_stats)
    state = jax.device_put(state, comp.repl)
    step = comp.train_step(tx, sync_grads)
    batches = _forever(loader, comp, int(cfg["Global"]["prefetch"]))
    device, _ = next(batches)
    t0 = time.perf_counter()
    compiled = step.lower(state, device).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, out = compiled(state, next(batches)[0])
    jax.block_until_ready(state)
    wait = compute = 0.0
    step_times = []
    t_start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        device, _ = next(batches)
        t1 = time.perf_counter()
        state, out = compiled(state, device)
        jax.block_until_ready(out["loss"])  # per-step sync: the bench measures, training doesn't
        t2 = time.perf_counter()
        wait, compute = wait + t1 - t0, compute + t2 - t1
        step_times.append(t2 - t0)
    total = time.perf_counter() - t_start
    images = steps * loader.global_batch
    flops = _flops(compiled)
    parts = None
    if profile_dir:
        from jaxocr.profile import breakdown
        traced = min(steps, 3)
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            for _ in range(traced):
                state, out = compiled(state, next(batches)[0])
                jax.block_until_ready(out["loss"])
        parts = breakdown(profile_dir, compiled.as_text(), traced)
        for part, ms in parts.items():
            print(f"  {part:<45} {ms:9.1f} ms/step")
    loader.close()
    mem = jax.local_devices()[0].memory_stats() or {}
    return {"images_per_s": images / total, "images_per_s_per_device": images / total / comp.mesh.size,
            "step_s": total / steps, "step_median_s": float(np.median(step_times)),
            "data_wait_s": wait / steps, "compute_s": compute / steps,
            "host_overhead_s": (total - wait - compute) / steps, "data_wait_frac": wait / total,
            "compile_s": compile_s, "global_batch": loader.global_batch, "devices": comp.mesh.size,
            **all_reduce_counts(compiled.as_text()),
            "gflop_per_step": flops / 1e9 if flops else None,
            "gflop_per_s": flops / 1e9 / (compute / steps) if flops else None,
            "profile_ms_per_step": parts,
            "local_devices": jax.local_device_count(), "processes": jax.process_count(),
            "grad_bytes": grad_bytes,
            "allreduce_probe_s": allreduce_time(comp.mesh, grad_bytes) if allreduce_probe else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_device_mb": mem.get("peak_bytes_in_use", 0) / 2**20 or None,
            "step_temp_mb": _temp_mb(compiled),
            "step_device_mb": _footprint_mb(compiled),
            "machine": machine()}


def _temp_mb(compiled) -> float | None:
    """Scratch memory XLA allocates for each call of the step."""
    try:
        return compiled.memory_analysis().temp_size_in_bytes / 2**20
    except Exception:  # not every backend implements it
        return None


def _footprint_mb(compiled) -> float | None:
    """Device memory one call of the step holds: its arguments, outputs (less those that reuse
    a donated argument's buffer) and scratch."""
    try:
        m = compiled.memory_analysis()
        used = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                + m.temp_size_in_bytes)
    except Exception:  # not every backend implements it
        return None
    return used / 2**20


def _flops(compiled) -> float | None:
    """XLA's count of floating-point operations in one step (all local devices)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", 0)) or None


def allreduce_time(mesh, nbytes: int, repeats: int = 20) -> float:
    """Median time of one compiled all-reduce of `nbytes` over the mesh, outside any step."""
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P
    from jaxocr.distributed import AXIS
    from jaxocr.training.step import batch_sharding, shard_map
    n = nbytes // 4
    local = np.ones((jax.local_device_count() * n,), np.float32)
    x = jax.make_array_from_process_local_data(batch_sharding(mesh), local)
    reduce = jax.jit(shard_map(lambda v: jax.lax.pmean(v, AXIS), mesh, in_specs=P(AXIS),
                               out_specs=P(AXIS)))
    jax.block_until_ready(reduce(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(reduce(x))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _forever(loader, comp, prefetch):
    epoch = 0
    while True:
        it = loader.batches(epoch, 0, comp.batch_sharding, prefetch)
        yield from it
        epoch += 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def png_dataset(cfg, n: int, directory: str | None) -> None:
    """Points Train.dataset at `n` PNG files (rendered once into `directory`, reused when it
    already holds them): a SimpleDataSet of text lines for a recogniser or of ICDAR 2015-sized
    scenes (1280 x 720) with PaddleOCR det labels for a detector; a COCODataSet of 640 x 640
    synthetic shapes for PP-YOLOE."""
    import tempfile
    kind = cfg["Architecture"].get("model_type", "rec")
    det = kind == "det"
    directory = directory or os.path.join(tempfile.gettempdir(), f"jaxocr_bench_{kind}_png_{n}")
    if kind == "yolo":
        anno = os.path.join(directory, "instances.json")
        if not os.path.exists(anno):
            from jaxocr.data.synth_shapes import write_coco
            write_coco(directory, n, seed=0, image_size=640)
        ds = cfg["Train"]["dataset"]
        cfg["Train"]["dataset"] = {**{k: v for k, v in ds.items() if k != "num_classes"},
                                   "name": "COCODataSet", "dataset_dir": directory,
                                   "image_dir": "images", "anno_path": "instances.json"}
        return
    label_file = os.path.join(directory, "label.txt")
    if not os.path.exists(label_file):
        if det:
            from jaxocr.data.det_fixtures import write_det_label_file_dataset
            write_det_label_file_dataset(directory, n, seed=0, image_size=(720, 1280))
        else:
            from jaxocr.data.charset import CharacterDict
            from jaxocr.data.fixtures import write_label_file_dataset
            chars = set(CharacterDict.from_config(cfg["Global"]).characters)
            text = "".join(c for c in "0123456789abcdefghijklmnopqrstuvwxyz" if c in chars)
            write_label_file_dataset(directory, n, text or "0123456789", seed=0)
    ds = cfg["Train"]["dataset"]
    cfg["Train"]["dataset"] = {"name": "SimpleDataSet", "data_dir": directory,
                               "label_file_list": [label_file],
                               "transforms": ds.get("transforms")}


def data_speed(cfg, workers: list[int], batches: int, png: int = 0, png_dir: str | None = None,
               no_augment: bool = False) -> dict:
    """images/s of the host pipeline (decode, transforms, batching) per worker count, per core
    used (min(workers, usable cores)) and relative to the first worker count."""
    from jaxocr.data.pipeline import usable_cores
    from jaxocr.distributed import data_mesh
    from jaxocr.training.loop import Components
    if png:
        png_dataset(cfg, png, png_dir)
    ops = cfg["Train"]["dataset"].get("transforms") or []
    if no_augment:
        augment = ("RecAug", "IaaAugment")
        ops = [op for op in ops if not (isinstance(op, dict) and set(op) & set(augment))
               and op not in augment]
        cfg["Train"]["dataset"]["transforms"] = ops
    cfg["Global"]["epoch_num"] = 10 ** 6  # the stream never ends within the measurement
    cores = usable_cores()
    out = {"dataset": cfg["Train"]["dataset"]["name"],
           "transforms": [next(iter(op)) if isinstance(op, dict) else op for op in ops]}
    first = None
    comp = Components(cfg, data_mesh())
    for n in workers:
        cfg["Train"]["loader"]["num_workers"] = n
        loader = comp.loader("Train")
        out["worker_type"] = loader.worker_type
        it = loader.host_stream(0)
        for _ in range(2 * max(1, n)):  # start-up (every worker's first batch) is not throughput
            next(it)
        t0 = time.perf_counter()
        count = sum(1 for _, _ in zip(range(batches), it))
        rate = count * loader.local_batch / (time.perf_counter() - t0)
        it.close()
        loader.close()
        first = first or rate
        out[f"workers_{n}"] = rate
        out[f"per_core_{n}"] = rate / max(1, min(n, cores))
        out[f"scaling_{n}"] = rate / first
        print(f"workers {n} ({loader.worker_type}): {rate:,.0f} images/s, "
              f"{out[f'per_core_{n}']:,.0f} per core, x{rate / first:.2f}", flush=True)
    out["usable_cores"] = cores
    out["cpu_model"] = cpu_model()
    out["machine"] = machine()
    return out


def converge(cfg) -> dict:
    from jaxocr.training.loop import Components, evaluate, train
    t0 = time.perf_counter()
    result = train(cfg)
    train_s = time.perf_counter() - t0
    comp = Components(cfg)
    loader = comp.eval_loader()
    metrics = evaluate(comp, comp.eval_view(result["state"]), comp.eval_step(), loader)
    return {"train_s": round(train_s, 1), "steps": result["global_step"],
            "images": result["global_step"] * cfg["Train"]["loader"]["batch_size_per_card"]
            * comp.mesh.size,
            "final": metrics, "main_indicator": comp.task.main_indicator,
            "best": result["best"], "machine": machine()}


def ocr(args) -> dict:
    """The det -> rec system on synthetic scenes drawn in the recogniser's dictionary: word
    recall (ground-truth words found and read exactly) and precision, the same for the boxes
    alone (IoU >= 0.5, whatever the text), seconds per image."""
    import json as json_

    import numpy as np
    from jaxocr.config import load_config, parse_overrides
    from jaxocr.data.synth_scenes import SynthTextScene
    from jaxocr.system import TextSystem, end_to_end_counts
    det_cfg = load_config(args.config, parse_overrides(args.opt))
    rec_cfg = load_config(args.rec_config, parse_overrides(args.rec_opt))
    system = TextSystem.from_configs(det_cfg, rec_cfg, drop_score=args.drop_score)
    charset = system.recognizer.task.charset
    chars = "".join(c for c in charset.characters if len(c) == 1 and not c.isspace())
    scene = (det_cfg["Eval"]["dataset"].get("image_size") or [640, 640])
    scenes = SynthTextScene(args.scenes, seed=args.seed, image_size=scene, charset=chars,
                            dont_care_prob=0.0)
    fold = str.lower if not any(c.isupper() for c in chars) else (lambda t: t)
    totals = np.zeros(4, np.int64)
    system(scenes.load(0)["image"])  # compile both models first
    t0 = time.perf_counter()
    for i in range(args.scenes):
        sample = scenes.load(i)
        totals += end_to_end_counts(system(sample["image"]), json_.loads(sample["label"]),
                                    normalize=fold)
    elapsed = time.perf_counter() - t0
    right, words, results, found = (int(v) for v in totals)
    return {"scenes": args.scenes, "words": words, "read_right": right,
            "word_recall": right / max(words, 1), "word_precision": right / max(results, 1),
            "box_recall": found / max(words, 1), "box_precision": found / max(results, 1),
            "s_per_image": elapsed / args.scenes, "machine": machine()}


def scaling(args, cfg) -> dict:
    from jaxocr import scaling as sc
    out = {}
    processes = [int(n) for n in args.processes.split(",") if n.strip()]
    if processes:
        gpus = args.gpus.split(",") if args.gpus else None
        out = sc.measure(args.config, args.opt, processes, args.steps, args.warmup,
                         args.cores_per_process, gpus)
        base = out["rows"][0]
        grad_bytes, compute_s = base["grad_bytes"], base["step_s"]
    if args.project:
        hosts, gbps = args.project.split(",")
        if args.step_s:
            compute_s = args.step_s
        elif not processes:
            raise SystemExit("scaling: --project without a measurement needs --step_s")
        if not processes:
            grad_bytes = model_grad_bytes(cfg)
        workers = sorted({n for n in (2 ** k for k in range(1, 11)) if n < int(hosts)}
                         | {int(hosts)})
        out["projection"] = sc.projection_table(compute_s, grad_bytes, workers, float(gbps),
                                                args.latency_us)
        for r in out["projection"]:
            print(f"projected {r['workers']:4d} workers @ {r['gbit_per_s']:g} Gb/s: all-reduce "
                  f"{r['allreduce_s'] * 1e3:7.2f} ms of {r['compute_s'] * 1e3:.1f} ms compute -> "
                  f"efficiency {r['efficiency']:.3f} ({r['efficiency_overlapped']:.3f} overlapped)")
    out["machine"] = machine()
    return out


def model_grad_bytes(cfg) -> int:
    from jaxocr.training.loop import Components
    from jaxocr.training.step import init_variables
    comp = Components(cfg)
    shape = comp.image_shape or comp.loader("Train").load(0, 0)["image"].shape
    variables = init_variables(comp.model, shape, 0)
    return all_reduce_bytes(variables["params"], variables.get("batch_stats", {}))


def all_reduce_bytes(params, batch_stats) -> int:
    """Bytes the step all-reduces: float32 gradients and BN statistics, one buffer."""
    from jax.flatten_util import ravel_pytree
    return ravel_pytree((params, batch_stats))[0].size * 4


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("train", "data", "converge", "scaling", "ocr"):
        sp = sub.add_parser(name, parents=[cli.parser(__doc__)], add_help=False)
        sp.add_argument("--json", default=None, help="also write the results here")
        if name in ("train", "scaling"):
            sp.add_argument("--steps", type=int, default=20)
            sp.add_argument("--warmup", type=int, default=3)
            sp.add_argument("--gpus", default=None, help="local GPU ids, one per process")
        if name == "train":  # set by `scaling` for its worker processes
            for flag in ("--coordinator", "--num_processes", "--process_id"):
                sp.add_argument(flag, default=None, help=argparse.SUPPRESS)
            sp.add_argument("--lockstep_only", action="store_true", help=argparse.SUPPRESS)
            sp.add_argument("--allreduce_probe", action="store_true", help=argparse.SUPPRESS)
            sp.add_argument("--profile", default=None, metavar="DIR",
                            help="also trace 3 steps into DIR (jax.profiler, perfetto) and "
                                 "print where the time goes, per part of the model")
        if name == "data":
            sp.add_argument("--workers", default="1,2")
            sp.add_argument("--batches", type=int, default=20)
            sp.add_argument("--png", type=int, default=0, metavar="N",
                            help="read N PNG files through a SimpleDataSet label file "
                                 "(rendered once into --png_dir) instead of the config's data")
            sp.add_argument("--png_dir", default=None)
            sp.add_argument("--no_augment", action="store_true",
                            help="drop RecAug / IaaAugment from the transforms")
        if name == "ocr":  # -c / -o: the detector's config and overrides
            sp.add_argument("--rec_config", required=True)
            sp.add_argument("--rec_opt", nargs="+", action="append", default=[],
                            metavar="Key.sub=value")
            sp.add_argument("--scenes", type=int, default=100)
            sp.add_argument("--seed", type=int, default=7)
            sp.add_argument("--drop_score", type=float, default=0.5)
        if name == "scaling":
            sp.add_argument("--processes", default="1,2",
                            help="process counts to measure, e.g. 1,2 ('' to only project)")
            sp.add_argument("--cores_per_process", type=int, default=None,
                            help="CPU cores pinned to each process (default: cores / max N)")
            sp.add_argument("--project", default=None, metavar="WORKERS,GBPS",
                            help="project efficiency up to WORKERS over GBPS Gb/s links")
            sp.add_argument("--step_s", type=float, default=None,
                            help="compute time per step for the projection "
                                 "(default: the measured 1-process step)")
            sp.add_argument("--latency_us", type=float, default=10.0,
                            help="per-hop latency of the interconnect for the projection")
    args = p.parse_args()
    cli.set_cpu_devices(args.cpu_devices)
    if args.command == "ocr":
        out = ocr(args)
        for k, v in out.items():
            print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2, default=str)
        return
    cfg = cli.load(args)
    if args.command == "train":
        from jaxocr import distributed
        cluster = distributed.cluster_from_flags(
            coordinator=args.coordinator, num_processes=args.num_processes,
            process_id=args.process_id, gpus=args.gpus)
        distributed.initialize(cluster)
        out = train_speed(cfg, args.steps, args.warmup, sync_grads=not args.lockstep_only,
                          allreduce_probe=args.allreduce_probe, profile_dir=args.profile)
    elif args.command == "data":
        out = data_speed(cfg, [int(w) for w in args.workers.split(",")], args.batches,
                         png=args.png, png_dir=args.png_dir, no_augment=args.no_augment)
    elif args.command == "scaling":
        out = scaling(args, cfg)
    else:
        out = converge(cfg)
    for k, v in out.items():
        if k in ("rows", "projection", "profile_ms_per_step"):
            continue
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)


if __name__ == "__main__":
    cli.run(main)
