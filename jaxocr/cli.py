"""Shared command-line plumbing for launch/*.py: `-c CONFIG -o Key.sub=value ...`."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from jaxocr import host_memory
from jaxocr.config import ConfigError, load_config, parse_overrides

log = logging.getLogger("jaxocr")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("-c", "--config", required=True,
                   help="a PaddleOCR or PaddleDetection YAML config")
    p.add_argument("-o", "--opt", nargs="+", action="append", default=[],
                   metavar="Key.sub=value", help="override config values (YAML-parsed)")
    p.add_argument("--eval", action="store_true",
                   help="PaddleDetection configs: evaluate every snapshot_epoch epochs while "
                        "training (tools/train.py --eval); PaddleOCR configs evaluate by "
                        "Global.eval_batch_step")
    p.add_argument("--cpu_devices", type=int, default=None,
                   help="on CPU, simulate this many devices in this process")
    return p


def set_cpu_devices(n: int | None):
    """Must run before JAX touches a backend."""
    if n:
        import jax
        jax.config.update("jax_num_cpu_devices", int(n))


_loaded: list[str] = []  # the config this process loaded, named in a config error's line


def load(args) -> dict:
    _loaded[:] = [args.config]
    return load_config(args.config, parse_overrides(args.opt),
                       eval_in_training=bool(getattr(args, "eval", False)))


def run(main):
    """Run `main()`; bad configs and missing files end with one clear line, not a traceback."""
    host_memory.restart_with_huge_pages()  # before importing JAX, which it would discard
    from jaxocr import job_failure
    from jaxocr.distributed import LaunchError
    from jaxocr.training.checkpoint import CheckpointError, CheckpointSaveError
    from jaxocr.data.sources import DatasetError
    from jaxocr.training.loop import NonFiniteLoss
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] %(name)s %(levelname)s: "
                        "%(message)s", datefmt="%Y/%m/%d %H:%M:%S", force=True)
    log.setLevel(logging.INFO)
    try:
        return main()
    except (ConfigError, FileNotFoundError, LaunchError, CheckpointError,
            CheckpointSaveError, NonFiniteLoss, DatasetError) as e:
        if os.environ.get("JAXOCR_TRACEBACK"):
            raise
        if job_failure.in_job():  # peers may be waiting for this process in a collective
            job_failure.leave(e, code=2)
        where = f"{_loaded[0]}: " if _loaded and isinstance(e, ConfigError) else ""
        print(f"jaxocr: error: {where}{e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if job_failure.in_job():
            job_failure.leave(e)
        raise
