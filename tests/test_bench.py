"""launch/bench.py runs and reports every field (no timing assertions: speed lives in benchmarks)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import QUICKSTART, ROOT, TINY


def bench(*args):
    return subprocess.run([sys.executable, "launch/bench.py", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_bench_train_reports_speed_breakdown(tmp_path):
    out = tmp_path / "train.json"
    r = bench("train", "-c", QUICKSTART, "-o", *TINY, "--steps", "3", "--warmup", "1",
              "--json", str(out), "--profile", str(tmp_path / "trace"))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("images_per_s", "images_per_s_per_device", "data_wait_frac", "compile_s",
                "peak_rss_mb", "step_s", "data_wait_s", "compute_s", "host_overhead_s",
                "gflop_per_step", "gflop_per_s"):
        assert key in result and f"{key}:" in r.stdout
    assert result["images_per_s"] > 0 and 0 <= result["data_wait_frac"] <= 1
    assert result["global_batch"] == 2 and result["machine"]["backend"] == "cpu"
    assert result["gflop_per_step"] > 0.1  # XLA's count for the tiny CRNN at batch 2
    parts = result["profile_ms_per_step"]  # the trace, attributed to the model's parts
    for part in ("backbone: depthwise convs, forward", "backbone: 1x1 convs, backward",
                 "neck, forward", "neck, backward"):
        assert parts[part] > 0, parts
    assert "ms/step" in r.stdout


def test_gpu_check_measures_each_model_and_precision_and_writes_the_table(tmp_path):
    """launch/gpu_check.py (the GPU check), here on the CPU: Rosetta in float32 and bfloat16 at
    batch 2 on the synthetic lines, one JSON per run, the table; a budget of 0 starts nothing."""
    r = subprocess.run([sys.executable, "launch/gpu_check.py", "--out", str(tmp_path / "gc"),
                        "--only", "rec_mv3_none_none_ctc", "--batch", "2", "--steps", "2",
                        "--warmup", "1"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for precision in ("fp32", "bf16"):
        run = json.loads((tmp_path / "gc" / f"rec_mv3_none_none_ctc.{precision}.json").read_text())
        assert "error" not in run, run.get("traceback")
        assert run["batch_per_card"] == 2 and run["images_per_s_per_device"] > 0
        assert run["step_device_mb"] > 0 and run["compile_s"] > 0
    table = (tmp_path / "gc" / "table.md").read_text().splitlines()
    assert table[0].startswith("| model | precision |") and len(table) == 4, table
    assert table[3].startswith("| rec_mv3_none_none_ctc | bf16 | 2 |")
    env = json.loads((tmp_path / "gc" / "environment.json").read_text())
    assert env["devices"] and env["jax"]
    r = subprocess.run([sys.executable, "launch/gpu_check.py", "--out", str(tmp_path / "none"),
                        "--budget_s", "0"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and "skipped (budget): rec_chinese_lite.fp32" in r.stdout


def test_profile_self_time_subtracts_nested_ops():
    from jaxocr.profile import hlo_op_names, part_of, self_times
    events = [{"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 10, "name": "while"},
              {"ph": "X", "pid": 1, "tid": 1, "ts": 2, "dur": 3, "name": "body"},
              {"ph": "X", "pid": 1, "tid": 1, "ts": 6, "dur": 2, "name": "body"},
              {"ph": "X", "pid": 1, "tid": 2, "ts": 1, "dur": 4, "name": "other"}]
    got = sorted((e["name"], t) for e, t in self_times(events))
    assert got == [("body", 2), ("body", 3), ("other", 4), ("while", 5)]
    hlo = ('  %pad_slice_fusion.1 = f32[2] fusion(%p), kind=kLoop, metadata={op_name='
           '"jit(f)/transpose(jvp(BaseModel))/backbone/blocks_3/bottleneck_conv/conv/pad"}')
    names = hlo_op_names(hlo)
    assert part_of(names["pad_slice_fusion.1"], "pad_slice_fusion.1") == \
        "backbone: depthwise convs, backward"
    assert part_of(None, "all-reduce.3") == "gradient all-reduce"


def test_bench_data_reports_rate_per_worker_count(tmp_path):
    out = tmp_path / "data.json"
    r = bench("data", "-c", QUICKSTART, "-o", *TINY, "--workers", "1,2", "--batches", "3",
              "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["workers_1"] > 0 and result["workers_2"] > 0
    assert os.path.exists(out)


def test_ring_allreduce_projection_follows_the_formula():
    from jaxocr.scaling import projected_efficiency, projection_table, ring_allreduce_s
    nbytes, gbps = 8e6, 100.0
    assert ring_allreduce_s(1, nbytes, gbps) == 0
    # 2(N-1)/N x bytes / bandwidth, plus 2(N-1) hops of latency
    assert abs(ring_allreduce_s(4, nbytes, gbps, 0) - 1.5 * nbytes / 12.5e9) < 1e-12
    assert abs(ring_allreduce_s(4, nbytes, gbps, 10) - ring_allreduce_s(4, nbytes, gbps, 0)
               - 6 * 10e-6) < 1e-12
    assert projected_efficiency(1.0, 0.25, overlap=False) == 0.8
    assert projected_efficiency(0.3, 0.1, overlap=True) == 1.0  # hidden behind the backward
    rows = projection_table(0.05, nbytes, [2, 8, 32], gbps)
    eff = [r["efficiency"] for r in rows]
    assert eff == sorted(eff, reverse=True) and all(0 < e <= 1 for e in eff)
    assert all(r["efficiency_overlapped"] >= r["efficiency"] for r in rows)


def test_bench_scaling_projects_from_a_given_step_time(tmp_path):
    out = tmp_path / "proj.json"
    r = bench("scaling", "-c", QUICKSTART, "-o", *TINY, "--processes", "", "--project", "32,100",
              "--step_s", "0.05", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["projection"]
    assert [row["workers"] for row in rows] == [2, 4, 8, 16, 32]
    assert "projected   32 workers @ 100 Gb/s" in r.stdout


@pytest.mark.slow
def test_bench_scaling_measures_every_mode_with_local_processes(tmp_path):
    out = tmp_path / "scaling.json"
    r = bench("scaling", "-c", QUICKSTART, "-o", *TINY, "--processes", "1,2", "--steps", "3",
              "--warmup", "1", "--project", "8,100", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    result = json.loads(out.read_text())
    modes = [(row["processes"], row["mode"]) for row in result["rows"]]
    assert modes == [(1, "sync"), (2, "sync"), (2, "lockstep"), (2, "independent")]
    assert result["rows"][0]["efficiency"] == 1.0
    two = result["rows"][1]
    assert two["images_per_s"] > 0 and two["allreduce_probe_s"] > 0
    assert 0 <= two["allreduce_frac"] < 1 and two["grad_bytes"] > 4 * 100_000
    # the Horovod contract holds on a 2-process mesh too: one fused all-reduce, none in loops
    assert 1 <= two["all_reduces"] <= 3 and two["all_reduces_in_loops"] == 0
    assert [row["workers"] for row in result["projection"]] == [2, 4, 8]
