"""The example job files in launch/examples/ stay runnable: their command lines parse with
launch/multihost.py's own flags, name a config that exists and overrides keys it has, and the
multi-host settings (process count, rank, coordinator host) agree with the job around them."""
import importlib.util
import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT

EXAMPLES = os.path.join(ROOT, "launch", "examples")
SBATCH = os.path.join(EXAMPLES, "slurm.sbatch")
K8S = os.path.join(EXAMPLES, "k8s_indexed_job.yaml")
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def _parser():
    """launch/multihost.py's own parser, without argparse's prefix matching: the example must
    spell every flag in full, so renaming one (even to a longer name) fails these tests."""
    p = _multihost().parser()
    p.allow_abbrev = False
    return p


def _multihost():
    spec = importlib.util.spec_from_file_location("_multihost_example_check",
                                                  os.path.join(ROOT, "launch", "multihost.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_launch_argv(argv):
    """argv: what follows `python`; returns the parsed flags of launch/multihost.py."""
    assert argv[0] == "launch/multihost.py", argv
    args = _parser().parse_args(argv[1:])  # a renamed flag: SystemExit here
    assert not os.path.isabs(args.config) and args.config.startswith("configs/"), args.config
    assert os.path.isfile(os.path.join(ROOT, args.config)), f"{args.config} is not in the repo"
    from jaxocr.config import load_config, parse_overrides
    cfg = load_config(os.path.join(ROOT, args.config), parse_overrides(args.opt))  # keys exist
    assert cfg["Global"]["save_model_dir"].startswith("/shared/"), "checkpoints on shared storage"
    assert cfg["Global"]["auto_resume"] is True  # a requeued / replaced job continues its run
    return args


# ---- SLURM ----------------------------------------------------------------------------------

def _sbatch():
    with open(SBATCH) as f:
        text = f.read()
    directives = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH"):
            key, _, value = line.split(None, 1)[1].partition("=")
            directives[key] = value.strip()
    # the srun command: backslash continuations joined, comments dropped
    lines = [line for line in text.replace("\\\n", " ").splitlines()
             if not line.lstrip().startswith("#")]
    sruns = [line.strip() for line in lines if line.strip().startswith("srun ")]
    assert len(sruns) == 1, sruns
    return text, directives, shlex.split(sruns[0])


def test_sbatch_directives():
    text, d, _ = _sbatch()
    assert text.startswith("#!/bin/bash\n")
    assert d["--nodes"] == "2"
    assert d["--ntasks-per-node"] == "1"  # one process per node drives all its GPUs
    assert d["--gpus-per-node"] == "8"
    assert int(d["--cpus-per-task"]) > 0
    assert re.fullmatch(r"(\d+-)?\d+:\d\d:\d\d", d["--time"]), d["--time"]
    assert d["--output"].startswith("/shared/") and "%j" in d["--output"]
    assert "--requeue" in d and d["--signal"].startswith("B:USR1@")
    assert "scontrol requeue" in text and "trap on_time_limit USR1" in text
    # JAX_LOCAL_DEVICE_IDS lists every GPU of the node: without it jax.distributed's SLURM
    # detection gives the one process per node only GPU SLURM_LOCALID
    m = re.search(r"^export JAX_LOCAL_DEVICE_IDS=(\S+)$", text, re.M)
    assert m, "slurm.sbatch must export JAX_LOCAL_DEVICE_IDS (one process drives all GPUs)"
    assert m.group(1).split(",") == [str(i) for i in range(int(d["--gpus-per-node"]))]
    bash = shutil.which("bash")
    assert bash, "bash is needed to syntax-check slurm.sbatch"
    r = subprocess.run([bash, "-n", SBATCH], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_sbatch_srun_line_parses_with_multihost_flags():
    text, _, tokens = _sbatch()
    # srun runs in the background so that the script's TERM/USR1 traps run while it trains
    assert tokens[-1] == "&", tokens[-3:]
    assert re.search(r"^SRUN_PID=\$!$", text, re.M) and 'wait "$SRUN_PID"' in text
    tokens = tokens[:-1]
    i = tokens.index("python")
    assert i > 1 and all(t.startswith("-") for t in tokens[1:i]), f"srun options only: {tokens}"
    assert "--kill-on-bad-exit=1" in tokens[1:i]  # a dead process ends the job step
    args = _check_launch_argv(tokens[i + 1:])
    # SLURM provides the job's layout: no explicit placement flags
    assert args.coordinator is None and args.ips is None and args.process_id is None
    assert args.nproc_per_host is None


# ---- Kubernetes -----------------------------------------------------------------------------

def _k8s():
    with open(K8S) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    assert len(by_kind["Job"]) == 1 and len(by_kind["Service"]) == 1
    return by_kind


def _expand_k8s(arg, env, values):
    """Kubernetes' $(VAR) expansion in command/args: only variables defined in the container's
    env are replaced; anything else stays literally (and would reach argparse as text)."""
    def sub(m):
        name = m.group(1)
        return values[name] if name in env else m.group(0)
    escaped = arg.replace("$$", "\0")  # $$ is a literal $
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, escaped).replace("\0", "$")


def test_k8s_indexed_job_and_headless_service():
    by_kind = _k8s()
    job, svc = by_kind["Job"][0], by_kind["Service"][0]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert job["apiVersion"] == "batch/v1" and spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] == 2
    # headless Service named by the pods' subdomain, selecting the Job's pods
    assert svc["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == svc["metadata"]["name"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"] and svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"].get("publishNotReadyAddresses") is True
    (container,) = pod["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    # a shared (ReadWriteMany) volume mounted where the checkpoints go
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    (shared,) = [n for n in claims if mounts.get(n) == "/shared"]
    pvcs = {p["metadata"]["name"]: p for p in by_kind.get("PersistentVolumeClaim", [])}
    assert claims[shared] in pvcs, f"the claim {claims[shared]} is defined in the example"
    assert "ReadWriteMany" in pvcs[claims[shared]]["spec"]["accessModes"]


def test_k8s_command_line_parses_and_matches_the_job():
    by_kind = _k8s()
    job, svc = by_kind["Job"][0], by_kind["Service"][0]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    argv = [str(a) for a in container.get("command", []) + container.get("args", [])]
    env = {e["name"]: e for e in container.get("env", [])}
    shell_form = argv[0] in ("sh", "bash", "/bin/sh", "/bin/bash") and argv[1] == "-c"
    if shell_form:
        # shell form: the shell expands $JOB_COMPLETION_INDEX, which the Job controller sets
        argv = shlex.split(argv[2])
        argv = argv[1:] if argv[0] == "exec" else argv
        index_refs = {"$JOB_COMPLETION_INDEX", "${JOB_COMPLETION_INDEX}"}
        expanded = list(argv)
    else:
        # $(VAR) form: expanded by Kubernetes only if the container defines the variable
        assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == INDEX_ANNOTATION
        index_refs = {"$(JOB_COMPLETION_INDEX)"}
        expanded = [_expand_k8s(a, env, {"JOB_COMPLETION_INDEX": "1"}) for a in argv]
    assert os.path.basename(argv[0]).startswith("python"), argv
    i = argv.index("--process_id")
    assert argv[i + 1] in index_refs, f"--process_id {argv[i + 1]} is not the completion index"
    if shell_form:  # the shell expands it in the pod: what pod 1 gets
        expanded[i + 1] = "1"
    assert expanded[i + 1] == "1", expanded[i + 1]  # $(VAR) form: Kubernetes expanded it
    args = _check_launch_argv(expanded[1:])
    assert args.process_id == 1
    assert args.num_processes == job["spec"]["parallelism"]
    host, port = args.coordinator.rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    service_ports = [p["port"] for p in svc["spec"].get("ports", [])]
    assert int(port) in service_ports, (port, service_ports)
    container_ports = [p["containerPort"] for p in container.get("ports", [])]
    assert int(port) in container_ports, (port, container_ports)
    assert args.ips is None and args.nproc_per_host is None


@pytest.mark.parametrize("spelling", ["--coordinator_old", "--num_proc", "--process"])
def test_the_check_rejects_unknown_and_abbreviated_flags(spelling):
    """The parser used above rejects a flag the launcher no longer has, and a prefix of one
    (what an old name becomes if the launcher's flag is renamed to a longer name)."""
    argv = ["-c", "configs/rec/quickstart_crnn.yml", spelling, "1"]
    with pytest.raises(SystemExit):
        _parser().parse_args(argv)


def test_stall_watch_waits_for_every_worker_to_start_then_blames_the_one_behind(tmp_path):
    from jaxocr.launcher import Supervisor

    class FakeWorker:
        def __init__(self, rank, progress):
            self.rank, self._progress = rank, progress
            self.proc = type("P", (), {"pid": 100 + rank, "poll": lambda self: None})()
            self.log_path = f"log/workerlog.{rank}"

        def progress(self):
            return self._progress

    sup = Supervisor([], str(tmp_path), stall_timeout=15)
    # worker 0 finished compiling and waits in step 1 for worker 1, still compiling: no stall
    sup.workers = [FakeWorker(0, (1, 40.0)), FakeWorker(1, None)]
    assert sup._stalled() is None
    # worker 1 just wrote its first step: worker 0's 40 s idle was waiting for it, no stall
    sup.workers = [FakeWorker(0, (1, 40.0)), FakeWorker(1, (1, 0.0))]
    assert sup._stalled() is None
    # both stepping, worker 1 stuck at step 3 while worker 0 dispatched step 4
    import time
    sup._all_stepped_at = time.monotonic() - 100
    sup.workers = [FakeWorker(0, (4, 20.0)), FakeWorker(1, (3, 21.0))]
    assert sup._stalled().startswith("worker 1 (pid 101) is stuck: no training step after step 3")
    sup.workers = [FakeWorker(0, (4, 5.0)), FakeWorker(1, (3, 6.0))]
    assert sup._stalled() is None


# ---- --nproc_per_host -----------------------------------------------------------------------
PLACEMENT = {"coordinator", "num_processes", "process_id", "nproc_per_host", "local_rank",
             "workers_per_host", "ips", "start_port", "gpus", "log_dir", "stall_timeout",
             "startup_timeout", "max_restarts"}


@pytest.mark.parametrize("flags", [["--eval"], ["--init_timeout", "77", "--shutdown_timeout", "9"]])
def test_local_workers_get_every_training_flag_of_the_launch(monkeypatch, flags):
    """`--nproc_per_host K` restarts the launcher as K workers: each must train with the same
    config, overrides and flags (a dropped `--eval` silently skipped PP-YOLOE's evaluation)."""
    import jaxocr.launcher
    multihost = _multihost()
    started = []

    class Recorder:
        def __init__(self, commands, *args, **kwargs):
            started.extend(commands)

        def run(self):
            return 0

    monkeypatch.setattr(jaxocr.launcher, "Supervisor", Recorder)
    quickstart = os.path.join(ROOT, "configs", "rec", "quickstart_crnn.yml")
    launch = multihost.parser().parse_args(
        ["-c", quickstart, "-o", "Global.epoch_num=3", "--nproc_per_host", "2",
         "--cpu_devices_per_process", "1", *flags])
    assert multihost.supervise(launch) == 0
    assert len(started) == 2
    for rank, cmd in enumerate(started):
        worker = multihost.parser().parse_args(cmd[2:])
        assert worker.process_id == rank and worker.num_processes == 2
        differs = {k for k, v in vars(launch).items() if getattr(worker, k) != v} - PLACEMENT
        assert not differs, {k: (getattr(launch, k), getattr(worker, k)) for k in differs}
