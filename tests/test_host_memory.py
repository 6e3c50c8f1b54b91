"""The launch scripts restart once with glibc's huge-page tunable, and it takes effect."""
import os
import subprocess
import sys

import pytest

from jaxocr import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Prints its pid before and after the restart, then mallocs 256 MiB the way XLA does (one big
# block, which glibc maps fresh), touches it, and reports how much of it is on huge pages.
PROBE = """
import ctypes, os
from jaxocr import host_memory
print("before", os.getpid(), flush=True)
host_memory.restart_with_huge_pages()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
size = 256 << 20
block = libc.malloc(ctypes.c_size_t(size))
ctypes.memset(block, 1, size)
huge_kb = sum(int(line.split()[1]) for line in open("/proc/self/smaps_rollup")
              if line.startswith("AnonHugePages:"))
print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES"), huge_kb)
"""


def run_probe():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXOCR_HUGE_PAGES")}
    return subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True).stdout.split("\n")


@pytest.mark.skipif(sys.platform != "linux" or not host_memory.huge_pages_available(),
                    reason="transparent huge pages are not available on this machine")
def test_restarts_once_in_place_and_big_blocks_land_on_huge_pages():
    lines = [l.split() for l in run_probe() if l]
    before = [l for l in lines if l[0] == "before"]
    after = [l for l in lines if l[0] == "after"]
    assert len(before) == 2 and len(after) == 1, lines
    assert before[0][1] == before[1][1] == after[0][1]  # same process, re-executed
    assert after[0][2] == host_memory.TUNABLE
    assert int(after[0][3]) >= 128 << 10  # at least half of the 256 MiB block on huge pages


def test_opt_out_and_already_set_do_not_restart(monkeypatch):
    monkeypatch.setenv("JAXOCR_HUGE_PAGES", "0")
    assert not host_memory.wanted()
    monkeypatch.delenv("JAXOCR_HUGE_PAGES")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    assert not host_memory.wanted()


def test_keeps_other_tunables(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    monkeypatch.setattr(host_memory, "wanted", lambda: True)
    calls = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: calls.append((exe, argv)))
    host_memory.restart_with_huge_pages()
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + host_memory.TUNABLE
    assert calls == [(sys.executable, sys.orig_argv)]
