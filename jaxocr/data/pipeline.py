"""Per-process input pipeline: this process's shard, decoded and batched by grain, then one
global `jax.Array` per batch, sharded on 'data' and prefetched to the devices.

Global order: every process computes the same epoch-seeded permutation of the epoch's samples
(`source.epoch_indices(epoch)` where the source has it, else all of them). Global batch s is
`perm[s*G:(s+1)*G]`; process p takes rows `[p*L:(p+1)*L]` of it (L = its local batch), which
are exactly the rows its devices hold in the global array. So the global sample order does not
depend on the process count, and the data position is (epoch, samples into it): a run resumes
at the same sample under another process or device count.

Augmentation randomness comes from a Philox generator keyed by (seed, epoch) at counter
(source index, attempt): layout-independent, and built only when a transform draws from it.

One grain element is one local batch (a lazy plan maps batch number -> epoch and indices), so
one pipeline spans all remaining epochs (`Loader.stream`) and its workers live for the run;
the eval pipeline is kept between evaluations. Images leave the host as uint8 with their
`valid_width` (jaxocr/data/device_norm.py normalises them on the device).

Bad data never stops a run: an unreadable training sample is replaced by a seeded random one
(PaddleOCR does the same); after MAX_SUBSTITUTES failures in a row, and for any unreadable eval
sample, the row is masked out instead (mask 0, zero image and label). `bad` counts failures.
"""
from __future__ import annotations

import bisect
import logging
import math
import os
import queue
import threading
import time

import cv2
from absl import flags
import grain
import jax
import numpy as np

from jaxocr.config import ConfigError
from jaxocr.data.sources import DatasetError, build_source
from jaxocr.data.transforms import BadSample, build_transforms

log = logging.getLogger("jaxocr")

MAX_SUBSTITUTES = 16
WARN_FIRST = 10  # per worker: the first unreadable samples are logged, then every 1000th
cv2.setNumThreads(1)  # OpenCV threads would compete with XLA for the cores
DEVICE_KEYS = {"Train": ("image", "valid_width", "label", "length", "mask"),
               "Eval": ("image", "valid_width")}
WORKER_TYPES = ("auto", "thread", "process")
MIN_CORES_FOR_PROCESSES = 4
_U64 = (1 << 64) - 1


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def resolve_worker_type(worker_type: str | None) -> str:
    """'auto' (or None): process workers where this process may use at least 4 cores."""
    wt = "auto" if worker_type is None else str(worker_type).lower()
    if wt not in WORKER_TYPES:
        raise ValueError(f"loader.worker_type must be one of {WORKER_TYPES}, got {worker_type!r}")
    if wt == "auto":
        return "process" if usable_cores() >= MIN_CORES_FOR_PROCESSES else "thread"
    return wt


def sample_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The generator of one (sample, attempt) of an epoch: Philox keyed by (seed, epoch), its
    counter starting at (index, attempt) in the high words (the draws advance the low ones, so
    streams of different samples never overlap). ~5 us, no SeedSequence hashing."""
    key = np.array([int(seed) & _U64, int(epoch) & _U64], np.uint64)
    counter = np.array([0, 0, int(attempt) & _U64, int(index) & _U64], np.uint64)
    return np.random.Generator(np.random.Philox(key=key, counter=counter))


class SampleMaker:
    """Loads and transforms samples into local batches. Holds only what a worker process needs
    (pickled to grain's workers)."""

    def __init__(self, source, transform, seed: int, train: bool, finalize=None,
                 ragged_keys=(), batch_transform=None):
        """`finalize(sample) -> sample`: the task's last step after the transforms (a det eval
        image padded into its canvas); `ragged_keys`: keys whose arrays differ in shape from
        row to row (a det image's polygons), batched as lists; `batch_transform(rows, step,
        seed) -> rows`: PaddleDetection's batch transforms (a multi-scale resize, padded
        ground truth), given the batch's global position (epoch, first sample) as its step,
        the same in every process."""
        self.source = source
        self.transform = transform
        self.batch_transform = batch_transform
        self.seed = int(seed)
        self.train = bool(train)
        self.finalize = finalize
        self.ragged_keys = tuple(ragged_keys)
        # substitutes are drawn from every raw index (sources with epoch_indices: num_entries)
        self.size = int(getattr(source, "num_entries", len(source)))
        blank = transform.blank()
        if "image" not in blank and hasattr(finalize, "blank"):
            blank = finalize.blank()
        self._blank = blank if "image" in blank else None  # else: from the first good sample
        self._failures = 0

    def blank(self) -> dict:
        """A masked row: zeros of every output key."""
        if self._blank is None:
            raise RuntimeError("masked row without a template: the transforms end without "
                               "RecResizeImg and no sample was readable")
        out = {k: np.copy(v) for k, v in self._blank.items()}
        out["mask"] = np.float32(0)
        out["bad"] = np.int32(0)
        return out

    def _transform(self, index: int, epoch: int, attempt: int, rng) -> dict:
        if rng is None and self.transform.random:
            rng = sample_rng(self.seed, epoch, index, attempt)
        sample = self.source.load(index)
        if getattr(self.transform, "ext_data_num", 0):
            sample = {**sample, "ext_data": self._ext_data(rng)}
        sample = self.transform(sample, rng)
        return sample if self.finalize is None else self.finalize(sample)

    def _ext_data(self, rng) -> list[dict]:
        """PaddleOCR's SimpleDataSet.get_ext_data: `ext_data_num` random samples of the set
        through the transform's load ops, an unreadable one replaced by another draw (at most
        MAX_SUBSTITUTES draws per sample wanted; fewer are joined when they run out)."""
        load, wanted, out = self.transform.load_ops(), self.transform.ext_data_num, []
        for _ in range(MAX_SUBSTITUTES * wanted):
            if len(out) == wanted:
                break
            try:
                out.append(load(self.source.load(int(rng.integers(self.size))), rng))
            except BadSample:
                continue
        return out

    def _warn(self, index: int, error: Exception):
        self._failures += 1
        if self._failures <= WARN_FIRST or self._failures % 1000 == 0:
            log.warning("sample %d unreadable (%d so far in this worker): %s", index,
                        self._failures, error)

    def load(self, index: int, epoch: int) -> dict:
        """One transformed sample with `mask` (1.0; 0.0 for padding and masked rows) and `bad`
        (failed attempts). index -1 is eval padding (a masked row, no decode)."""
        index = int(index)
        if index < 0:
            return self.blank()
        rng = None
        for attempt in range(MAX_SUBSTITUTES if self.train else 1):
            if attempt:  # a seeded random substitute, the same whatever the worker layout
                rng = sample_rng(self.seed, epoch, index, attempt)
                i = int(rng.integers(self.size))
            else:
                i = index
            try:
                sample = self._transform(i, epoch, attempt, rng)
            except BadSample as e:
                self._warn(i, e)
                continue
            sample["mask"] = np.float32(1)
            sample["bad"] = np.int32(attempt)
            if self._blank is None:
                self._blank = {k: np.zeros_like(v) for k, v in sample.items()
                               if isinstance(v, np.ndarray) or np.isscalar(v)}
            return sample
        row = self.blank()
        row["bad"] = np.int32(MAX_SUBSTITUTES if self.train else 1)
        return row

    def batch(self, indices: np.ndarray, epoch: int, position: int = 0) -> dict:
        rows = [self.load(i, epoch) for i in indices]
        if self.batch_transform is not None and rows:
            rows = self.batch_transform(rows, (int(epoch), int(position)), self.seed)
        return self._stack(rows)

    def each_shape(self, indices: np.ndarray) -> list[dict]:
        """Batches of the rows `indices` (epoch 0) in every shape the batch transform makes
        (one per multi-scale size): what a train step is compiled for ahead of use."""
        rows = [self.load(i, 0) for i in indices]
        if self.batch_transform is None:
            return [self._stack(rows)]
        if not hasattr(self.batch_transform, "each_size"):  # a plain callable: one shape
            return [self._stack(self.batch_transform(rows, (0, 0), self.seed))]
        return [self._stack(r) for r in self.batch_transform.each_size(rows)]

    def _stack(self, rows: list) -> dict:
        if self.batch_transform is not None and rows:
            # keys some rows lack (a flip's `flipped` mark) are left out
            keys = [k for k in rows[0] if all(k in r for r in rows[1:])]
        else:
            keys = self._blank.keys() if self._blank is not None else rows[0].keys()
        out = {k: [r[k] for r in rows] if k in self.ragged_keys else np.stack([r[k] for r in rows])
               for k in keys if k not in ("mask", "bad")}
        out["mask"] = np.array([r["mask"] for r in rows], np.float32)
        out["bad"] = np.array([r["bad"] for r in rows], np.int32)
        return out


class Order:
    """The global sample order of an epoch and this process's part of it (picklable)."""

    def __init__(self, source, num_samples, global_batch, local_batch, process_index,
                 process_count, steps_per_epoch, seed, shuffle):
        self.source = source
        self.n, self.g, self.l = num_samples, global_batch, local_batch
        self.p, self.count = process_index, process_count
        self.steps_per_epoch, self.seed, self.shuffle = steps_per_epoch, seed, shuffle

    def steps_from(self, start_sample: int) -> int:
        left = max(0, self.steps_per_epoch * self.g - int(start_sample))
        return left // self.g

    def local_indices(self, epoch: int, start_sample: int = 0) -> np.ndarray:
        n, g = self.n, self.g
        order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                 else np.arange(n))
        epoch_indices = getattr(self.source, "epoch_indices", None)
        if epoch_indices is not None:
            order = np.asarray(epoch_indices(epoch), np.int64)[order]
        total = self.steps_per_epoch * g
        order = np.concatenate([order, np.full(max(0, total - n), -1)])[:total]
        order = order[start_sample:][:self.steps_from(start_sample) * g]
        order = order.reshape(-1, self.count, self.l)
        return order[:, self.p].reshape(-1)


class BatchPlan:
    """Lazy sequence of local batches over epoch segments [(epoch, start_sample), ...]: item b
    is {epoch, indices, next_sample, epoch_end}. repeat=True cycles the segments forever (the
    eval passes). Indices are computed once per epoch (per worker) and cached."""

    def __init__(self, order: Order, segments, repeat: bool = False):
        self.order = order
        self.segments = [(int(e), int(s)) for e, s in segments]
        self.steps = [order.steps_from(s) for _, s in self.segments]
        self.ends = np.cumsum(self.steps).tolist()
        self.total = self.ends[-1] if self.ends else 0
        self.repeat = repeat
        self._cache: dict = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return (1 << 40) if self.repeat and self.total else self.total

    def __getitem__(self, b: int):
        b = int(b)
        if self.repeat:
            b %= self.total
        elif not 0 <= b < self.total:
            raise IndexError(b)
        k = bisect.bisect_right(self.ends, b)
        epoch, start = self.segments[k]
        step = b - (self.ends[k] - self.steps[k])
        with self._lock:
            idx = self._cache.get(k)
            if idx is None:
                idx = self.order.local_indices(epoch, start)
                if len(self._cache) >= 2:
                    self._cache.clear()
                self._cache[k] = idx
        n = self.order.l
        return {"epoch": epoch, "indices": idx[step * n:(step + 1) * n],
                "position": start + step * self.order.g,
                "next_sample": start + (step + 1) * self.order.g,
                "epoch_end": step + 1 == self.steps[k]}


class _MakeBatch:
    """grain map: plan item -> host batch dict (numpy rows plus epoch / position)."""

    def __init__(self, maker: SampleMaker):
        self.maker = maker

    def __call__(self, item: dict) -> dict:
        out = self.maker.batch(item["indices"], item["epoch"], item["position"])
        out["epoch"] = item["epoch"]
        out["next_sample"] = item["next_sample"]
        out["epoch_end"] = item["epoch_end"]
        return out


class Loader:
    """The input pipeline of `Train` or `Eval`.

    - `stream(epoch, start_sample, sharding)`: (device_batch, host_batch) for every remaining
      epoch, one pipeline (workers) for all of them (Train).
    - `batches(epoch, start_sample, sharding)`: one epoch. Eval's `batches(0, 0, ...)` reuses
      one long-lived pipeline across calls.
    - `close()`: ends every worker and prefetch thread.

    Host batches hold the transform's keys (`image` uint8 (L,H,W,C), `valid_width`, `label`,
    `length`, ...), `mask` (float32, 0 for padding and masked bad rows), `bad` (int32,
    unreadable samples met for the row), `epoch` (int), `next_sample` (int: samples into the
    epoch after this batch, the resume position) and `epoch_end` (bool).
    """

    def __init__(self, cfg: dict, mode: str, charset, mesh, max_ctc_steps: int | None = None,
                 device_keys=None, label_filter=None, finalize=None, ragged_keys=(),
                 transform=None, batch_transform=None):
        """`max_ctc_steps`: the CTC frames the model emits; Train labels needing more are
        dropped when the source is scanned (counted as too_long_for_ctc). `device_keys`: the
        batch keys that go to the devices (the task's; recognition's by default).
        `label_filter`, `finalize`, `ragged_keys`, `batch_transform`: the task's label-file
        rule, last step per sample, list-batched keys and batch transforms (see build_source
        and SampleMaker); `transform`: the task's sample transforms (PaddleDetection's), else
        the dataset's PaddleOCR `transforms` list."""
        section, g = cfg[mode], cfg["Global"]
        self.device_keys = tuple(device_keys or DEVICE_KEYS[mode])
        self.mode = mode
        self.seed = int(g["seed"])
        self.epoch_num = int(g.get("epoch_num", 1))
        self.source = build_source(section["dataset"], mode.lower(), charset, g, self.seed,
                                   max_ctc_steps=max_ctc_steps, label_filter=label_filter)
        self.transform = transform or build_transforms(
            section["dataset"].get("transforms") or [], charset, g,
            ext_op_transform_idx=section["dataset"].get("ext_op_transform_idx", 2))
        loader = section["loader"]
        self.shuffle = bool(loader["shuffle"]) and mode == "Train"
        self.drop_last = bool(loader["drop_last"]) if mode == "Train" else False
        self.num_workers = int(loader["num_workers"])
        self.worker_type = resolve_worker_type(loader.get("worker_type"))
        per_card = int(loader["batch_size_per_card"])
        local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        self.local_batch = per_card * len(local)
        self.global_batch = per_card * mesh.size
        self.process_index = jax.process_index()
        self.process_count = mesh.size // len(local)
        epoch_indices = getattr(self.source, "epoch_indices", None)
        self.num_samples = (len(epoch_indices(0)) if epoch_indices is not None
                            else len(self.source))
        if self.num_samples == 0:
            raise DatasetError(f"{mode}.dataset: no usable samples (dropped: "
                               f"{self.source.dropped})")
        if self.drop_last:
            self.steps_per_epoch = self.num_samples // self.global_batch
        else:
            self.steps_per_epoch = math.ceil(self.num_samples / self.global_batch)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{mode}.dataset has {self.num_samples} samples, fewer than one global batch "
                f"({self.global_batch} = batch_size_per_card {per_card} x {mesh.size} devices)")
        self.maker = SampleMaker(self.source, self.transform, self.seed, train=mode == "Train",
                                 finalize=finalize, ragged_keys=ragged_keys,
                                 batch_transform=batch_transform)
        self._prefetchers: list = []  # live DevicePrefetchers
        self._iters: list = []        # live grain iterators
        self._eval = None             # (grain iterator, batches pulled) kept between evals

    # ---- order ----
    def order(self) -> Order:
        return Order(self.source, self.num_samples, self.global_batch, self.local_batch,
                     self.process_index, self.process_count, self.steps_per_epoch, self.seed,
                     self.shuffle)

    def local_indices(self, epoch: int, start_sample: int = 0) -> np.ndarray:
        """This process's sample indices for the epoch, from the epoch's `start_sample`-th
        sample (in global order) on; -1 marks eval padding."""
        return self.order().local_indices(epoch, start_sample)

    def steps_from(self, start_sample: int) -> int:
        """Steps left in an epoch after its first `start_sample` samples. A checkpoint from a
        run with another global batch may resume mid-step of this one: its remainder is
        rounded down, as drop_last does."""
        return self.order().steps_from(start_sample)

    # ---- samples ----
    def load(self, index: int, epoch: int) -> dict:
        """One transformed sample (a seeded substitute or a masked row if unreadable)."""
        return self.maker.load(index, epoch)

    def batch_specs(self, sharding) -> list[dict]:
        """The global device batch (`jax.ShapeDtypeStruct` per device key, on `sharding`) of
        every shape this loader's batches take: one, or one per multi-scale size."""
        rows = self.local_indices(0)[:self.local_batch]
        return [{k: jax.ShapeDtypeStruct((self.global_batch,) + np.shape(v)[1:],
                                         np.asarray(v).dtype, sharding=sharding)
                 for k, v in batch.items() if k in self.device_keys}
                for batch in self.maker.each_shape(rows)]

    def _iterate(self, plan: BatchPlan):
        """A started grain iterator of host batches over `plan`."""
        ds = grain.MapDataset.source(plan).map(_MakeBatch(self.maker))
        if self.worker_type == "process" and self.num_workers > 0:
            if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
                flags.FLAGS.mark_as_parsed()
            # one thread per worker process: a whole batch is one element
            inner = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
            it = iter(ds.to_iter_dataset(inner).mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.num_workers, per_worker_buffer_size=2)))
        else:
            threads = max(1, self.num_workers)
            read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads + 1)
            it = iter(ds.to_iter_dataset(read))
        self._iters.append(it)
        return it

    def host_batches(self, epoch: int, start_sample: int = 0):
        """Yields numpy dicts of this process's local batch for one epoch."""
        return self._host([(epoch, start_sample)])

    def host_stream(self, epoch: int, start_sample: int = 0):
        """Host batches from (epoch, start_sample) to the end of epoch epoch_num - 1."""
        segments = [(epoch, start_sample)] + [(e, 0) for e in range(epoch + 1, self.epoch_num)]
        return self._host(segments if epoch < self.epoch_num else [])

    def _host(self, segments):
        plan = BatchPlan(self.order(), segments)
        if plan.total == 0:
            return
        it = self._iterate(plan)
        try:
            for _ in range(plan.total):
                yield next(it)
        finally:
            self._close_iter(it)

    def _close_iter(self, it):
        if it in self._iters:
            self._iters.remove(it)
        try:
            it.close()
        except Exception:  # pragma: no cover - best effort
            pass

    def _eval_pass(self):
        """One pass over the eval set from the long-lived eval iterator."""
        it, pulled = self._eval
        steps = self.steps_per_epoch
        for k in range(steps):
            batch = next(it)
            self._eval = (it, pulled + k + 1)
            yield batch

    # ---- device batches ----
    def _prefetch(self, host_iter, sharding, prefetch) -> "DevicePrefetcher":
        self._prefetchers = [p for p in self._prefetchers if p.alive()]
        pf = DevicePrefetcher(host_iter, sharding, self.device_keys, prefetch)
        self._prefetchers.append(pf)
        return pf

    def stream(self, epoch: int, start_sample: int, sharding, prefetch: int = 2):
        """(device_batch, host_batch) for all remaining epochs, from `start_sample` samples into
        `epoch` to the end of epoch Global.epoch_num - 1, without rebuilding workers at epoch
        boundaries. host["epoch"] says which epoch a batch is of; none straddles two."""
        return self._prefetch(self.host_stream(epoch, start_sample), sharding, prefetch)

    def batches(self, epoch: int, start_sample: int, sharding, prefetch: int = 2):
        """(device_batch, host_batch) for one epoch. Eval's (0, 0) passes share one pipeline,
        kept alive between calls."""
        if self.mode != "Train" and epoch == 0 and start_sample == 0:
            for pf in self._prefetchers:  # a previous pass still reading: stop it first
                if pf.alive():
                    pf.close()
            if self._eval is not None and self._eval[1] % self.steps_per_epoch:
                self._close_iter(self._eval[0])  # a pass was left unfinished: start afresh
                self._eval = None
            if self._eval is None:
                plan = BatchPlan(self.order(), [(0, 0)], repeat=True)
                self._eval = (self._iterate(plan), 0)
            return self._prefetch(self._eval_pass(), sharding, prefetch)
        return self._prefetch(self.host_batches(epoch, start_sample), sharding, prefetch)

    def close(self):
        """Ends every prefetch thread and worker of this loader (idempotent)."""
        for pf in self._prefetchers:
            pf.close()
        self._prefetchers = []
        for it in list(self._iters):
            self._close_iter(it)
        self._eval = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DevicePrefetcher:
    """Turns host batches into global sharded arrays on a background thread, `size` ahead.

    Yields (device_batch, host_batch). `wait_s` accumulates the time the consumer was blocked.
    `close()` stops the thread and waits for it.
    """

    _END = object()

    def __init__(self, host_iter, sharding, device_keys, size: int = 2):
        self.sharding = sharding
        self.device_keys = device_keys
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self.wait_s = 0.0
        self._host_iter = host_iter
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(host_iter,), daemon=True,
                                        name="DevicePrefetcher")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, host_iter):
        try:
            for host in host_iter:
                if self._stop.is_set():
                    return
                device = {k: jax.make_array_from_process_local_data(self.sharding, host[k])
                          for k in self.device_keys if k in host}
                if not self._put((device, host)):
                    return
            self._put(self._END)
        except BaseException as e:  # surfaced in the consumer, not lost in a thread
            self._put(e)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        t0 = time.perf_counter()
        while True:
            try:
                item = self.queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self.queue.empty():
                    self._done = True
                    raise StopIteration from None
        self.wait_s += time.perf_counter() - t0
        if item is self._END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def close(self, timeout: float = 30.0):
        self._stop.set()
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    self.queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(0.05)
        try:
            while True:
                self.queue.get_nowait()
        except queue.Empty:
            pass
        self._done = True
        if not self._thread.is_alive():
            close = getattr(self._host_iter, "close", None)  # a generator: runs its finally
            if close is not None:
                try:
                    close()
                except Exception:  # pragma: no cover - best effort
                    pass
