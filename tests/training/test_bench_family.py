"""bench/training.py --family: the SD3.5/FLUX.1 LoRA step bench runs its CPU smoke mode and reports
step time and losses (the GPU run is the same code on the full-size architectures)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the bench imports its sibling timing.py
    spec = importlib.util.spec_from_file_location("bench_training", BENCH / "training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.RESULTS.clear()
    yield module
    sys.modules.pop("timing", None)


def test_the_flux_family_smoke_run_reports_step_time(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    args = argparse.Namespace(family="flux", quick=True, resolution=1024, rank=4,
                              gradient_checkpointing=True, gpu_gb=0.0)
    bench.run_family(args)
    results = json.loads((tmp_path / "training_bench.json").read_text())
    assert results["family"] == "flux_dev" and results["gradient_checkpointing"] is True
    assert results["easel_s_per_step_bs1"] > 0
    assert all(math.isfinite(x) for x in results["easel_first_losses_bs1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == results


def test_the_sdxl_family_smoke_run_trains_the_unet_trainer(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    args = argparse.Namespace(family="sdxl", quick=True, resolution=1024, rank=4,
                              gradient_checkpointing=False, gpu_gb=0.0)
    bench.run_family(args)
    results = json.loads((tmp_path / "training_bench.json").read_text())
    assert results["family"] == "sdxl" and results["denoiser_params_b"] > 0
    assert results["easel_s_per_step_bs1"] > 0
    assert all(math.isfinite(x) for x in results["easel_first_losses_bs1"])
    assert results["easel_cuda_graph_step"] is False  # the CPU runs the eager step


@pytest.mark.parametrize(("mode", "expected"), [
    ("graphs+default", (True, "default", "model", "easel_graphs_compile_default_model")),
    ("graphs+default@blocks", (True, "default", "blocks", "easel_graphs_compile_default_blocks")),
    ("graphs+max-autotune-no-cudagraphs@blocks",
     (True, "max-autotune-no-cudagraphs", "blocks",
      "easel_graphs_compile_max_autotune_no_cudagraphs_blocks")),
    ("reduce-overhead@model", (False, "reduce-overhead", "model",
                               "easel_compile_reduce_overhead_model")),
    ("graphs", (True, "", "", "easel_graphs")),
    ("none", (False, "", "", "easel_eager"))])
def test_a_step_variant_is_labelled_by_its_graphs_compile_mode_and_scope(bench, mode, expected):
    assert bench.step_variant(mode) == expected


@pytest.mark.parametrize(("mode", "message"), [("graphs+default@layers", "one of blocks, model"),
                                               ("graphs@model", "needs a compile mode")])
def test_a_misspelt_step_variant_stops_with_what_to_write(bench, mode, message):
    with pytest.raises(SystemExit, match=message):
        bench.step_variant(mode)


@pytest.mark.parametrize(("family", "turned_off"), [("flux", True), ("sd35", False)])
def test_flux_training_runs_without_cudnn_attention(bench, monkeypatch, tmp_path, family,
                                                    turned_off):
    # cuDNN's fused attention backward crashed FLUX.1's full-size step on H100/H200 (README)
    calls = []
    monkeypatch.setattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: True)
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", calls.append)
    monkeypatch.setenv("OUT", str(tmp_path))
    args = argparse.Namespace(family=family, quick=True, resolution=1024, rank=4,
                              gradient_checkpointing=False, gpu_gb=0.0)
    bench.run_family(args)
    assert calls == ([False] if turned_off else [])
    assert json.loads((tmp_path / "training_bench.json").read_text())["easel_s_per_step_bs1"] > 0
