"""One module per `Architecture.model_type`: what differs between model families lives here,
so the training loop, evaluation, inference and the benchmarks name none."""
from __future__ import annotations

from jaxocr.config import ConfigError
from jaxocr.tasks.det import DetTask
from jaxocr.tasks.rec import RecTask
from jaxocr.tasks.yolo import YOLOTask

TASKS = {"rec": RecTask, "det": DetTask, "yolo": YOLOTask}


def build_task(cfg: dict):
    kind = cfg["Architecture"].get("model_type", "rec")
    if kind not in TASKS:
        raise ConfigError(f"Architecture.model_type: {kind!r} is not supported yet; known: "
                          f"{', '.join(TASKS)}")
    return TASKS[kind](cfg)


__all__ = ["TASKS", "build_task"]
