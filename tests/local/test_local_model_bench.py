"""bench/local_model.py's transfer legs in their smallest form (a CPU smoke run)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "local_model.py"


def test_the_transfer_legs_report_mb_per_s_and_cpu_seconds_per_gb(tmp_path, capsys, monkeypatch):
    # the bench exports the local AWS's endpoints as `make local` does: keep them in this test
    monkeypatch.setattr(os, "environ", os.environ.copy())
    spec = importlib.util.spec_from_file_location("local_model_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "results.json"
    assert bench.main(["--size-mib", "16", "--work", str(tmp_path), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for leg in ("upload (multipart, 4 parts at once)", "endpoint download (streamed GET)"):
        assert results[leg]["MB_per_s"] > 0
        assert results[leg]["cpu_s_per_GB"] > 0
    assert results["bytes"] == 16 * 1024 * 1024
    printed = capsys.readouterr().out
    assert "MB/s" in printed and "CPU-s/GB" in printed
    assert not list(tmp_path.glob("easel-bench-*"))  # the work folder is removed
