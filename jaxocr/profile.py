"""Where a train step's time goes: a `jax.profiler` trace, attributed to the model's parts.

XLA's CPU and GPU runtimes record one trace event per executed HLO op (`args.hlo_op`); the
compiled HLO text maps each op to the JAX source path it came from (`metadata op_name`, e.g.
`transpose(jvp(BaseModel))/backbone/blocks_3/bottleneck_conv/...`). Self time (an op's time
minus the ops nested in it, such as a while loop's body) is summed per part and direction.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

_OP = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name="([^"]*)"', re.M)

PARTS = (  # first match wins; (substring of op_name, part)
    ("bottleneck_conv", "backbone: depthwise convs"),
    ("expand_conv", "backbone: 1x1 convs"),
    ("linear_conv", "backbone: 1x1 convs"),
    ("/conv2/", "backbone: 1x1 convs"),
    ("mid_se", "backbone: squeeze-excite"),
    ("/backbone/", "backbone: other"),
    ("/neck/", "neck"),
    ("/head/", "head"),
)


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX op path it was traced from."""
    return {m.group(1): m.group(2) for m in _OP.finditer(hlo_text)}


def part_of(op_name: str | None, hlo_op: str) -> str:
    if "all-reduce" in hlo_op or "all_reduce" in hlo_op:
        return "gradient all-reduce"
    if not op_name:
        return "other"
    direction = "backward" if "transpose(" in op_name else "forward"
    for key, part in PARTS:
        if key in op_name:
            return f"{part}, {direction}"
    if "BaseModel" not in op_name and "while" in op_name:
        return "CTC loss (forward and backward)"
    return "optimizer and other elementwise"


def self_times(events: list[dict]) -> list[tuple[dict, float]]:
    """(event, self time in us) for complete events, children subtracted per thread."""
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    out = []
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []  # [event, end, child time]
        for e in evs:
            while stack and e["ts"] >= stack[-1][1]:
                done = stack.pop()
                out.append((done[0], done[0]["dur"] - done[2]))
            if stack:
                stack[-1][2] += e["dur"]
            stack.append([e, e["ts"] + e["dur"], 0.0])
        out.extend((d[0], d[0]["dur"] - d[2]) for d in stack)
    return out


def load_trace(trace_dir: str) -> list[dict]:
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                             recursive=True), key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    with gzip.open(paths[-1]) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def breakdown(trace_dir: str, hlo_text: str, steps: int) -> dict[str, float]:
    """Milliseconds per step of op time (summed over threads) for each part of the model."""
    names = hlo_op_names(hlo_text)
    totals: dict[str, float] = collections.Counter()
    for event, self_us in self_times(load_trace(trace_dir)):
        hlo_op = (event.get("args") or {}).get("hlo_op")
        if hlo_op:
            totals[part_of(names.get(hlo_op), hlo_op)] += self_us / 1e3 / steps
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


_ALL_REDUCE = re.compile(r"all-reduce(?:-start)?\(")


def _computations(hlo_text: str) -> dict[str, str]:
    comps, name = {}, None
    for line in hlo_text.splitlines():
        m = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and not line.startswith(" "):
            name = m.group(1)
            comps[name] = []
        elif name:
            comps[name].append(line)
    return {k: "\n".join(v) for k, v in comps.items()}


def all_reduce_counts(hlo_text: str) -> dict[str, int]:
    """All-reduces in a compiled program, and how many sit in computations reachable from a
    while-loop body (those run once per iteration: the pattern the shard_map step avoids)."""
    comps = _computations(hlo_text)
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo_text))
    seen, todo, in_loops = set(), list(bodies), 0
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        in_loops += len(_ALL_REDUCE.findall(comps[name]))
        todo += re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", comps[name])
    return {"all_reduces": len(_ALL_REDUCE.findall(hlo_text)), "all_reduces_in_loops": in_loops,
            "while_loops": len(bodies)}
