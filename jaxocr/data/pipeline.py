"""Per-process input pipeline: this process's shard, decoded and batched by grain, then one
global `jax.Array` per batch, sharded on 'data' and prefetched to the devices.

Global order: every process computes the same epoch-seeded permutation of the whole dataset.
Global batch s is `perm[s*G:(s+1)*G]`; process p takes rows `[p*L:(p+1)*L]` of it (L = its
local batch), which are exactly the rows its devices hold in the global array. So the global
sample order does not depend on the process count, and the data position is (epoch, samples
into it): a run resumes at the same sample under another process or device count.
Augmentation randomness is seeded by (seed, epoch, sample index), also layout-independent.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time

import cv2
from absl import flags
import grain
import jax
import numpy as np

from jaxocr.data.sources import build_source
from jaxocr.data.transforms import BadSample, build_transforms

log = logging.getLogger("jaxocr")

MAX_SUBSTITUTES = 16
cv2.setNumThreads(1)  # OpenCV threads would compete with XLA for the cores
DEVICE_KEYS = {"Train": ("image", "label", "length"), "Eval": ("image",)}


class Loader:
    def __init__(self, cfg: dict, mode: str, charset, mesh):
        section, g = cfg[mode], cfg["Global"]
        self.mode = mode
        self.seed = int(g["seed"])
        self.source = build_source(section["dataset"], mode.lower(), charset, g, self.seed)
        self.transform = build_transforms(section["dataset"].get("transforms") or [], charset, g)
        loader = section["loader"]
        self.shuffle = bool(loader["shuffle"]) and mode == "Train"
        self.drop_last = bool(loader["drop_last"]) if mode == "Train" else False
        self.num_workers = int(loader["num_workers"])
        self.worker_type = loader.get("worker_type", "thread")
        per_card = int(loader["batch_size_per_card"])
        local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        self.local_batch = per_card * len(local)
        self.global_batch = per_card * mesh.size
        self.process_index = jax.process_index()
        self.process_count = mesh.size // len(local)
        self.num_samples = len(self.source)
        if self.num_samples == 0:
            raise ValueError(f"{mode}.dataset: no usable samples (dropped: {self.source.dropped})")
        if self.drop_last:
            self.steps_per_epoch = self.num_samples // self.global_batch
        else:
            self.steps_per_epoch = math.ceil(self.num_samples / self.global_batch)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{mode}.dataset has {self.num_samples} samples, fewer than one global batch "
                f"({self.global_batch} = batch_size_per_card {per_card} x {mesh.size} devices)")
        if self.source.dropped:
            log.info("%s.dataset: %d samples; labels dropped: %s", mode, self.num_samples,
                     ", ".join(f"{k}={v}" for k, v in self.source.dropped.items()))

    def local_indices(self, epoch: int, start_sample: int = 0) -> np.ndarray:
        """This process's sample indices for the epoch, from the epoch's `start_sample`-th
        sample (in global order) on; -1 marks eval padding."""
        n, g = self.num_samples, self.global_batch
        order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                 else np.arange(n))
        total = self.steps_per_epoch * g
        order = np.concatenate([order, np.full(max(0, total - n), -1)])[:total]
        order = order[start_sample:][:self.steps_from(start_sample) * g]
        order = order.reshape(-1, self.process_count, self.local_batch)
        return order[:, self.process_index].reshape(-1)

    def steps_from(self, start_sample: int) -> int:
        """Steps left in an epoch after its first `start_sample` samples. A checkpoint from a
        run with another global batch may resume mid-step of this one: its remainder is
        rounded down, as drop_last does."""
        left = max(0, self.steps_per_epoch * self.global_batch - int(start_sample))
        return left // self.global_batch

    def load(self, index: int, epoch: int) -> dict:
        """One transformed sample; an unreadable one is replaced by the next index and counted."""
        real = index >= 0
        index = max(int(index), 0)
        for attempt in range(MAX_SUBSTITUTES):
            i = (index + attempt) % self.num_samples
            try:
                sample = self.transform(self.source.load(i),
                                        np.random.default_rng([self.seed, epoch, i]))
            except BadSample as e:
                log.warning("%s sample %d skipped: %s", self.mode, i, e)
                continue
            sample["mask"] = np.float32(real)
            sample["bad"] = np.int32(attempt)
            return sample
        raise RuntimeError(f"{self.mode}.dataset: {MAX_SUBSTITUTES} unreadable samples in a row "
                           f"from index {index}; check the data")

    def host_batches(self, epoch: int, start_sample: int = 0):
        """Yields numpy dicts of this process's local batch."""
        indices = self.local_indices(epoch, start_sample)
        ds = grain.MapDataset.source(indices).map(lambda i: self.load(i, epoch))
        if self.worker_type == "process" and self.num_workers > 0:
            if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
                flags.FLAGS.mark_as_parsed()
            # batch before the workers split the stream, so each worker builds whole batches
            it = ds.batch(self.local_batch, drop_remainder=True).to_iter_dataset()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
        else:
            read = grain.ReadOptions(num_threads=max(1, self.num_workers),
                                     prefetch_buffer_size=2 * self.local_batch)
            it = ds.to_iter_dataset(read).batch(self.local_batch, drop_remainder=True)
        yield from it

    def batches(self, epoch: int, start_sample: int, sharding, prefetch: int = 2):
        return DevicePrefetcher(self.host_batches(epoch, start_sample), sharding,
                                DEVICE_KEYS[self.mode], prefetch)


class DevicePrefetcher:
    """Turns host batches into global sharded arrays on a background thread, `size` ahead.

    Yields (device_batch, host_batch). `wait_s` accumulates the time the consumer was blocked.
    """

    _END = object()

    def __init__(self, host_iter, sharding, device_keys, size: int = 2):
        self.sharding = sharding
        self.device_keys = device_keys
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self.wait_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(host_iter,), daemon=True)
        self._thread.start()

    def _run(self, host_iter):
        try:
            for host in host_iter:
                device = {k: jax.make_array_from_process_local_data(self.sharding, host[k])
                          for k in self.device_keys}
                while not self._stop.is_set():
                    try:
                        self.queue.put((device, host), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self.queue.put(self._END)
        except BaseException as e:  # surfaced in the consumer, not lost in a thread
            self.queue.put(e)

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        item = self.queue.get()
        self.wait_s += time.perf_counter() - t0
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self._stop.set()
        try:
            while True:
                self.queue.get_nowait()
        except queue.Empty:
            pass
