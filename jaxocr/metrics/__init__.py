from jaxocr.metrics.det_metric import DetMetric
from jaxocr.metrics.rec_metric import RecMetric

METRICS = {"RecMetric": RecMetric, "DetMetric": DetMetric}


def build_metric(metric_cfg: dict | None):
    cfg = dict(metric_cfg or {"name": "RecMetric"})
    name = cfg.pop("name", "RecMetric")
    if name == "DistillationMetric":  # the base metric of the evaluated member (see RecTask)
        cfg.pop("key", None)
        name = cfg.pop("base_metric_name", "RecMetric")
    if name not in METRICS:
        raise ValueError(f"Metric.name: unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name](**cfg)


__all__ = ["DetMetric", "RecMetric", "build_metric"]
