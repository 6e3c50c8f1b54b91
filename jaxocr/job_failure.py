"""When one process of a multi-process job fails, the others must leave fast and say who is gone.

A collective with a dead peer fails at once on CPU (gloo: "Connection reset by peer") but names
only a socket, and leaving normally would then wait in JAX's shutdown barrier until the dead
peer's heartbeat times out (--heartbeat_timeout), and end in an abort. So each process keeps a
listening socket open for its whole life and publishes its address at join time; after a
failure the survivors try to connect to every peer: a dead process refuses at once (the kernel
closed its socket), a dead host does not answer. Then the process logs what it found and exits
without the barrier; the latest checkpoint is intact.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import socket

log = logging.getLogger("jaxocr")

KEY = "jaxocr/alive/"
LOST_PEER_EXIT = 75  # EX_TEMPFAIL: this process is fine, another one is gone (the launcher
                     # blames the other)
PROBE_TIMEOUT_S = 3
ANNOUNCE_WAIT_S = 120  # every process has joined when it announces: this is only a safety bound
BARRIER = "jaxocr_alive"
FAILED = "unavailable: "  # the published entry of a process that could not open its socket

_peers: dict[int, str] = {}  # process id -> "ip:port host pid", for every process of the job
_listener: socket.socket | None = None
_me = 0


def in_job() -> bool:
    return len(_peers) > 1


def local_ip_towards(address: str) -> str:
    """This host's address on the route to `address` (a UDP connect sends nothing)."""
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, int(port)))
        return s.getsockname()[0]


def _open_listener(coordinator: str | None) -> str:
    """Open this process's liveness socket; its published entry, 'ip:port host pid N'."""
    global _listener
    if not coordinator:
        raise RuntimeError("the coordinator address is unknown")
    ip = local_ip_towards(coordinator)
    _listener = socket.create_server((ip, 0), family=socket.AF_INET6 if ":" in ip
                                     else socket.AF_INET, backlog=128)
    # a forked child (a data-loader worker) must not keep answering for a dead parent
    os.register_at_fork(after_in_child=_listener.close)
    port = _listener.getsockname()[1]
    return f"{ip}:{port} {socket.gethostname()} pid {os.getpid()}"


def _close_listener():
    global _listener
    if _listener is not None:
        _listener.close()
        _listener = None


def announce(client, process_id: int, coordinator: str | None, timeout_s: float,
             num_processes: int | None = None) -> bool:
    """Open this process's liveness socket and learn every peer's (call right after joining).

    All or nothing: a process that cannot open its socket still publishes (a failure note), so
    the others do not wait for it; every process then reads the same entries and, if any
    process failed, none of them names peers (a warning says why). The wait for the slowest
    process is bounded (ANNOUNCE_WAIT_S, or timeout_s if shorter): all have just joined.
    True if peers will be named.
    """
    global _me
    _me = process_id
    _peers.clear()
    _close_listener()
    try:
        value = _open_listener(coordinator)
    except Exception as e:
        value = f"{FAILED}{type(e).__name__}: {_first_line(e)}"
    peers, why = exchange(client, process_id, value, min(float(timeout_s), ANNOUNCE_WAIT_S),
                          num_processes)
    if peers is None:
        _close_listener()
        log.warning("process %d: peers cannot be probed (%s): a lost process will not be named",
                    process_id, why)
        return False
    _peers.update(peers)
    return True


def exchange(client, process_id: int, value: str, wait_s: float,
             num_processes: int | None = None) -> tuple[dict[int, str] | None, str]:
    """Publish `value`, wait (at most wait_s) until every process has, and read them all:
    ({process id: entry}, "") if every process opened its socket, else (None, why)."""
    try:
        client.key_value_set(f"{KEY}{process_id}", value)
        client.wait_at_barrier(BARRIER, int(wait_s * 1000))
        entries = {int(k.rsplit("/", 1)[1]): v for k, v in client.key_value_dir_get(KEY)}
    except Exception as e:  # a missing process (barrier deadline) or a broken client
        return None, (f"not every process announced itself within {wait_s:g} s: "
                      f"{type(e).__name__}: {_first_line(e)}")
    failed = {p: v[len(FAILED):] for p, v in sorted(entries.items()) if v.startswith(FAILED)}
    if failed:
        return None, "; ".join(f"process {p} could not open its liveness socket ({why})"
                               for p, why in failed.items())
    missing = sorted(set(range(num_processes or 0)) - set(entries))
    if missing:
        return None, f"processes {missing} did not announce themselves"
    return entries, ""


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _answers(entry: str) -> bool:
    address = entry.split()[0]
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def lost_peers() -> dict[int, str]:
    """The peers that no longer answer on their liveness socket, probed in parallel."""
    others = {p: e for p, e in _peers.items() if p != _me}
    if not others:
        return {}
    with concurrent.futures.ThreadPoolExecutor(min(32, len(others))) as pool:
        alive = dict(zip(others, pool.map(_answers, others.values())))
    return {p: others[p] for p, ok in alive.items() if not ok}


def leave(error: BaseException, code: int = 1):
    """Log why this process stops (naming lost peers) and exit without JAX's shutdown barrier,
    which would wait for the dead until their heartbeat times out. Code 2: a launch or config
    error, reported as such."""
    first = _first_line(error)
    me = f"process {_me} of {len(_peers)}"
    lost = lost_peers() if code == 1 else {}
    if code != 1:
        log.error("%s: %s", me, first)
    elif lost:
        names = "; ".join(f"process {p} ({e.split(' ', 1)[1]}, {e.split()[0]})"
                          for p, e in sorted(lost.items()))
        log.error("%s: lost %s: it no longer answers, so the job cannot go on and this process "
                  "stops (the latest checkpoint is intact). %s: %s", me, names,
                  type(error).__name__, first)
        code = LOST_PEER_EXIT
    else:
        log.error("%s failed, so the job stops (the latest checkpoint is intact): %s: %s", me,
                  type(error).__name__, first, exc_info=error)
    logging.shutdown()
    os._exit(code)
