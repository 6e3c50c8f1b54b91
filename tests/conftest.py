import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tests build the same programs many times (train, stop, resume; every worker process of every
# multi-process test): reuse compilations, here and in the processes the tests start.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The tests run a few steps of each program, so compile time is nearly all their time: without
# LLVM's optimisation passes a cold compile of the tiny CRNN's train() takes half as long.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (reads the settings above)

# Four simulated CPU devices for the data-parallel tests; must be set before any backend use.
jax.config.update("jax_num_cpu_devices", 4)

TINY = [  # the real CRNN code at its smallest scale, few samples: fast on 2 cores
    "Architecture.Backbone.model_name=small", "Architecture.Backbone.scale=0.35",
    "Architecture.Backbone.small_stride=[1,2,2,2]", "Architecture.Neck.hidden_size=48",
    "Train.dataset.num_samples=64", "Train.loader.batch_size_per_card=2",
    "Eval.dataset.num_samples=10", "Eval.loader.batch_size_per_card=2",
    "Global.print_batch_step=2", "Global.eval_batch_step=[0,1000]", "Global.use_tensorboard=false",
    "Train.loader.num_workers=1", "Eval.loader.num_workers=1",
]
QUICKSTART = os.path.join(ROOT, "configs/rec/quickstart_crnn.yml")


def tiny_config(save_dir, *overrides):
    from jaxocr.config import load_config
    return load_config(QUICKSTART, TINY + [f"Global.save_model_dir={save_dir}", *overrides])


QUICKSTART_DB = os.path.join(ROOT, "configs/det/quickstart_db.yml")
DET_MV3_DB = os.path.join(ROOT, "configs/det/det_mv3_db.yml")


def det_config_file(path, source=QUICKSTART_DB, size=64, crop=None, **dataset):
    """A copy of a det config at toy scale (the real model code): synthetic scenes of `size` px,
    `crop` px train crops (default `size`), eval resized to `size`, few words. The transforms are
    a list, which `-o` cannot reach, hence a file. Returns its path."""
    import yaml
    with open(source) as f:
        cfg = yaml.safe_load(f)
    crop = crop or size
    scene = {"name": "SynthTextScene", "image_size": [size, size], "words_per_image": [1, 3],
             "font_size": [10, 24], **dataset}
    for mode, n in (("Train", 16), ("Eval", 6)):
        ds = cfg[mode]["dataset"]
        for k in ("data_dir", "label_file_list", "ratio_list"):
            ds.pop(k, None)
        ds.update({"num_samples": n, **scene})
        for op in ds["transforms"]:
            if "EastRandomCropData" in op:
                op["EastRandomCropData"]["size"] = [crop, crop]
            if "DetResizeForTest" in op:
                op["DetResizeForTest"] = {"image_shape": [size, size]}
        cfg[mode]["loader"].update(batch_size_per_card=2, num_workers=1)
    cfg["Global"].update(print_batch_step=1, use_tensorboard=False, pretrained_model=None,
                         eval_batch_step=[0, 1000])
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return str(path)


QUICKSTART_YOLO = os.path.join(ROOT, "configs/ppyoloe/quickstart_ppyoloe_s.yml")
PPYOLOE_S = os.path.join(ROOT, "configs/ppyoloe/ppyoloe_crn_s_300e_coco.yml")


def yolo_overrides(save_dir, size=64, width=0.25, epochs=2):
    """The quick-start PP-YOLOE-s (the real model code, a quarter of its width) on a few
    synthetic `size`-px images, one input size, ATSS for the first epoch and TAL after."""
    return [f"save_dir={save_dir}", f"width_mult={width}", f"epoch={epochs}",
            "TrainDataset.num_samples=8", "EvalDataset.num_samples=6",
            f"TrainDataset.image_size={size}", f"EvalDataset.image_size={size}",
            "TrainReader.batch_size=2", "EvalReader.batch_size=2", "worker_num=1",
            f"TrainReader.batch_transforms.0.BatchRandomResize.target_size=[{size}]",
            f"EvalReader.sample_transforms.1.Resize.target_size=[{size},{size}]",
            "PPYOLOEHead.static_assigner_epoch=1", "snapshot_epoch=1", "log_iter=1"]


def run_multihost(args, procs: int, log_dir, timeout: int = 1200):
    """`launch/multihost.py ARGS` on two CPU devices: one process holding both, or `procs`
    processes of one device each (their logs in `log_dir`). Asserts it succeeded."""
    import subprocess
    import sys
    cmd = [sys.executable, "launch/multihost.py", *args]
    if procs > 1:
        cmd += ["--nproc_per_host", str(procs), "--cpu_devices_per_process", "1",
                "--log_dir", str(log_dir), "--shutdown_timeout", "60"]
    else:
        cmd += ["--cpu_devices", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r
