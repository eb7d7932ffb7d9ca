"""A checkpoint of a `lora` job carries the LoRA at its step in the published format
(`easel_contracts.checkpoints.LORA_FILE`), so a stopped job's last checkpoint can go into the
LoRA library and be served like a completed job's result."""

from __future__ import annotations

import numpy as np
from safetensors import safe_open

from easel_contracts.checkpoints import LORA_FILE, checkpoint_name

from .conftest import run_in_process
from .test_resume import StopAfter
from .test_runs import IMAGE_TOLERANCE, _check_kohya_file, _fresh_base, _image, _with_server_lora

SETTINGS = {"learning_rate": "0.05", "rank": "4", "alpha": "2", "max_train_steps": "5",
            "output_name": "sks-dog"}


def test_a_stopped_jobs_checkpoint_lora_is_served_like_the_trained_model(make_job):
    layout = make_job(SETTINGS)
    outcome = run_in_process(layout, stop=StopAfter(2))
    assert outcome.status == "stopped" and outcome.step == 2
    lora_file = layout.root / "checkpoints" / checkpoint_name(2) / LORA_FILE
    _check_kohya_file(lora_file, rank=4, alpha=2.0)
    with safe_open(str(lora_file), "pt") as handle:
        assert handle.metadata()["ss_max_train_steps"] == "2"
        assert handle.metadata()["ss_output_name"] == "sks-dog"
    trained = _image(outcome.pipeline)
    untouched = _image(_fresh_base(layout))
    served = _image(_with_server_lora(_fresh_base(layout), lora_file))
    assert np.abs(untouched - trained).max() > 100 * IMAGE_TOLERANCE  # the LoRA changed things
    assert np.abs(served - trained).max() <= IMAGE_TOLERANCE


def test_the_checkpoint_lora_has_the_results_keys(make_job):
    layout = make_job({**SETTINGS, "max_train_steps": "2", "checkpointing_steps": "1",
                       "save_precision": "fp16"})
    outcome = run_in_process(layout)
    checkpoint_file = layout.root / "checkpoints" / checkpoint_name(1) / LORA_FILE
    with safe_open(str(checkpoint_file), "pt") as saved, \
            safe_open(str(outcome.result), "pt") as result:
        names = saved.keys()
        assert set(names) == set(result.keys())
        assert {str(saved.get_tensor(k).dtype) for k in names} == {"torch.float16"}


def test_a_full_mode_checkpoint_has_no_lora_file(make_job):
    layout = make_job({"mode": "full", "max_train_steps": "2", "checkpointing_steps": "1"})
    run_in_process(layout)
    assert not (layout.root / "checkpoints" / checkpoint_name(1) / LORA_FILE).exists()


def test_a_flux_checkpoint_lora_is_in_the_diffusers_format_of_its_result(make_job):
    layout = make_job({"rank": "4", "learning_rate": "0.05", "max_train_steps": "2",
                       "checkpointing_steps": "1", "center_crop": "true"}, arch="flux_dev")
    outcome = run_in_process(layout)
    checkpoint_file = layout.root / "checkpoints" / checkpoint_name(1) / LORA_FILE
    with safe_open(str(checkpoint_file), "pt") as saved, \
            safe_open(str(outcome.result), "pt") as result:
        names = saved.keys()
        assert names and all(name.startswith("transformer.") for name in names)
        assert set(names) == set(result.keys())
        assert saved.metadata()["easel_family"] == "flux_dev"
