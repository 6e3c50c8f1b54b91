"""The GPU check (GPU.md): every shipped model config's `bench.py train` on the local
accelerator, in float32 and in bfloat16 (`Global.use_amp`; PaddleDetection's `amp`), at the
config's own per-card batch, with the real input pipeline fed by the built-in synthetic sources
(text lines, 1280 x 720 text scenes, 640-px shapes: PP-YOLOE at one input
size, 640, where training draws 320..768). One JSON per run in --out, one table
(table.md) at the end. Runs in one process, the seeds' models first, and starts no run once
--budget_s has passed; runs whose step waits for data are measured again with more loader
workers when time is left.

    python launch/gpu_check.py --out DIR [--steps 40] [--budget_s 420] [--only NAME,...]
        [--cjk_font PATH] [--batch N]
"""
import argparse
import gc
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench  # noqa: E402
from jaxocr import cli  # noqa: E402

REC = ["Train.dataset.name=SynthTextLine", "Eval.dataset.name=SynthTextLine",
       "Train.dataset.num_samples=200000", "Eval.dataset.num_samples=1000"]
DET = ["Train.dataset.name=SynthTextScene", "Eval.dataset.name=SynthTextScene",
       "Train.dataset.image_size=[720,1280]", "Eval.dataset.image_size=[720,1280]",
       "Train.dataset.num_samples=20000", "Eval.dataset.num_samples=100",
       "Global.pretrained_model="]
YOLO = ["TrainDataset.name=SynthShapes", "EvalDataset.name=SynthShapes",
        "TrainDataset.image_size=640", "EvalDataset.image_size=640",
        "TrainDataset.num_samples=20000", "EvalDataset.num_samples=100", "pretrain_weights=",
        "TrainDataset.num_classes=8", "EvalDataset.num_classes=8",  # SynthShapes draws 8 at most
        # one input size (the step is compiled once; training compiles each of the 11 sizes)
        "TrainReader.batch_transforms.0.BatchRandomResize.target_size=[640]"]

# (name, config, the family's overrides), the seeds' models first
SUITE = [
    ("rec_chinese_lite", "configs/rec/ch_ppocr_v2.0/rec_chinese_lite_train_v2.0.yml", REC),
    ("ppyoloe_crn_s", "configs/ppyoloe/ppyoloe_crn_s_300e_coco.yml", YOLO),
    ("rec_svtrnet", "configs/rec/rec_svtrnet.yml", REC),
    ("ch_PP-OCRv3_rec_distillation", "configs/rec/PP-OCRv3/ch_PP-OCRv3_rec_distillation.yml", REC),
    ("det_mv3_db", "configs/det/det_mv3_db.yml", DET),
    ("rec_mv3_none_bilstm_ctc", "configs/rec/rec_mv3_none_bilstm_ctc.yml", REC),
    ("ch_PP-OCRv3_det_student", "configs/det/ch_PP-OCRv3/ch_PP-OCRv3_det_student.yml", DET),
    ("ch_PP-OCRv3_rec", "configs/rec/PP-OCRv3/ch_PP-OCRv3_rec.yml", REC),
    ("en_PP-OCRv3_rec", "configs/rec/PP-OCRv3/en_PP-OCRv3_rec.yml", REC),
    ("rec_svtrnet_ch", "configs/rec/rec_svtrnet_ch.yml", REC),
    ("ch_PP-OCRv2_rec", "configs/rec/ch_PP-OCRv2/ch_PP-OCRv2_rec.yml", REC),
    ("rec_r34_vd_none_bilstm_ctc", "configs/rec/rec_r34_vd_none_bilstm_ctc.yml", REC),
    ("rec_mv3_tps_bilstm_ctc", "configs/rec/rec_mv3_tps_bilstm_ctc.yml", REC),
    ("rec_mv3_none_none_ctc", "configs/rec/rec_mv3_none_none_ctc.yml", REC),
]
PRECISIONS = ("fp32", "bf16")
DATA_BOUND = 0.10  # data-wait fraction above which a run is measured again with more workers


def overrides(name: str, family: list[str], precision: str, cjk_font: str | None,
              workers: int | None, batch: int | None) -> list[str]:
    out = list(family)
    ppdet = family is YOLO
    if batch:
        out.append(f"TrainReader.batch_size={batch}" if ppdet
                   else f"Train.loader.batch_size_per_card={batch}")
    if precision == "bf16":
        out.append("amp=true" if ppdet else "Global.use_amp=true")
    if workers:
        out.append(f"worker_num={workers}" if ppdet else f"Train.loader.num_workers={workers}")
    if cjk_font and family is REC and ("chinese" in name or name.startswith("ch_")
                                       or name.endswith("_ch")):
        out.append(f"Train.dataset.fonts=[{cjk_font}]")
    return out


def run_one(path: str, opts: list[str], steps: int, warmup: int) -> dict:
    from jaxocr.config import load_config
    cfg = load_config(path, opts)
    loader_cfg = cfg["Train"]["loader"]
    out = bench.train_speed(cfg, steps, warmup)
    out["num_workers"] = int(loader_cfg.get("num_workers", 0))
    out["batch_per_card"] = int(loader_cfg["batch_size_per_card"])
    return out


def row(r: dict) -> str:
    if "error" in r:
        return f"| {r['name']} | {r['precision']} | | error: {r['error'][:90]} |||||||"
    ms = lambda s: f"{1000 * s:.1f}"
    tflops = f"{r['gflop_per_s'] / 1000:.1f}" if r.get("gflop_per_s") else "-"
    mem = f"{r['step_device_mb'] / 1024:.1f}" if r.get("step_device_mb") else "-"
    return (f"| {r['name']} | {r['precision']} | {r['batch_per_card']} | {r['num_workers']} | "
            f"**{r['images_per_s_per_device']:.0f}** | {ms(r['step_median_s'])} | "
            f"{ms(r['data_wait_s'])} / {ms(r['compute_s'])} | {100 * r['data_wait_frac']:.0f} % | "
            f"{tflops} | {mem} | {r['compile_s']:.0f} |")


HEADER = ("| model | precision | batch / card | loader workers | images/s / GPU | median step ms | "
          "data wait / compute ms | data wait | TFLOP/s | step memory GiB | compile s |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def environment() -> dict:
    import subprocess

    import jax
    import jaxlib
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True) \
        if any(os.access(os.path.join(d, "nvidia-smi"), os.X_OK)
               for d in os.environ.get("PATH", "").split(os.pathsep)) else None
    return {"nvidia_smi": smi.stdout.strip() if smi else None, "devices": [str(d) for d in jax.devices()],
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "cpu_count": os.cpu_count(),
            "cpu": bench.cpu_model(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "date": time.strftime("%Y-%m-%d")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="folder for one JSON per run and table.md")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--budget_s", type=float, default=420.0,
                   help="start no run after this many seconds")
    p.add_argument("--only", default=None, help="comma-separated model names (default: all)")
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--cjk_font", default=None,
                   help="a font with Chinese glyphs for the Chinese dictionaries' text lines")
    p.add_argument("--more_workers", type=int, default=None,
                   help="loader workers for the data-bound reruns (default: cores - 2)")
    p.add_argument("--batch", type=int, default=None,
                   help="per-card batch for every run (default: each config's own)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t_start = time.monotonic()
    env = environment()
    print(json.dumps(env, indent=1), flush=True)
    with open(os.path.join(args.out, "environment.json"), "w") as f:
        json.dump(env, f, indent=1)
    only = set(args.only.split(",")) if args.only else None
    plan = [(name, path, fam, prec, None) for name, path, fam in SUITE
            if only is None or name in only for prec in args.precisions.split(",")]
    more = args.more_workers or max(1, (os.cpu_count() or 4) - 2)
    results = []
    while plan:
        name, path, family, precision, workers = plan.pop(0)
        tag = f"{name}.{precision}" + (f".w{workers}" if workers else "")
        if time.monotonic() - t_start > args.budget_s:
            print(f"skipped (budget): {tag}", flush=True)
            continue
        r = {"name": name + (f" (w{workers})" if workers else ""), "precision": precision,
             "config": path}
        t0 = time.monotonic()
        try:
            r.update(run_one(path, overrides(name, family, precision, args.cjk_font, workers,
                                             args.batch), args.steps, args.warmup))
        except Exception as e:  # one broken run must not cost the others
            r["error"] = f"{type(e).__name__}: {e}".replace("\n", " ")
            r["traceback"] = traceback.format_exc()
            print(r["traceback"], flush=True)
        r["wall_s"] = time.monotonic() - t0
        results.append(r)
        with open(os.path.join(args.out, tag + ".json"), "w") as f:
            json.dump(r, f, indent=1, default=str)
        print(row(r), f"({r['wall_s']:.0f} s)", flush=True)
        if "error" not in r and not workers and r["data_wait_frac"] > DATA_BOUND \
                and r["num_workers"] < more:
            plan.append((name, path, family, precision, more))
        gc.collect()
        import jax
        jax.clear_caches()
    table = "\n".join([HEADER] + [row(r) for r in results])
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table)
    print(f"total {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    cli.run(main)
