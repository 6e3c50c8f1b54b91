"""Launcher and job-failure logic without real workers: fake processes, a fake coordination
client. (The same paths with real processes are in test_faults.py.)"""
import logging
import threading
import time
import types

import pytest

from jaxocr import jax_internals, job_failure
from jaxocr.launcher import Supervisor


# ---- liveness announcement: all or nothing ----

class FakeCoordination:
    """The coordination service's key-value store and barrier, shared by N fake processes."""

    def __init__(self, n):
        self.store = {}
        self.barrier = threading.Barrier(n)
        self.timeouts = []

    def client(self):
        service = self

        class Client:
            def key_value_set(self, key, value):
                assert key not in service.store
                service.store[key] = value

            def wait_at_barrier(self, barrier_id, timeout_in_ms):
                service.timeouts.append(timeout_in_ms)
                try:
                    service.barrier.wait(timeout=timeout_in_ms / 1000)
                except threading.BrokenBarrierError:
                    raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out") from None

            def key_value_dir_get(self, prefix):
                return [(k, v) for k, v in service.store.items() if k.startswith(prefix)]
        return Client()


@pytest.fixture(autouse=True)
def fresh_job_failure():
    yield
    job_failure._close_listener()
    job_failure._peers.clear()


def test_every_process_that_announces_learns_all_peers():
    service = FakeCoordination(1)
    service.store[f"{job_failure.KEY}1"] = "127.0.0.1:9 otherhost pid 7"
    assert job_failure.announce(service.client(), 0, "127.0.0.1:1", 300, num_processes=2)
    assert job_failure.in_job() and job_failure._listener is not None
    assert service.store[f"{job_failure.KEY}0"].startswith("127.0.0.1:")
    assert service.timeouts == [job_failure.ANNOUNCE_WAIT_S * 1000]  # bounded, not 300 s


def test_one_failed_publication_stops_peer_naming_everywhere_promptly(monkeypatch, caplog):
    """Process 1 cannot open its liveness socket: it publishes the failure, so process 0 does
    not wait for it; both carry on without peer naming and warn, naming process 1."""
    service = FakeCoordination(2)
    real_open = job_failure._open_listener

    def open_listener(coordinator):
        if threading.current_thread().name == "process 1":
            raise OSError("Address not available")
        return real_open(coordinator)

    monkeypatch.setattr(job_failure, "_open_listener", open_listener)
    results = {}

    def process(pid):  # exchange(): the per-process part of announce, no module globals
        value = "127.0.0.1:9 host pid 1"
        try:
            value = job_failure._open_listener("127.0.0.1:1")
        except OSError as e:
            value = f"{job_failure.FAILED}OSError: {e}"
        results[pid] = job_failure.exchange(service.client(), pid, value, 300, 2)

    t0 = time.monotonic()
    threads = [threading.Thread(target=process, args=(p,), name=f"process {p}") for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert time.monotonic() - t0 < 10
    for pid in (0, 1):
        peers, why = results[pid]
        assert peers is None
        assert "process 1 could not open its liveness socket" in why
        assert "Address not available" in why
    job_failure._close_listener()

    # announce() itself, as process 0 after process 1 published its failure
    solo = FakeCoordination(1)
    solo.store[f"{job_failure.KEY}1"] = f"{job_failure.FAILED}OSError: Address not available"
    with caplog.at_level(logging.WARNING, logger="jaxocr"):
        assert not job_failure.announce(solo.client(), 0, "127.0.0.1:1", 300, 2)
    assert not job_failure.in_job() and job_failure._listener is None  # nothing left open
    assert "a lost process will not be named" in caplog.text and "process 1" in caplog.text


def test_a_process_that_cannot_open_its_socket_still_publishes(monkeypatch, caplog):
    monkeypatch.setattr(job_failure, "local_ip_towards",
                        lambda address: (_ for _ in ()).throw(OSError("Network is unreachable")))
    solo = FakeCoordination(1)
    solo.store[f"{job_failure.KEY}0"] = "127.0.0.1:9 host0 pid 5"
    with caplog.at_level(logging.WARNING, logger="jaxocr"):
        assert not job_failure.announce(solo.client(), 1, "10.0.0.1:1234", 300, 2)
    assert solo.store[f"{job_failure.KEY}1"].startswith(job_failure.FAILED)
    assert "Network is unreachable" in solo.store[f"{job_failure.KEY}1"]
    assert not job_failure.in_job()
    # no coordinator address at all (private API missing): published as a failure too
    solo = FakeCoordination(1)
    assert not job_failure.announce(solo.client(), 0, None, 300, 1)
    assert solo.store[f"{job_failure.KEY}0"].startswith(job_failure.FAILED)


def test_a_process_that_never_announces_costs_a_bounded_wait(monkeypatch, caplog):
    monkeypatch.setattr(job_failure, "ANNOUNCE_WAIT_S", 0.5)
    service = FakeCoordination(2)  # process 1 never comes
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="jaxocr"):
        assert not job_failure.announce(service.client(), 0, "127.0.0.1:1", 300, 2)
    assert time.monotonic() - t0 < 5
    assert not job_failure.in_job() and job_failure._listener is None
    assert "not every process announced itself within 0.5 s" in caplog.text


def test_a_missing_entry_is_a_failure_too():
    solo = FakeCoordination(1)  # the barrier passed, but process 2 wrote nothing
    solo.store[f"{job_failure.KEY}1"] = "127.0.0.1:9 h pid 1"
    assert not job_failure.announce(solo.client(), 0, "127.0.0.1:1", 300, 3)


# ---- start-up watch ----

def fake_worker(rank, phase, started, alive=True):
    w = types.SimpleNamespace(rank=rank, started=started, log_path=f"log/workerlog.{rank}",
                              proc=types.SimpleNamespace(pid=1000 + rank,
                                                         poll=lambda: None if alive else 0))
    w.progress = lambda: (5, 1.0) if phase == "stepping" else None
    w.phase = lambda: phase
    return w


def supervisor(timeout, workers):
    s = Supervisor([], "/tmp/unused-log-dir", startup_timeout=timeout)
    s.workers = workers
    return s


def test_a_worker_that_never_steps_is_named_with_how_far_it_got():
    now = 1000.0
    s = supervisor(60, [fake_worker(0, "ready", now - 61), fake_worker(1, "joined", now - 61)])
    message = s._never_started(now)
    assert message.startswith("worker 1 (pid 1001) never started training")
    assert "--startup_timeout 60" in message and "had joined the job" in message
    assert "worker 0 got further" in message and "workerlog.1" in message


def test_startup_watch_waits_for_the_timeout_and_ignores_stepping_workers():
    now = 1000.0
    assert supervisor(60, [fake_worker(0, "joined", now - 59)])._never_started(now) is None
    assert supervisor(60, [fake_worker(0, "stepping", now - 600)])._never_started(now) is None
    # one already dispatched its first step (it waits in it for the other): the other is blamed
    s = supervisor(60, [fake_worker(0, "stepping", now - 61), fake_worker(1, "ready", now - 61)])
    assert s._never_started(now).startswith("worker 1 (pid 1001) never started training")


def test_workers_stuck_at_the_same_point_are_all_named():
    now = 1000.0
    s = supervisor(30, [fake_worker(0, "started", now - 31), fake_worker(1, "started", now - 31)])
    message = s._never_started(now)
    assert message.startswith("workers 0, 1 (pids 1000, 1001) never started training")
    assert "they had not joined the job" in message


def test_progress_file_phases(tmp_path):
    from jaxocr.distributed import _write_progress
    from jaxocr.launcher import Worker
    w = Worker.__new__(Worker)
    w.progress_path = str(tmp_path / ".progress.0")
    assert w.progress() is None and w.phase() == "started"
    _write_progress(w.progress_path, "joined")
    assert w.progress() is None and w.phase() == "joined"
    _write_progress(w.progress_path, "ready")
    assert w.phase() == "ready"
    _write_progress(w.progress_path, "12")
    assert w.progress()[0] == 12 and w.phase() == "stepping"


# ---- private JAX API ----

def test_private_jax_apis_exist_in_this_jax():
    import jax
    assert jax_internals.version_checked(jax.__version__), jax.__version__
    assert jax_internals.distributed_client() is None  # not initialised in tests
    assert jax_internals.coordinator_address() is None
    with pytest.raises(jax_internals.Unavailable):
        jax_internals.bind_cpu_gloo("127.0.0.1")  # needs a client; the names resolve first
    from jax._src import xla_bridge
    from jax._src.lib import _jax
    assert callable(_jax.make_gloo_tcp_collectives)
    assert callable(xla_bridge.register_backend_factory)
    assert callable(xla_bridge.make_cpu_client)
    assert not jax_internals.version_checked("0.12.0")
    assert jax_internals.version_checked("0.11.1")



# ---- where the coordinator listens ----

def test_the_coordinator_binds_to_the_address_it_was_given_not_every_interface():
    from jaxocr.distributed import LaunchError, cluster_from_flags, coordinator_bind_address
    given = cluster_from_flags(coordinator="127.0.0.1:1234", num_processes=2, process_id=0)
    assert coordinator_bind_address(given) == "127.0.0.1:1234"
    by_name = cluster_from_flags(coordinator="localhost:1234", num_processes=2, process_id=0)
    assert coordinator_bind_address(by_name) == "localhost:1234"
    assert coordinator_bind_address(cluster_from_flags(
        coordinator="127.0.0.1:1234", num_processes=2, process_id=1)) is None  # not its service
    asked = cluster_from_flags(coordinator="192.0.2.1:1234", num_processes=2, process_id=0,
                               coordinator_bind_address="0.0.0.0:1234")
    assert coordinator_bind_address(asked) == "0.0.0.0:1234"
    # 192.0.2.0/24 is reserved for documentation: never this host's address
    elsewhere = cluster_from_flags(coordinator="192.0.2.1:1234", num_processes=2, process_id=0)
    with pytest.raises(LaunchError, match="not an address of this host.*--coordinator_bind_address"):
        coordinator_bind_address(elsewhere)
