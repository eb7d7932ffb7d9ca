"""The `train` entry point as SageMaker runs it: a separate process, stopped with SIGTERM, and
two data-parallel CPU workers (gloo) matching one process with the same global batch."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

from easel_contracts.progress import RankShare, TrainingReport

from .conftest import run_in_process

TRAIN = shutil.which("train", path=str(Path(sys.executable).parent))


def _start(layout, **extra_env) -> subprocess.Popen:
    assert TRAIN, "the `train` console script is not installed next to the interpreter"
    env = {**os.environ, "EASEL_OPT_ML": str(layout.root), "EASEL_DEVICE": "cpu", **extra_env}
    return subprocess.Popen([TRAIN], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_for(predicate, *, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"train exited early ({process.returncode}):\n"
                                 + process.stdout.read()[-3000:])
        time.sleep(0.1)
    process.kill()
    raise AssertionError("timed out:\n" + process.stdout.read()[-3000:])


def _progress(layout) -> dict:
    try:
        return json.loads((layout.root / "checkpoints" / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(make_job):
    layout = make_job({"max_train_steps": "100000", "validation_steps": "1",
                       "validation_inference_steps": "1"})
    process = _start(layout)
    preview = layout.root / "checkpoints" / "preview" / "step-1.png"
    # progress.json and previews appear while the job runs
    _wait_for(lambda: _progress(layout).get("step", 0) >= 1 and preview.is_file(),
              timeout=120, process=process)
    running = _progress(layout)
    assert running["status"] == "running" and running["total_steps"] == 100000
    assert running["eta_seconds"] is None or running["eta_seconds"] > 0
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    # metric lines on stdout, in the shape SageMaker metric definitions parse
    assert re.search(r"^easel-progress step=\d+ total_steps=100000 loss=[0-9.]+ "
                     r"images_per_second=[0-9.]+", output, re.MULTILINE), output[-3000:]
    stopped = _progress(layout)
    assert stopped["status"] == "stopped"
    checkpoints = sorted((layout.root / "checkpoints").glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == [f"checkpoint-{stopped['step']}"]
    assert (checkpoints[0] / "trainable.safetensors").is_file()
    assert not (layout.root / "output" / "failure").exists()
    assert not (layout.root / "model" / "Lora").exists()


# A warm-up schedule, so a scheduler stepped once per process would train something else.
DATA_PARALLEL = {"max_train_steps": "2", "learning_rate": "0.02", "rank": "4",
                 "random_flip": "true", "lr_scheduler": "linear", "lr_warmup_steps": "1"}


def test_two_cpu_processes_match_one_process_with_the_same_global_batch(make_job):
    pair = make_job({**DATA_PARALLEL, "train_batch_size": "1"}, images=3)
    process = _start(pair, EASEL_NUM_PROCESSES="2")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    report = json.loads((pair.root / "model" / "training_report.json").read_text())
    assert report["world_size"] == 2

    single = make_job({**DATA_PARALLEL, "train_batch_size": "2"}, images=3)
    run_in_process(single)
    together = load_file(str(pair.root / "model" / "Lora" / "easel-lora.safetensors"))
    alone = load_file(str(single.root / "model" / "Lora" / "easel-lora.safetensors"))
    assert together.keys() == alone.keys()
    moved = 0
    for name, tensor in alone.items():
        torch.testing.assert_close(together[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
        moved += name.endswith("lora_up.weight") and bool(tensor.abs().max() > 1e-3)
    assert moved, "training did not move the LoRA weights"


def test_two_processes_write_one_checkpoint_with_each_processes_random_state(make_job):
    layout = make_job({"max_train_steps": "2", "checkpointing_steps": "1", "rank": "4"},
                      images=3)
    process = _start(layout, EASEL_NUM_PROCESSES="2")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    checkpoints = layout.root / "checkpoints"
    assert [p.name for p in checkpoints.glob("checkpoint-*")] == ["checkpoint-1"]
    names = {p.name for p in (checkpoints / "checkpoint-1").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "optimizer.bin",
            "trainable.safetensors", "state.json"} <= names
    assert not list(checkpoints.glob(".tmp-*"))


def _workers(process: subprocess.Popen) -> dict[int, psutil.Process]:
    """The entry point's worker processes by rank (read from their environment)."""
    found = {}
    for child in psutil.Process(process.pid).children():
        try:
            environ = child.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RANK" in environ:
            found[int(environ["RANK"])] = child
    return found


def test_killing_one_rank_fails_the_job_within_a_minute_naming_the_rank(make_job):
    layout = make_job({"max_train_steps": "100000", "rank": "4"}, images=3)
    process = _start(layout, EASEL_NUM_PROCESSES="2")
    _wait_for(lambda: _progress(layout).get("step", 0) >= 2, timeout=240, process=process)
    workers = _workers(process)
    assert sorted(workers) == [0, 1]
    workers[1].send_signal(signal.SIGKILL)  # mid-training: rank 0 is in a collective with it
    killed_at = time.monotonic()
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        for worker in workers.values():
            worker.kill()
        process.kill()
        raise AssertionError("the job still ran 60 s after one rank died") from None
    assert time.monotonic() - killed_at < 60
    assert process.returncode == 1, output[-3000:]
    reason = (layout.root / "output" / "failure").read_text()
    assert "training worker 1 of 2" in reason and "SIGKILL" in reason, reason
    assert _progress(layout)["status"] == "failed"
    assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
                   for worker in workers.values())


def test_both_ranks_train_their_share_and_the_result_loads_in_the_inference_server(make_job):
    from easel_inference.loader import load_pipeline
    from easel_inference.lora import LoraFuser, LoraLibrary, LoraUse

    layout = make_job({"max_train_steps": "3", "train_batch_size": "1", "rank": "4",
                       "learning_rate": "0.05"}, images=3)
    process = _start(layout, EASEL_NUM_PROCESSES="2")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    model = layout.root / "model"
    report = TrainingReport.model_validate_json((model / "training_report.json").read_text())
    # each process counted its own steps and images; together they make the global batches
    assert report.ranks == [RankShare(rank=0, steps=3, samples=3),
                            RankShare(rank=1, steps=3, samples=3)]
    # the single-GPU layout: one LoRA file and the report, nothing per rank
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()) \
        == ["Lora/easel-lora.safetensors", "easel-model.json", "training_report.json"]
    base = model.parent / "input" / "data" / "model" / "Stable-diffusion" / "tiny.safetensors"

    def image(pipe):
        return pipe("a photo of sks dog", num_inference_steps=2, height=32, width=32,
                    generator=torch.Generator().manual_seed(3), output_type="np").images[0]

    untouched = image(load_pipeline(base))
    pipe = load_pipeline(base)
    LoraFuser(pipe).apply([LoraUse(name="easel-lora", text_weight=1.0, unet_weight=1.0)],
                          LoraLibrary(model / "Lora"))
    assert abs(image(pipe) - untouched).max() > 1e-3, "the served LoRA changed nothing"
