"""Local worker supervision for `launch/multihost.py --nproc_per_host K`.

Starts K worker processes on this host, each owning a slice of the local devices, writes each
one's output to `log_dir/workerlog.N`, echoes worker 0, and watches them: a failed worker ends
the others and is named; a worker that stops stepping for `stall_timeout` seconds ends the job
(peers of a stuck process would block in the collective forever), and so does one that has not
made its first step `startup_timeout` seconds after it started (a hang while joining, in NCCL
set-up or in the first collective); SIGTERM is passed on so every worker saves at an agreed
step; `max_restarts` restarts the local workers, which resume from the latest checkpoint.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from jaxocr.distributed import ATTEMPT_ENV, PHASES, PROGRESS_ENV
from jaxocr.job_failure import LOST_PEER_EXIT

log = logging.getLogger("jaxocr")

KILL_GRACE_S = 3  # a failed job's survivors are usually blocked in a collective
PREEMPT_GRACE_S = 300


class Worker:
    def __init__(self, rank: int, cmd: list[str], env: dict, log_dir: str, attempt: int = 0):
        self.rank = rank
        self.log_path = os.path.join(log_dir, f"workerlog.{rank}")
        self.progress_path = os.path.join(log_dir, f".progress.{rank}")
        if os.path.exists(self.progress_path):
            os.remove(self.progress_path)
        self.log_file = open(self.log_path, "a")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     env={**env, PROGRESS_ENV: self.progress_path,
                                          ATTEMPT_ENV: str(attempt)},
                                     start_new_session=True)

    def _read(self) -> str:
        try:
            with open(self.progress_path) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def progress(self) -> tuple[int, float] | None:
        """(last step, seconds since it), or None before the first step (init, compile)."""
        text = self._read()
        if not text.isdigit():
            return None
        try:
            return int(text), time.time() - os.path.getmtime(self.progress_path)
        except FileNotFoundError:
            return None

    def phase(self) -> str:
        """How far it got before its first step: one of PHASES, or 'stepping'."""
        text = self._read()
        return "stepping" if text.isdigit() else text if text in PHASES else "started"

    def signal(self, sig):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def describe(self) -> str:
        rc = self.proc.returncode
        how = f"was killed by {signal.Signals(-rc).name}" if rc is not None and rc < 0 \
            else "lost a process on another host" if rc == LOST_PEER_EXIT \
            else f"exited with code {rc}"
        return f"worker {self.rank} (pid {self.proc.pid}) {how}; see {self.log_path}"


def _echo(path: str, stop: threading.Event):
    """Copy worker 0's log to the console as it grows."""
    while not os.path.exists(path) and not stop.is_set():
        time.sleep(0.1)
    with open(path, errors="replace") as f:
        f.seek(0, os.SEEK_END)
        while True:
            line = f.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            elif stop.is_set():
                return
            else:
                time.sleep(0.1)


class Supervisor:
    def __init__(self, commands: list[list[str]], log_dir: str, stall_timeout: float = 0,
                 max_restarts: int = 0, env: dict | None = None, startup_timeout: float = 0):
        self.commands = commands
        self.log_dir = log_dir
        self.stall_timeout = stall_timeout
        self.startup_timeout = startup_timeout
        self.max_restarts = max_restarts
        self.env = dict(env or os.environ)
        self.terminating = False
        os.makedirs(log_dir, exist_ok=True)

    def _on_sigterm(self, signum, frame):
        log.warning("launcher: SIGTERM, asking every worker to checkpoint and stop")
        self.terminating = True
        for w in self.workers:
            w.signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        restarts = 0
        while True:
            rc, message = self._run_once(restarts)
            if rc == 0 or self.terminating:
                return rc
            log.error("launcher: %s", message)
            if restarts >= self.max_restarts:
                return rc
            restarts += 1
            log.warning("launcher: restarting local workers (%d of %d); they resume from the "
                        "latest checkpoint", restarts, self.max_restarts)

    def _run_once(self, attempt: int) -> tuple[int, str]:
        self.workers = [Worker(i, cmd, self.env, self.log_dir, attempt)
                        for i, cmd in enumerate(self.commands)]
        log.info("launcher: started %d workers, logs in %s/workerlog.N", len(self.workers),
                 self.log_dir)
        stop = threading.Event()
        echo = threading.Thread(target=_echo, args=(self.workers[0].log_path, stop), daemon=True)
        echo.start()
        try:
            return self._watch()
        finally:
            self._end_all(PREEMPT_GRACE_S if self.terminating else KILL_GRACE_S)
            stop.set()
            echo.join(timeout=2)
            for w in self.workers:
                w.log_file.close()

    def _watch(self) -> tuple[int, str]:
        while True:
            codes = [w.proc.poll() for w in self.workers]
            # a worker that only lost a peer is not the culprit if the peer failed here too
            failed = sorted((w for w, c in zip(self.workers, codes) if c not in (None, 0)),
                            key=lambda w: (w.proc.returncode == LOST_PEER_EXIT, w.rank))
            if failed:
                return 1, failed[0].describe() + (
                    "; the other workers were stopped" if len(self.workers) > 1 else "")
            if all(c == 0 for c in codes):
                return (143 if self.terminating else 0), "all workers finished"
            if self.startup_timeout and not self.terminating:
                never = self._never_started()
                if never:
                    return 1, never
            if self.stall_timeout and not self.terminating:
                stalled = self._stalled()
                if stalled:
                    return 1, stalled
            time.sleep(0.2)

    def _stalled(self) -> str | None:
        """When the job stops stepping, peers of a stuck worker block in its collective too;
        the stuck one is the worker whose step is behind (the others dispatched further)."""
        seen = [(w, w.progress()) for w in self.workers if w.proc.poll() is None]
        if any(p is None for _, p in seen):  # still starting: one may compile slower than another,
            self._all_stepped_at = None      # while the first ones wait for it in step 1
            return None
        now = time.monotonic()
        if getattr(self, "_all_stepped_at", None) is None:
            self._all_stepped_at = now
        # a fast worker's clock runs from its own first step, while it waited for the others
        since_all = now - self._all_stepped_at
        seen = [(w, (step, min(idle, since_all))) for w, (step, idle) in seen]
        if not any(idle > self.stall_timeout for _, (_, idle) in seen):
            return None
        w, (step, idle) = min(seen, key=lambda wp: (wp[1][0], -wp[1][1]))
        return (f"worker {w.rank} (pid {w.proc.pid}) is stuck: no training step after step "
                f"{step} for {idle:.0f} s (--stall_timeout {self.stall_timeout:g}), so the job "
                f"was stopped; see {w.log_path}")

    def _never_started(self, now: float | None = None) -> str | None:
        """A worker without a first step `startup_timeout` s after its start: the job is hung
        in start-up (the stall watch only begins once every worker has stepped). Blamed: the
        late workers that got least far (a peer that reached its first step waits there for
        the one still setting up)."""
        now = time.monotonic() if now is None else now
        late = [w for w in self.workers if w.proc.poll() is None and w.progress() is None
                and now - w.started > self.startup_timeout]
        if not late:
            return None
        order = list(PHASES)
        phases = {w.rank: w.phase() for w in late}
        least = min(order.index(p) if p in order else 0 for p in phases.values())
        behind = [w for w in late if order.index(phases[w.rank]) == least]
        ahead = [w for w in self.workers if w not in behind and w.proc.poll() is None]
        who = (f"worker {behind[0].rank} (pid {behind[0].proc.pid})" if len(behind) == 1 else
               f"workers {', '.join(str(w.rank) for w in behind)} (pids "
               f"{', '.join(str(w.proc.pid) for w in behind)})")
        elapsed = now - min(w.started for w in behind)
        message = (f"{who} never started training: no first step {elapsed:.0f} s after start "
                   f"(--startup_timeout {self.startup_timeout:g}); {'it' if len(behind) == 1 else 'they'} "
                   f"{PHASES[order[least]]}, "
                   f"so the job was stopped")
        if ahead:
            message += (f" (worker{'s' if len(ahead) > 1 else ''} "
                        f"{', '.join(str(w.rank) for w in ahead)} got further)")
        return message + f"; see {behind[0].log_path}"

    def _end_all(self, grace: float):
        alive = [w for w in self.workers if w.proc.poll() is None]
        if not alive:
            return
        if not self.terminating:
            for w in alive:
                w.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(w.proc.poll() is None for w in alive):
            time.sleep(0.1)
        for w in alive:
            w.signal(signal.SIGKILL)
        for w in alive:
            w.proc.wait()
