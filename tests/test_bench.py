"""launch/bench.py runs and reports every field (no timing assertions: speed lives in benchmarks)."""
import json
import os
import subprocess
import sys

from conftest import QUICKSTART, ROOT, TINY


def bench(*args):
    return subprocess.run([sys.executable, "launch/bench.py", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_bench_train_reports_speed_breakdown(tmp_path):
    out = tmp_path / "train.json"
    r = bench("train", "-c", QUICKSTART, "-o", *TINY, "--steps", "3", "--warmup", "1",
              "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("images_per_s", "images_per_s_per_device", "data_wait_frac", "compile_s",
                "peak_rss_mb", "step_s", "data_wait_s", "compute_s", "host_overhead_s"):
        assert key in result and f"{key}:" in r.stdout
    assert result["images_per_s"] > 0 and 0 <= result["data_wait_frac"] <= 1
    assert result["global_batch"] == 2 and result["machine"]["backend"] == "cpu"


def test_bench_data_reports_rate_per_worker_count(tmp_path):
    out = tmp_path / "data.json"
    r = bench("data", "-c", QUICKSTART, "-o", *TINY, "--workers", "1,2", "--batches", "3",
              "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["workers_1"] > 0 and result["workers_2"] > 0
    assert os.path.exists(out)
