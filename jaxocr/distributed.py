"""Process group and mesh: which processes train together, and how a process sees the job.

A process finds its place from, in order: `--ips` (PaddleOCR style: its own address's position
in the list), `--coordinator` / `JAX_COORDINATOR_ADDRESS` (JAX style), or the cluster
environment (SLURM, Open MPI), as `jax.distributed` detects it. Alone, it needs none of these.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import signal
import socket
import subprocess
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxocr import jax_internals, job_failure

log = logging.getLogger("jaxocr")

AXIS = "data"
FAULT_ENV = "JAXOCR_FAULT"  # "stall|crash|exit:PROCESS_ID:STEP[:ATTEMPT]", for fault tests;
                           # STEP 0: after set-up, before the first step
PROGRESS_ENV = "JAXOCR_PROGRESS_FILE"  # the launcher watches this file for stalls
ATTEMPT_ENV = "JAXOCR_ATTEMPT"         # how many times the launcher restarted the workers
# What a worker writes to its progress file before its first step (then the step number), so
# that the launcher can say how far a worker that never started training got.
PHASES = {"started": "had not joined the job (imports, config, data set-up or waiting for the "
                     "coordinator)",
          "joined": "had joined the job but not finished setting up training (model, state, "
                    "checkpoint restore)",
          "ready": "was about to take its first step (compiling it, NCCL set-up, or the first "
                   "collective)"}


class LaunchError(RuntimeError):
    """A problem with how the job was launched, explained in one line."""


@dataclasses.dataclass
class Cluster:
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: list[int] | None = None
    own_address: str | None = None  # this host's address from --ips, for gloo to bind to
    bind_address: str | None = None  # where process 0's coordinator listens (default: coordinator)

    @property
    def explicit(self) -> bool:
        return self.coordinator is not None


def is_local_address(ip: str) -> bool:
    """True if this machine (its current network namespace) owns `ip`."""
    try:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def host_rank_from_ips(ips: list[str]) -> int:
    matches = [i for i, ip in enumerate(ips) if is_local_address(ip)]
    if not matches:
        raise LaunchError(f"none of --ips {','.join(ips)} is an address of this host "
                          f"({socket.gethostname()}); run the command on the listed hosts")
    if len(matches) > 1:
        raise LaunchError(f"several --ips are addresses of this host: "
                          f"{', '.join(ips[i] for i in matches)}")
    return matches[0]


def cluster_from_flags(ips=None, start_port=17000, coordinator=None, num_processes=None,
                       process_id=None, gpus=None, nproc_per_host=1, local_rank=0,
                       coordinator_bind_address=None) -> Cluster:
    """Resolve this process's place in the job from the launcher flags (or none: env/alone)."""
    local_ids = [int(g) for g in str(gpus).split(",")] if gpus not in (None, "") else None
    if ips:
        ips = [ip.strip() for ip in str(ips).split(",") if ip.strip()]
        host = host_rank_from_ips(ips)
        return Cluster(coordinator=f"{ips[0]}:{start_port}",
                       num_processes=len(ips) * nproc_per_host, process_id=host * nproc_per_host + local_rank, local_device_ids=local_ids,
                       own_address=ips[host], bind_address=coordinator_bind_address)
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if coordinator:
        if num_processes is None or process_id is None:
            raise LaunchError("--coordinator needs --num_processes and --process_id")
        return Cluster(coordinator, int(num_processes), int(process_id), local_ids,
                       bind_address=coordinator_bind_address)
    return Cluster(local_device_ids=local_ids, bind_address=coordinator_bind_address)


def coordinator_bind_address(cluster: Cluster) -> str | None:
    """Where process 0's coordination service listens: the address it was given, never every
    interface unless asked (JAX's default is `[::]:port`, with no authentication)."""
    if cluster.bind_address or not cluster.explicit or cluster.process_id != 0:
        return cluster.bind_address
    host = cluster.coordinator.rsplit(":", 1)[0].strip("[]")
    try:
        ips = {a[4][0] for a in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except socket.gaierror as e:
        raise LaunchError(f"the coordinator address {cluster.coordinator} does not resolve "
                          f"({e.strerror})") from None
    if not any(is_local_address(ip) for ip in ips):
        raise LaunchError(
            f"process 0 runs the coordinator, but {cluster.coordinator} is not an address of "
            f"this host ({socket.gethostname()}); pass --coordinator_bind_address with a local "
            f"HOST:PORT (0.0.0.0:PORT listens on every interface: private networks only)")
    return cluster.coordinator


def in_cluster_env() -> bool:
    slurm = all(k in os.environ for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                                          "SLURM_PROCID", "SLURM_LOCALID"))
    return slurm or "OMPI_MCA_orte_hnp_uri" in os.environ


def initialize(cluster: Cluster, init_timeout=300, heartbeat_timeout=40, shutdown_timeout=300):
    """`jax.distributed.initialize` when the job has several processes; a clear error if the
    coordinator cannot be reached in time."""
    if not cluster.explicit and not in_cluster_env():
        if cluster.local_device_ids is not None:
            jax.config.update("jax_cuda_visible_devices",
                              ",".join(map(str, cluster.local_device_ids)))
        return
    kwargs = dict(initialization_timeout=int(init_timeout),
                  heartbeat_timeout_seconds=int(heartbeat_timeout),
                  shutdown_timeout_seconds=int(shutdown_timeout))
    bind = coordinator_bind_address(cluster)
    if bind:
        kwargs["coordinator_bind_address"] = bind
    if cluster.explicit:
        kwargs.update(coordinator_address=cluster.coordinator, num_processes=cluster.num_processes,
                      process_id=cluster.process_id, local_device_ids=cluster.local_device_ids)
    else:  # SLURM / Open MPI: jax would give each process only GPU [local rank]
        ids = cluster.local_device_ids
        if ids is None:
            ids, why = cluster_env_devices(os.environ, *local_gpu_count())
            if why:
                log.info("%s", why)
        if ids is not None:
            kwargs["local_device_ids"] = ids
    where = cluster.coordinator or "the coordinator from the cluster environment"
    t0 = time.monotonic()
    if cluster.explicit and cluster.process_id != 0:
        # jax aborts the process (no exception) when the coordinator never answers: probe first
        _wait_for_coordinator(cluster, init_timeout)
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # jax raises several types here; all mean the same to the user
        raise LaunchError(
            f"process {cluster.process_id} of {cluster.num_processes} could not join the job at "
            f"{where} within {time.monotonic() - t0:.0f} s (--init_timeout {init_timeout}): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    jax_internals.warn_if_unchecked()
    if not cluster.explicit and not bind and jax.process_index() == 0:
        log.warning("the coordinator (from the cluster environment) listens on every interface; "
                    "pass --coordinator_bind_address HOST:PORT to restrict it")
    if cluster.explicit:
        _bind_gloo_to(cluster.own_address or job_failure.local_ip_towards(cluster.coordinator))
    _announce(init_timeout)
    log.info("joined the job: process %d of %d (coordinator %s)", jax.process_index(),
             jax.process_count(), where)
    report_phase("joined")


def _announce(init_timeout):
    """Publish this process's liveness address (all processes or none end up with peers)."""
    try:
        client = jax_internals.distributed_client()
    except jax_internals.Unavailable as e:  # the same jax everywhere: every process lands here
        log.warning("peers cannot be probed (%s): a lost process will not be named", e)
        return
    try:
        coordinator = jax_internals.coordinator_address()
    except jax_internals.Unavailable:
        coordinator = None  # announce publishes the failure, so the others do not wait
    job_failure.announce(client, jax.process_index(), coordinator, init_timeout,
                         jax.process_count())


def _expand_slurm_counts(value: str) -> list[int]:
    """SLURM's compressed per-node counts, e.g. '2(x3),1' -> [2, 2, 2, 1]."""
    counts = []
    for part in value.split(","):
        n, _, times = part.partition("(x")
        counts += [int(n)] * (int(times.rstrip(")")) if times else 1)
    return counts


def tasks_on_this_node(env) -> int | None:
    """How many processes of the job run on this node, from SLURM's or Open MPI's environment."""
    if "OMPI_COMM_WORLD_LOCAL_SIZE" in env:
        return int(env["OMPI_COMM_WORLD_LOCAL_SIZE"])
    for var in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if env.get(var):
            try:
                counts = _expand_slurm_counts(env[var])
            except ValueError:
                continue
            node = env.get("SLURM_NODEID")
            if node is not None and int(node) < len(counts):
                return counts[int(node)]
            if len(set(counts)) == 1:
                return counts[0]
    if env.get("SLURM_NTASKS_PER_NODE"):
        return int(env["SLURM_NTASKS_PER_NODE"])
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES")
    if nodes and env.get("SLURM_NTASKS") == nodes:
        return 1
    return None


def cluster_env_devices(env, gpu_count: int, found: str = "") -> tuple[list[int] | None, str]:
    """The local devices of a process started by SLURM / Open MPI without --gpus, and why.

    jax gives such a process GPU [local rank] only: right for one task per GPU, but with one
    task per node it would silently train on one GPU of each node. Then this returns all the
    node's GPUs (`gpu_count`, found as `local_gpu_count` says); otherwise None (jax's choice).
    """
    manager = "Open MPI" if "OMPI_COMM_WORLD_LOCAL_SIZE" in env else "SLURM"
    if gpu_count <= 0:
        return None, ""
    per_node = tasks_on_this_node(env)
    if per_node == 1:
        return list(range(gpu_count)), (f"{manager}: one task on this node: it uses all "
                                        f"{gpu_count} local GPUs ({found or 'counted'})")
    rank = env.get("OMPI_COMM_WORLD_LOCAL_RANK", env.get("SLURM_LOCALID", "?"))
    tasks = f"{per_node} tasks on this node" if per_node else "tasks per node unknown"
    return None, (f"{manager}: {tasks}: this one (local rank {rank}) uses GPU {rank} of "
                  f"{gpu_count} (jax's default; --gpus chooses others)")


def local_gpu_count(env=None, smi=("nvidia-smi", "-L"),
                    proc_dir="/proc/driver/nvidia/gpus") -> tuple[int, str]:
    """(NVIDIA GPUs this process may use, how that was found), without starting JAX:
    CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`, else the driver's /proc entries.
    0 means CPU (also when JAX_PLATFORMS excludes GPUs)."""
    env = os.environ if env is None else env
    platforms = env.get("JAX_PLATFORMS", "")
    if platforms and not any(p in platforms for p in ("cuda", "gpu")):
        return 0, f"JAX_PLATFORMS={platforms}"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for x in visible.split(","):  # CUDA stops at the first invalid entry
            x = x.strip()
            if not x or x == "-1" or x == "NoDevFiles":
                break
            ids.append(x)
        return len(ids), f"CUDA_VISIBLE_DEVICES={visible}"
    try:
        r = subprocess.run(list(smi), capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            n = sum(line.startswith("GPU ") for line in r.stdout.splitlines())
            return n, "nvidia-smi -L"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return len(os.listdir(proc_dir)), proc_dir
    except OSError:
        return 0, "no NVIDIA GPU found"


def split_local_devices(workers: int, gpus: list[str] | None = None,
                        gpu_count: int = 0) -> list[list[str]] | None:
    """Each local worker's GPU ids: `gpus` (--gpus) or all `gpu_count` local GPUs, split
    evenly in contiguous blocks. None: no GPUs (CPU), nothing to split."""
    ids = list(gpus) if gpus else [str(i) for i in range(gpu_count)]
    if not ids:
        return None
    if len(ids) % workers:
        what = f"--gpus {','.join(ids)}" if gpus else f"the {len(ids)} local GPUs"
        raise LaunchError(f"{what} do not split evenly over --nproc_per_host {workers} workers; "
                          f"choose a worker count that divides {len(ids)}, or pass --gpus")
    per = len(ids) // workers
    return [ids[r * per:(r + 1) * per] for r in range(workers)]


def _wait_for_coordinator(cluster: Cluster, timeout: float):
    host, port = cluster.coordinator.rsplit(":", 1)
    host = host.strip("[]")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise LaunchError(
                    f"process {cluster.process_id} of {cluster.num_processes} could not join the "
                    f"job: the coordinator {cluster.coordinator} did not answer within "
                    f"{timeout:g} s (--init_timeout): {e.strerror or e}") from None
            time.sleep(0.5)


def _bind_gloo_to(address: str):
    """On CPU, make gloo listen on this host's --ips address rather than whatever its hostname
    resolves to (which may not be reachable from the other hosts)."""
    if jax.config.jax_platforms not in (None, "", "cpu") or \
            jax.config.jax_cpu_collectives_implementation not in (None, "gloo"):
        return
    try:
        jax_internals.bind_cpu_gloo(address)
    except Exception as e:  # private API: fall back to gloo's own choice
        log.warning("could not bind gloo to %s (%s); using the default interface", address, e)


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
    arrive_together("sum_across_processes")
    return np.asarray(multihost_utils.process_allgather(np.asarray(values))).sum(axis=0)


def other_processes(values: np.ndarray) -> list[np.ndarray]:
    """The `values` arrays of every other process (any first-axis length; the same dtype and
    trailing shape everywhere), by process id: a metric's partial state to merge."""
    if jax.process_count() == 1:
        return []
    values = np.asarray(values)
    sizes = every_process(len(values))
    padded = np.zeros((int(sizes.max()), *values.shape[1:]), values.dtype)
    padded[:len(values)] = values
    arrive_together("other_processes")
    every = np.asarray(multihost_utils.process_allgather(padded))
    return [every[p][:sizes[p]] for p in range(len(sizes)) if p != jax.process_index()]


COORDINATION_TIMEOUT_S = 3600.0  # a dead peer ends the job sooner (the launcher, job_failure)
_rounds = {"gather": 0, "together": 0}


def _coordination_client():
    """The coordination service's client, or None (one process, or a jax whose private API
    moved: then the device collectives below serve alone)."""
    if jax.process_count() == 1:
        return None
    from jaxocr.jax_internals import Unavailable, distributed_client
    try:
        return distributed_client()
    except Unavailable:
        return None


def every_process(value: int) -> np.ndarray:
    """`value` (an int64) of every process, by process id, through the coordination service's
    key-value store: no device program, and a process that arrives late is waited for (up to
    COORDINATION_TIMEOUT_S) where a first gloo collective gives up after 30 s. Every process
    makes the same sequence of calls."""
    if jax.process_count() == 1:
        return np.asarray([value], np.int64)
    client = _coordination_client()
    if client is None:
        mine = np.asarray([value], np.int64)
        return np.asarray(multihost_utils.process_allgather(mine)).reshape(-1)
    n = _rounds["gather"]
    _rounds["gather"] = n + 1
    key = "jaxocr/gather/{}/{}".format
    client.key_value_set(key(n, jax.process_index()), str(int(value)))
    out = [int(client.blocking_key_value_get(key(n, p), int(COORDINATION_TIMEOUT_S * 1000)))
           for p in range(jax.process_count())]
    if n:  # every process has written round n, so every one has read round n - 1
        client.key_value_delete(key(n - 1, jax.process_index()))
    return np.asarray(out, np.int64)


def arrive_together(what: str) -> None:
    """Wait (up to COORDINATION_TIMEOUT_S) until every process is here, before a device
    collective that processes may reach far apart: the first run of a freshly compiled
    program (compile times differ), a gather after host-side work. Gloo sets up a collective's
    communicator at its first run and gives up when a peer is 30 s late."""
    client = _coordination_client()
    if client is None:
        return
    n = _rounds["together"]
    _rounds["together"] = n + 1
    client.wait_at_barrier(f"jaxocr/together/{n}/{what}", int(COORDINATION_TIMEOUT_S * 1000))


def check_same_config(config_digest: str):
    """Every process must run the same merged config; name the ones that differ."""
    every = every_process(int(np.frombuffer(
        hashlib.sha256(config_digest.encode()).digest()[:8], np.int64)[0]))
    arrive_together("config check")  # every process has read them: each may now stop alone
    differ = [p for p, h in enumerate(every) if h != every[0]]
    if differ:
        raise LaunchError(f"processes {differ} run a different config than process 0 "
                          "(all hosts must use the same config file and -o overrides)")


def check_same_start(step: int):
    """Every process must resume from the same checkpoint step (-1: none); each lists the
    run directory itself, and shared storage may show them different listings."""
    every = every_process(step)
    arrive_together("start check")
    if (every != every[0]).any():
        raise LaunchError(f"processes resume from different steps {every.tolist()} (by process); "
                          "is save_model_dir shared by every host?")


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


def report_phase(phase: str):
    """Tell the launcher (if any) how far this worker got before its first step."""
    _write_progress(os.environ.get(PROGRESS_ENV), phase)


def _write_progress(path: str | None, text: str):
    if path:  # atomically: the launcher never reads a half-written file
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)


class Progress:
    """Tells the launcher this process is alive and stepping (for stall detection), and
    injects the faults the tests ask for through JAXOCR_FAULT (step 0: at construction, i.e.
    after set-up and before the first step)."""

    def __init__(self):
        self.path = os.environ.get(PROGRESS_ENV)
        fault = os.environ.get(FAULT_ENV, "")
        self.fault = None
        if fault:  # kind:process:step[:attempt], attempt counting launcher restarts from 0
            kind, pid, step, *attempt = fault.split(":")
            this_attempt = os.environ.get(ATTEMPT_ENV, "0")
            if int(pid) == jax.process_index() and (not attempt or attempt[0] == this_attempt):
                self.fault = (kind, int(step))
        if self.fault and self.fault[1] == 0:
            self._inject(0)
        _write_progress(self.path, "ready")

    def step(self, global_step: int):
        # ~50 us; the launcher blames the worker whose step is behind
        _write_progress(self.path, str(global_step))
        if self.fault and global_step == self.fault[1]:
            self._inject(global_step)

    def _inject(self, global_step: int):
        kind = self.fault[0]
        log.warning("fault injection: %s at step %d", kind, global_step)
        if kind == "stall":
            while True:
                time.sleep(3600)
        if kind == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "exit":
            os._exit(3)
