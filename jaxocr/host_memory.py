"""Host memory for XLA's CPU backend on transparent huge pages.

On the CPU, each call of a compiled step mallocs its scratch buffer (8.6 GB for CRNN at batch
256), and glibc maps a buffer that large fresh every time: the kernel then faults it in 4 KiB
at a time, about two million page faults per step, a third of the step time. glibc backs such
mappings with 2 MiB transparent huge pages when GLIBC_TUNABLES asks for it, but reads that
variable only when a process starts, so the launch scripts restart themselves once with it set.
`JAXOCR_HUGE_PAGES=0` turns this off.
"""
from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_available() -> bool:
    try:
        with open(THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def wanted() -> bool:
    return (sys.platform == "linux" and os.environ.get("JAXOCR_HUGE_PAGES", "1") != "0"
            and "glibc.malloc.hugetlb" not in os.environ.get("GLIBC_TUNABLES", "")
            and huge_pages_available())


def restart_with_huge_pages():
    """Re-exec this process (same pid, same command line) with the glibc tunable set."""
    if not wanted():
        return
    tunables = os.environ.get("GLIBC_TUNABLES")
    os.environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)
