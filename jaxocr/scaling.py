"""Scaling benchmark: measured weak scaling over local processes, and projection to N hosts.

Measured: the real train step in 1..N local processes (each pinned to its own cores, or its own
GPU), in three modes that split the gap to linear scaling into its parts:
  sync         gradients all-reduced every step: real data-parallel training
  lockstep     only the loss all-reduced: the processes still wait for each other every step,
               so `sync - lockstep` is what moving the gradients costs
  independent  N unconnected processes: what sharing the machine (cores, memory bus) costs
Projected: ring all-reduce time 2(N-1)/N x bytes / bandwidth + 2(N-1) x latency against the
measured compute time per step, with the all-reduce after the backward pass (as the step does it)
or overlapped with it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch",
                     "bench.py")
MODES = ("sync", "lockstep", "independent")
BACKWARD_SHARE = 2 / 3  # of a step's compute; the part a gradient all-reduce can hide behind


def ring_allreduce_s(workers: int, nbytes: float, gbit_per_s: float, latency_us: float = 10.0
                     ) -> float:
    """Time of a bandwidth-optimal ring all-reduce of `nbytes` over `workers` ranks."""
    if workers <= 1:
        return 0.0
    hops = 2 * (workers - 1)
    return hops / workers * nbytes / (gbit_per_s * 1e9 / 8) + hops * latency_us * 1e-6


def projected_efficiency(compute_s: float, allreduce_s: float, overlap: bool) -> float:
    exposed = max(0.0, allreduce_s - BACKWARD_SHARE * compute_s) if overlap else allreduce_s
    return compute_s / (compute_s + exposed)


def projection_table(compute_s: float, nbytes: float, workers: list[int], gbit_per_s: float,
                     latency_us: float = 10.0) -> list[dict]:
    rows = []
    for n in workers:
        ar = ring_allreduce_s(n, nbytes, gbit_per_s, latency_us)
        rows.append({"workers": n, "gbit_per_s": gbit_per_s, "compute_s": compute_s,
                     "allreduce_s": ar,
                     "efficiency": projected_efficiency(compute_s, ar, overlap=False),
                     "efficiency_overlapped": projected_efficiency(compute_s, ar, overlap=True)})
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(config: str, overrides: list[list[str]], n: int, mode: str, steps: int,
                warmup: int, cores: list[list[int]] | None, gpus: list[str] | None,
                timeout: float) -> list[dict]:
    """Start n bench workers (`bench.py train`) and return their JSON results."""
    port = _free_port()
    procs, outs = [], []
    tmp = tempfile.mkdtemp(prefix="jaxocr_scaling_")
    for rank in range(n):
        out = os.path.join(tmp, f"worker{rank}.json")
        cmd = [sys.executable, BENCH, "train", "-c", config, "--steps", str(steps),
               "--warmup", str(warmup), "--json", out]
        for group in overrides:
            cmd += ["-o", *group]
        if n > 1 and mode != "independent":
            cmd += ["--coordinator", f"127.0.0.1:{port}", "--num_processes", str(n),
                    "--process_id", str(rank), "--allreduce_probe"]
            if mode == "lockstep":
                cmd += ["--lockstep_only"]
        if gpus:
            cmd += ["--gpus", gpus[rank]]
        pin = cores[rank] if cores else None
        procs.append(subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=(lambda c=pin: os.sched_setaffinity(0, c)) if pin else None))
        outs.append(out)
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise RuntimeError(f"scaling: {mode} with {n} processes did not finish in {timeout} s")
    for rank, p in enumerate(procs):
        if p.returncode != 0:
            raise RuntimeError(f"scaling: worker {rank} of {n} ({mode}) failed "
                               f"(exit {p.returncode}):\n{logs[rank][-3000:]}")
    results = []
    for out in outs:
        with open(out) as f:
            results.append(json.load(f))
    return results


def summarize(results: list[dict]) -> dict:
    """Throughput of the whole group: each worker's share of the images it timed."""
    total = sum(r["images_per_s"] * r["local_devices"] / r["devices"] for r in results)
    step = max(r["step_s"] for r in results)
    row = {"images_per_s": total, "step_s": step,
           "data_wait_s": max(r["data_wait_s"] for r in results)}
    probes = [r["allreduce_probe_s"] for r in results if r.get("allreduce_probe_s") is not None]
    if probes:
        row["allreduce_probe_s"] = max(probes)
    row["grad_bytes"] = results[0]["grad_bytes"]
    row["all_reduces"] = results[0]["all_reduces"]
    row["all_reduces_in_loops"] = results[0]["all_reduces_in_loops"]
    return row


def measure(config: str, overrides, processes: list[int], steps: int, warmup: int,
            cores_per_process: int | None, gpus: list[str] | None, timeout: float = 1800,
            log=print) -> dict:
    """Run every mode for every process count; efficiency against the 1-process run."""
    cpus = sorted(os.sched_getaffinity(0))
    per = cores_per_process or max(1, len(cpus) // max(processes))
    rows = []
    base = None
    for n in processes:
        if gpus is None and n * per > len(cpus):
            raise ValueError(f"{n} processes x {per} cores need {n * per} cores; "
                             f"this machine has {len(cpus)}")
        cores = None if gpus else [cpus[i * per:(i + 1) * per] for i in range(n)]
        for mode in (MODES if n > 1 else ("sync",)):
            row = {"processes": n, "mode": mode, **summarize(run_workers(
                config, overrides, n, mode, steps, warmup, cores, gpus, timeout))}
            if base is None:
                base = row["images_per_s"]
            row["efficiency"] = row["images_per_s"] / (n * base)
            rows.append(row)
            log(format_row(row))
    sync = {r["processes"]: r for r in rows if r["mode"] == "sync"}
    lock = {r["processes"]: r for r in rows if r["mode"] == "lockstep"}
    for n, r in lock.items():  # what the gradient all-reduce adds to a lockstep step
        sync[n]["allreduce_in_step_s"] = max(0.0, sync[n]["step_s"] - r["step_s"])
        sync[n]["allreduce_frac"] = sync[n]["allreduce_in_step_s"] / sync[n]["step_s"]
    return {"rows": rows, "cores_per_process": None if gpus else per}


def format_row(r: dict) -> str:
    extra = ""
    if "allreduce_probe_s" in r:
        extra = f"  standalone all-reduce {r['allreduce_probe_s'] * 1e3:.1f} ms"
    return (f"{r['processes']} x {r['mode']:<11} {r['images_per_s']:8.1f} img/s  step "
            f"{r['step_s']:.3f} s (data wait {r['data_wait_s']:.3f})  efficiency "
            f"{r['efficiency']:.3f}{extra}")
