"""The train step compiled ahead of use, for every batch shape and training phase it meets.

Multi-scale training (PP-YOLOE's BatchRandomResize, 320-768 px) feeds the step a handful of
shapes, and a task with phases (ATSS, then TAL) has one program per phase. Compiling each when
its first batch arrives stalls training once per shape, at random points in the first
epochs; here every shape of a phase is submitted to background threads when the phase starts
(XLA compiles with the GIL released), the step waits only for the program it needs, and JAX's
persistent compilation cache makes a restart's compiles cache reads. With several processes,
each program's first run waits until every process has it compiled: their compile times may
differ by more than the 30 s gloo waits for a peer when it sets up the step's all-reduce.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

import jax

from jaxocr.distributed import arrive_together

log = logging.getLogger("jaxocr")


def shape_key(batch: dict) -> tuple:
    """What tells one compiled program from another: each key's shape and dtype."""
    return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))


def abstract(tree):
    """`tree` as ShapeDtypeStructs with its arrays' shardings (no buffers are held)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=a.sharding, weak_type=getattr(a, "weak_type", False)), tree)


class CompiledSteps:
    """`steps(phase, state, batch)` runs the train step of `phase` compiled for `batch`'s shape.

    `make_step(phase)` returns the jitted step of a phase; `batch_specs` are the batch shapes
    the loader makes (`Loader.batch_specs`). A phase's programs are all submitted the first
    time it is asked for; a shape outside `batch_specs` is compiled when it comes.
    """

    def __init__(self, make_step, state, batch_specs: list[dict], threads: int | None = None):
        self._make_step = make_step
        self._state = abstract(state)
        self._specs = list(batch_specs)
        threads = threads or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="compile-ahead")
        self._steps: dict = {}       # phase -> jitted step
        self._programs: dict = {}    # (phase, shape_key) -> Future of a Compiled
        self._ran: set = set()       # the programs run at least once

    def prepare(self, phase) -> None:
        """Submit every batch shape of `phase` (once)."""
        if phase in self._steps:
            return
        self._steps[phase] = self._make_step(phase)
        for spec in self._specs:
            self._submit(phase, spec)
        if len(self._specs) > 1:
            log.info("compiling the train step ahead for %d batch shapes%s",
                     len(self._specs), "" if phase is None else f" (phase {phase})")

    def _submit(self, phase, spec) -> Future:
        key = (phase, shape_key(spec))
        if key not in self._programs:
            self._programs[key] = self._pool.submit(self._compile, phase, spec)
        return self._programs[key]

    def _compile(self, phase, spec):
        t0 = time.perf_counter()
        compiled = self._steps[phase].lower(self._state, spec).compile()
        log.debug("compiled %s in %.1f s", shape_key(spec), time.perf_counter() - t0)
        return compiled

    def program(self, phase, batch: dict):
        """The compiled step for `batch` in `phase` (waits for its compile)."""
        self.prepare(phase)
        key = (phase, shape_key(batch))
        future = self._programs.get(key)
        if future is None:
            future = self._submit(phase, abstract(batch))
        compiled = future.result()
        if key not in self._ran:
            self._ran.add(key)
            arrive_together("the first run of a train step")
        return compiled

    def __call__(self, phase, state, batch):
        return self.program(phase, batch)(state, batch)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
