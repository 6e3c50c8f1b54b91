"""Process group and mesh: which devices train together, and how a process sees the job."""
from __future__ import annotations

import logging
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

log = logging.getLogger("jaxocr")

AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D ('data',) mesh, devices grouped by process so each process owns a contiguous
    block of the global batch (the rows its local batch fills)."""
    devices = sorted(devices or jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (AXIS,))


def is_main() -> bool:
    return jax.process_index() == 0


def local_rows(array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in global order."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def sum_across_processes(values: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(values)
    return np.asarray(multihost_utils.process_allgather(np.asarray(values))).sum(axis=0)


class Preemption:
    """SIGTERM -> save and exit at a step every process agrees on.

    With several processes JAX's preemption service catches SIGTERM and
    `reached_preemption_sync_point` names the common step; alone, a plain signal handler does.
    """

    def __init__(self):
        self.requested = False
        self.multi = jax.process_count() > 1
        if not self.multi:
            try:
                signal.signal(signal.SIGTERM, self._on_signal)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                pass

    def _on_signal(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def reached(self, step: int) -> bool:
        if self.multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested
