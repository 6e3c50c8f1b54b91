"""Which GPUs each process gets, decided without JAX and without GPUs (faked counts)."""
import os
import subprocess
import sys

import pytest

from conftest import QUICKSTART, ROOT, TINY
from jaxocr.distributed import (LaunchError, cluster_env_devices, local_gpu_count,
                                split_local_devices, tasks_on_this_node)


def test_workers_split_the_local_gpus_evenly_in_order():
    assert split_local_devices(2, gpu_count=8) == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]
    assert split_local_devices(4, gpu_count=4) == [["0"], ["1"], ["2"], ["3"]]
    assert split_local_devices(1, gpu_count=2) == [["0", "1"]]
    assert split_local_devices(2, gpus=["4", "5", "6", "7"]) == [["4", "5"], ["6", "7"]]


def test_no_gpus_means_cpu_nothing_to_split():
    assert split_local_devices(2, gpu_count=0) is None
    assert split_local_devices(3) is None


@pytest.mark.parametrize("k,count,gpus", [(3, 8, None), (2, 3, None), (4, 2, None),
                                          (2, 0, ["0", "1", "2"])])
def test_an_uneven_split_is_a_clear_error(k, count, gpus):
    with pytest.raises(LaunchError, match="do not split evenly over --nproc_per_host"):
        split_local_devices(k, gpus=gpus, gpu_count=count)


def test_gpu_count_prefers_cuda_visible_devices(tmp_path):
    never = ("/nonexistent/nvidia-smi",)
    assert local_gpu_count({"CUDA_VISIBLE_DEVICES": "2,3,5"}, smi=never)[0] == 3
    assert local_gpu_count({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}, smi=never)[0] == 2
    assert local_gpu_count({"CUDA_VISIBLE_DEVICES": ""}, smi=never)[0] == 0
    assert local_gpu_count({"CUDA_VISIBLE_DEVICES": "0,-1,1"}, smi=never)[0] == 1
    assert local_gpu_count({"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "0,1"})[0] == 0


def test_gpu_count_from_nvidia_smi_then_proc(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n"
                   "echo 'GPU 0: NVIDIA H200 (UUID: GPU-1)'\n"
                   "echo '  MIG 1g.18gb Device 0: (UUID: MIG-1)'\n"
                   "echo 'GPU 1: NVIDIA H200 (UUID: GPU-2)'\n")
    smi.chmod(0o755)
    assert local_gpu_count({}, smi=(str(smi), "-L")) == (2, "nvidia-smi -L")
    proc = tmp_path / "gpus"
    for bus in ("0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0"):
        (proc / bus).mkdir(parents=True)
    never = ("/nonexistent/nvidia-smi",)
    assert local_gpu_count({}, smi=never, proc_dir=str(proc)) == (4, str(proc))
    assert local_gpu_count({}, smi=never, proc_dir=str(tmp_path / "none"))[0] == 0


SLURM = {"SLURM_JOB_ID": "42", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "2",
         "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
         "SLURM_STEP_NUM_NODES": "2"}


def test_slurm_one_task_per_node_uses_every_gpu_of_the_node():
    # jax alone would give local_device_ids=[SLURM_LOCALID] = [0]: one GPU of the eight
    env = {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}
    ids, why = cluster_env_devices(env, 8, "nvidia-smi -L")
    assert ids == list(range(8))
    assert "one task on this node" in why and "all 8 local GPUs" in why
    # no per-node variable: tasks == nodes
    ids, _ = cluster_env_devices(SLURM, 4)
    assert ids == [0, 1, 2, 3]


def test_slurm_several_tasks_per_node_keep_jaxs_one_gpu_each():
    env = {**SLURM, "SLURM_NTASKS": "16", "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
           "SLURM_LOCALID": "3"}
    ids, why = cluster_env_devices(env, 8)
    assert ids is None and "8 tasks on this node" in why and "GPU 3" in why


def test_slurm_uneven_nodes_count_this_nodes_tasks():
    env = {**SLURM, "SLURM_NTASKS": "3", "SLURM_STEP_TASKS_PER_NODE": "2,1"}
    assert tasks_on_this_node({**env, "SLURM_NODEID": "0"}) == 2
    assert tasks_on_this_node({**env, "SLURM_NODEID": "1"}) == 1
    assert cluster_env_devices({**env, "SLURM_NODEID": "1"}, 2)[0] == [0, 1]
    assert cluster_env_devices({**env, "SLURM_NODEID": "0"}, 2)[0] is None


def test_open_mpi_one_process_per_node_and_cpu_nodes():
    env = {"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
           "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
    ids, why = cluster_env_devices(env, 4)
    assert ids == [0, 1, 2, 3] and why.startswith("Open MPI")
    assert cluster_env_devices({**SLURM, "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}, 0) == (None, "")


def test_initialize_passes_all_node_gpus_to_jax_under_slurm(monkeypatch):
    """The decision reaches jax.distributed.initialize (faked: nothing is started)."""
    import jax
    from jaxocr import distributed
    seen = {}

    def fake_initialize(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    for k, v in {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(distributed, "local_gpu_count", lambda: (8, "nvidia-smi -L"))
    monkeypatch.setattr(jax.distributed, "initialize", fake_initialize)
    with pytest.raises(LaunchError, match="stop here"):
        distributed.initialize(distributed.Cluster())
    assert seen["local_device_ids"] == list(range(8))


def test_launcher_gives_each_worker_its_block_of_the_counted_gpus(tmp_path):
    """launch/multihost.py --nproc_per_host 2 with 4 faked GPUs (CUDA_VISIBLE_DEVICES): the
    worker commands carry --gpus 0,1 and 2,3. The workers themselves are faked too."""
    fake = tmp_path / "fake_supervisor.py"
    fake.write_text(
        "import json, sys, runpy\n"
        "import jaxocr.launcher as L\n"
        "class S:\n"
        "    def __init__(self, commands, *a, **k): self.commands = commands\n"
        "    def run(self):\n"
        "        print(json.dumps([c[c.index('--gpus') + 1] if '--gpus' in c else None\n"
        "                          for c in self.commands])); return 0\n"
        "L.Supervisor = S\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    cmd = [sys.executable, str(fake), "launch/multihost.py", "-c", QUICKSTART, "-o", *TINY,
           "--nproc_per_host", "2", "--log_dir", str(tmp_path / "log")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "4,5,6,7", "JAX_PLATFORMS": "",
           "PYTHONPATH": ROOT}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == '["0,1", "2,3"]'
    assert "worker 0: 0,1; worker 1: 2,3" in r.stderr
    r = subprocess.run(cmd[:-4] + ["--nproc_per_host", "3"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 2 and "the 4 local GPUs do not split evenly" in r.stderr
