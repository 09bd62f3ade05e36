"""The benchmarks keep working: tiny inputs, real workers and Redis; no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_bench(module: str, *args: str, redis_url: str | None = None, timeout: float = 280):
    """``python -m MODULE ARGS`` from the checkout (with REDIS_URL when given)."""
    env = {**os.environ, **({"REDIS_URL": redis_url} if redis_url else {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(600)
def test_bench_runs_every_method_and_reports_ratios(tmp_path, redis_url):
    out = tmp_path / "result.json"
    args = ["--frames", "48", "--size", "64", "--reps", "1", "--workers", "2"]
    args += ["--plan-chunks", "300", "--plan-reps", "1", "--data", str(tmp_path)]
    args += ["--json", str(out), "--no-write"]
    run = run_bench("bench", *args, redis_url=redis_url, timeout=580)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(out.read_text())
    assert set(result["forms"]) == {"none", "gzip", "bslz4"}
    for data in result["forms"].values():
        main = ("a/b", "a/c", "a/d", "scaling")  # CPU-time ratios may be 0 on tiny input
        assert all(data["ratios"][k] > 0 for k in main)
    assert result["plan_parts"][0]["chunks"] == 300
    assert "(a)/(b)" in run.stdout and "producer --help" in run.stdout


@pytest.mark.timeout(300)
def test_gpu_bench_dry_run_on_cpu(tmp_path):
    run = run_bench("bench.gpu", "--dry-run", "--folder", str(tmp_path))
    assert run.returncode == 0, run.stderr[-4000:]
    assert "kernel on device" in run.stdout and "CPU worker" in run.stdout


@pytest.mark.timeout(300)
def test_overhead_bench_runs_a_job_of_one_frame_chunks(redis_url):
    run = run_bench("bench.overhead", "--chunks", "30", "--reps", "1", redis_url=redis_url)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "median of 1:" in run.stdout and "30 one-frame chunks" in run.stdout


@pytest.mark.timeout(300)
def test_regions_bench_sweeps_k_and_compares_like_with_like(tmp_path, redis_url):
    args = ["--frames", "16", "--size", "512", "--reps", "1", "--data", str(tmp_path)]
    run = run_bench("bench.regions", *args, redis_url=redis_url)
    # The bench checks every run's sums equal to the bincount pool's before it reports.
    assert run.returncode == 0, run.stderr[-4000:]
    for k in ("| 16 |", "| 100 |", "| 1,000 |", "| 10,000 |"):
        assert k in run.stdout
    for goal in ("both cold: command / bincount script", "both warm: Python API / bincount pool"):
        assert goal in run.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bench-regions-")]


@pytest.mark.timeout(120)
def test_finalize_bench_writes_and_checks_every_output(tmp_path):
    """The bench compares each output with the chunks' values itself: it exits non-zero
    on any difference."""
    args = ("--ks", "5,40", "--chunks", "3", "--frames", "7", "--reps", "2")
    run = run_bench("bench.finalize", *args, "--data", str(tmp_path))
    assert run.returncode == 0, run.stderr[-4000:]
    rows = [
        line for line in run.stdout.splitlines() if line.startswith("| 5 |") or "| 40 |" in line
    ]
    assert len(rows) == 2, run.stdout
    assert os.listdir(tmp_path) == []  # the job folders are removed
