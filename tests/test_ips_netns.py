"""`--ips` (PaddleOCR-style launch) for real: two network namespaces stand in for two hosts,
joined by a veth pair, and each runs the same command line; each process finds its rank from
its own address, they form one job and train together (gloo CPU collectives across the link).
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import QUICKSTART, ROOT, TINY

JOB_TIMEOUT_S = 400  # two processes compiling the train step on 2 busy cores


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


@pytest.fixture
def netns_pair():
    """Two namespaces with addresses 10.231.X.1 and 10.231.X.2 on a veth link; removed after
    the test (deleting a namespace deletes its end of the veth, and so the pair)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed: apt-get install -y iproute2")
    pid = os.getpid()
    names = [f"jxo-a-{pid}", f"jxo-b-{pid}"]
    links = [f"jxa{pid}", f"jxb{pid}"]  # interface names: at most 15 characters
    subnet = f"10.231.{pid % 250}"
    addresses = [f"{subnet}.1", f"{subnet}.2"]
    created = []
    try:
        for ns in names:
            r = _ip("netns", "add", ns, check=False)
            if r.returncode != 0:
                pytest.skip(f"cannot create a network namespace here: {r.stderr.strip()}")
            created.append(ns)
        _ip("link", "add", links[0], "type", "veth", "peer", "name", links[1])
        for ns, link, address in zip(names, links, addresses):
            _ip("link", "set", link, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", link)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", link, "up")
        yield list(zip(names, addresses))
    finally:
        for ns in created:
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", links[0], check=False)  # if it never reached its namespace


def _stop(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


@pytest.mark.slow
def test_ips_two_hosts_in_network_namespaces(netns_pair, tmp_path):
    save_dir = tmp_path / "out"
    ips = ",".join(address for _, address in netns_pair)
    command = [sys.executable, os.path.join(ROOT, "launch", "multihost.py"), "-c", QUICKSTART,
               "-o", *TINY, "Global.max_steps=2", f"Global.save_model_dir={save_dir}",
               "--ips", ips, "--start_port", "17123", "--init_timeout", "120"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    procs, logs = [], []
    t0 = time.monotonic()
    try:
        for ns, _ in netns_pair:  # the same command line on both "hosts"
            log = open(tmp_path / f"{ns}.log", "w+")
            logs.append(log)
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *command], cwd=ROOT,
                                          env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        for proc in procs:
            try:
                proc.wait(timeout=max(1.0, JOB_TIMEOUT_S - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for proc in procs:
            _stop(proc)
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
            log.close()
    report = "\n".join(f"--- process {i} (exit {p.returncode}) ---\n{out[-3000:]}"
                       for i, (p, out) in enumerate(zip(procs, outputs)))
    assert all(p.returncode == 0 for p in procs), \
        f"not finished with exit 0 within {JOB_TIMEOUT_S} s:\n{report}"
    assert "joined the job: process 0 of 2" in outputs[0], report
    assert "joined the job: process 1 of 2" in outputs[1], report
    assert "global_step: 2" in outputs[0], report
    assert (save_dir / "latest" / "2").is_dir(), report


def test_ips_without_a_local_address_fails_at_once(tmp_path):
    ips = "10.254.254.1,10.254.254.2"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "launch/multihost.py", "-c", QUICKSTART, "-o", *TINY,
                        f"Global.save_model_dir={tmp_path / 'out'}", "--ips", ips,
                        "--init_timeout", "300"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    elapsed = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"none of --ips {ips} is an address of this host" in r.stderr
    assert "Traceback" not in r.stderr
    assert elapsed < 100  # no waiting for peers (--init_timeout is 300)
    assert not (tmp_path / "out").exists()


def test_host_rank_from_ips_finds_the_local_address():
    from jaxocr.distributed import host_rank_from_ips
    assert host_rank_from_ips(["127.0.0.1", "10.254.254.9"]) == 0
