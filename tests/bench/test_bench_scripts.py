"""The GPU benchmarks keep working: each runs its own CPU check on the tiny model, as a process,
and reports what the GPU run reports (the figures themselves are not judged here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, out: Path, timeout: int = 300, **extra_env: str) -> dict:
    env = dict(os.environ, OUT=str(out), HF_HUB_OFFLINE="1", **extra_env)
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_inference_bench_sdxl_only_times_stock_and_the_fast_path_in_one_run(tmp_path) -> None:
    _run("inference.py", "--size", "tiny", "--sdxl-only", "--sdxl-side", "64", "--sdxl-steps",
         "2", "--warmup", "1", "--repeat", "1", out=tmp_path, timeout=1200,
         EASEL_FAST_GRAPHS="0", EASEL_FAST_VAE="0")
    report = json.loads((tmp_path / "inference_bench.json").read_text())
    assert report["sdxl_easel_fast_seconds"] > 0 and report["sdxl_stock_eager_seconds"] > 0
    assert report["sdxl_fast_over_stock_eager"] > 0
    assert "easel_eager_seconds" not in report  # the SD1.5 rows did not run


@pytest.mark.slow
def test_serve_smoke_runs_serve_and_reports_the_lora_facts(tmp_path) -> None:
    _run("serve_smoke.py", "--size", "tiny", "--steps", "2", "--width", "64", "--height", "64",
         "--work-dir", str(tmp_path / "work"), out=tmp_path)
    report = json.loads((tmp_path / "serve_smoke.json").read_text())
    assert report["ok"] is True
    assert report["two_loras_first_images"] == 1
    assert report["same_seed_same_image"] and report["loras_change_image"]
    assert report["lora_removal_restores_image"]
    assert report["bad_width_status"] == 400
    assert (tmp_path / "serve.log").is_file()


@pytest.mark.slow
def test_inference_bench_times_stock_and_easel_in_one_run(tmp_path) -> None:
    # on the CPU: the fast path without compiling (fused QKV, channels-last), no HTTP row
    _run("inference.py", "--size", "tiny", "--steps", "2", "--long-steps", "3", "--width", "64",
         "--height", "64", "--warmup", "1", "--repeat", "1", "--no-http", "--batch", "2",
         "--no-sdxl", out=tmp_path, timeout=1200,
         EASEL_FAST_GRAPHS="0", EASEL_FAST_VAE="0")  # SD1.5 only: SDXL doubles the CPU time
    report = json.loads((tmp_path / "inference_bench.json").read_text())
    for key in ("stock_eager_seconds", "easel_eager_seconds", "easel_fast_seconds",
                "easel_fast_two_loras_seconds", "fast_over_easel_eager", "easel_fast_pil_seconds",
                "easel_eager_over_stock_eager", "easel_fast_batch_images_per_second",
                "stock_eager_batch_images_per_second"):
        assert report[key] > 0, key
    assert "stock_anchor_skipped" in report  # the anchor needs CUDA graphs
    assert not [key for key in report if key.endswith("_error")]


@pytest.mark.slow
def test_multi_gpu_smoke_trains_on_two_processes_and_serves_under_load(tmp_path) -> None:
    # 1.5 CPU-minutes (four training processes, two servers); slower on a shared machine
    _run("multi_gpu.py", "--smoke", out=tmp_path, timeout=900)
    report = json.loads((tmp_path / "multi_gpu.json").read_text())
    assert report["processes"] == 2 and report["command"].startswith("multi_gpu.py --smoke")
    assert report["training_multi"]["world_size"] == 2
    assert report["training_single"]["world_size"] == 1
    assert report["training_every_rank_trained"] is True
    assert report["training_single_gpu_layout"] is True
    assert report["training_speedup"] > 0
    assert report["serving"]["1"]["lost"] == 0 and report["serving"]["1"]["ok"] > 0
    if "serving_pool_unsupported" not in report:  # a server with EASEL_WORKERS
        assert report["serving"]["2"]["lost"] == 0
        assert report["serving_kill"]["ping_answers"], "no /ping answer after the kill"


@pytest.mark.slow
def test_flow_bench_lora_and_fp8_rows_report_speed_exact_restore_and_a_finite_psnr(tmp_path) -> None:
    _run("flow_families.py", "--family", "flux_dev", "--size", "tiny", "--fp8", "--lora",
         "--repeat", "1", out=tmp_path)
    report = json.loads((tmp_path / "flow_bench_flux_dev.json").read_text())
    assert report["lora_seconds"] > 0 and report["lora_tensors"] > 0
    assert report["lora_changes_image"] is True and report["lora_restored_exactly"] is True
    assert report["lora_weights_restored"] is True and report["same_request_same_image"] is True
    assert report["fp8_seconds"] > 0 and report["fp8_over_stock"] > 0
    assert 0 < report["fp8_psnr_db"] < float("inf")  # the FP8 image differs, a little
