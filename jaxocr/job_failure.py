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

_peers: dict[int, str] = {}  # process id -> "ip:port host pid", for every process of the job
_listener: socket.socket | None = None
_me = 0


def in_job() -> bool:
    return len(_peers) > 1


def _local_ip_towards(address: str) -> str:
    """This host's address on the route to `address` (a UDP connect sends nothing)."""
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, int(port)))
        return s.getsockname()[0]


def announce(client, process_id: int, coordinator: str, timeout_s: float):
    """Open this process's liveness socket and learn every peer's (call right after joining)."""
    global _listener, _me
    _me = process_id
    ip = _local_ip_towards(coordinator)
    _listener = socket.create_server((ip, 0), family=socket.AF_INET6 if ":" in ip
                                     else socket.AF_INET, backlog=128)
    # a forked child (a data-loader worker) must not keep answering for a dead parent
    os.register_at_fork(after_in_child=_listener.close)
    port = _listener.getsockname()[1]
    client.key_value_set(f"{KEY}{process_id}",
                         f"{ip}:{port} {socket.gethostname()} pid {os.getpid()}")
    client.wait_at_barrier("jaxocr_alive", int(timeout_s * 1000))
    for key, value in client.key_value_dir_get(KEY):
        _peers[int(key.rsplit("/", 1)[1])] = value


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
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
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
