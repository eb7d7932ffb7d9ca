"""Short LoRA and full runs on the tiny model: result layout, kohya keys, report, previews, and
the trained LoRA reproducing the trained model's image when loaded from its file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from easel_contracts.progress import RankShare, TrainingReport, parse_progress

from .conftest import SIZE, assert_phases_in_order, record_progress_writes, run_in_process

# fp32 everywhere on the CPU: a LoRA loaded from its file must reproduce the trained model's
# image up to float rounding in the order of operations.
IMAGE_TOLERANCE = 1e-4


def _image(pipe, prompt: str = "a photo of sks dog") -> np.ndarray:
    generator = torch.Generator().manual_seed(11)
    return pipe(prompt, num_inference_steps=2, height=SIZE, width=SIZE, generator=generator,
                output_type="np").images[0]


def _with_server_lora(pipe, lora_file):
    """Apply a LoRA file the way Easel's inference server does for `<lora:name:1>`."""
    from easel_inference.lora import LoraFuser, LoraLibrary, LoraUse

    fuser = LoraFuser(pipe)
    fuser.apply([LoraUse(name=lora_file.stem, text_weight=1.0, unet_weight=1.0)],
                LoraLibrary(lora_file.parent))
    return pipe


def _fresh_base(layout, name: str = "tiny"):
    from easel_inference.loader import load_pipeline

    return load_pipeline(layout.model_channel / "Stable-diffusion" / f"{name}.safetensors")


def test_lora_run_writes_the_layout_report_and_progress(make_job):
    layout = make_job({"output_name": "sks-dog", "validation_steps": "2",
                       "validation_inference_steps": "1", "save_precision": "fp16"})
    outcome = run_in_process(layout)
    assert outcome.status == "completed" and outcome.step == 3
    lora_file = layout.root / "model" / "Lora" / "sks-dog.safetensors"
    assert outcome.result == lora_file and lora_file.is_file()
    # both files as their readers see them: through easel_contracts.progress
    report = TrainingReport.model_validate_json(
        (layout.root / "model" / "training_report.json").read_text())
    assert report.steps == 3 and len(report.loss_curve) == 3
    assert report.ranks == [RankShare(rank=0, steps=3, samples=3)]  # one process, batch 1
    assert report.result == "Lora/sks-dog.safetensors"
    assert report.base_model.name == "tiny"
    assert report.settings["rank"] == 16 and report.images_per_second > 0
    assert report.duration_seconds >= report.training_seconds > 0
    progress = parse_progress((layout.root / "checkpoints" / "progress.json").read_bytes())
    assert progress.status == "completed" and progress.step == 3
    assert progress.total_steps == 3 and progress.eta_seconds == 0
    previews = sorted(p.name for p in (layout.root / "checkpoints" / "preview").iterdir())
    assert previews == ["step-2.png", "step-3.png"]
    assert not (layout.root / "output" / "failure").exists()
    with safe_open(str(lora_file), "pt") as handle:
        names = handle.keys()
        assert all(handle.get_tensor(k).dtype == torch.float16 for k in names)


def test_progress_names_each_phase_of_the_job_in_order(make_job, monkeypatch):
    writes = record_progress_writes(monkeypatch)
    assert run_in_process(make_job({})).status == "completed"
    assert_phases_in_order(writes, steps=3)


def _check_kohya_file(path, *, rank: int, alpha: float) -> set[str]:
    """Every module has lora_down/lora_up/alpha with the right shapes; returns module names."""
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        metadata = handle.metadata()
        modules = {k.rsplit(".", 2)[0] for k in keys if k.endswith(".lora_down.weight")}
        assert modules, "no LoRA modules exported"
        for module in modules:
            assert module.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"))
            assert {f"{module}.lora_down.weight", f"{module}.lora_up.weight",
                    f"{module}.alpha"} <= keys
            assert handle.get_tensor(f"{module}.alpha").item() == alpha
            assert handle.get_tensor(f"{module}.lora_down.weight").shape[0] == rank
            assert handle.get_tensor(f"{module}.lora_up.weight").shape[1] == rank
    assert len(keys) == 3 * len(modules)
    assert metadata["ss_network_dim"] == str(rank)
    assert float(metadata["ss_network_alpha"]) == alpha
    return modules


def test_lora_file_has_kohya_names_and_reproduces_the_trained_model(make_job):
    """The kohya file, applied to a fresh base pipeline by Easel's inference server (fused into
    the weights) and by diffusers' own kohya loader, gives the in-memory trained model's image.
    A high learning rate makes the LoRA matter."""
    layout = make_job({"learning_rate": "0.05", "rank": "4", "alpha": "2",
                       "train_text_encoder": "true"})
    outcome = run_in_process(layout)
    modules = _check_kohya_file(outcome.result, rank=4, alpha=2.0)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in modules
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0" in modules
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in modules
    trained = _image(outcome.pipeline)
    fresh = _fresh_base(layout)
    untouched = _image(fresh)
    fresh.load_lora_weights(str(outcome.result))
    loaded = _image(fresh)
    assert np.abs(untouched - trained).max() > 100 * IMAGE_TOLERANCE  # the LoRA changed things
    assert np.abs(loaded - trained).max() <= IMAGE_TOLERANCE
    served = _image(_with_server_lora(_fresh_base(layout), outcome.result))
    assert np.abs(served - trained).max() <= IMAGE_TOLERANCE


def test_full_run_writes_a_deployable_single_file(make_job):
    from easel_inference.loader import find_checkpoints, load_pipeline

    layout = make_job({"mode": "full", "learning_rate": "1e-3", "output_name": "sks-full"})
    outcome = run_in_process(layout)
    model_dir = layout.root / "model"
    assert find_checkpoints(model_dir) == {"sks-full": outcome.result}
    assert outcome.result == model_dir / "Stable-diffusion" / "sks-full.safetensors"
    assert outcome.result.with_suffix(".yaml").is_file()
    reloaded = load_pipeline(outcome.result)
    trained_state = outcome.pipeline.unet.state_dict()
    for name, tensor in reloaded.unet.state_dict().items():
        assert torch.equal(tensor, trained_state[name]), name
    base = _fresh_base(layout)
    changed = [n for n, t in base.unet.state_dict().items()
               if not torch.equal(t, trained_state[n])]
    assert changed, "full fine-tuning changed no UNet weight"
    report = json.loads((model_dir / "training_report.json").read_text())
    assert report["mode"] == "full" and report["result"] == "Stable-diffusion/sks-full.safetensors"
    # deployable includes the manifest the portal reads to plan the endpoint (family, files)
    from easel_contracts.model_manifest import parse_manifest

    manifest = parse_manifest((model_dir / "easel-model.json").read_bytes(), where="result")
    (entry,) = manifest.checkpoints
    assert (entry.path, entry.family, entry.prediction) == (
        "Stable-diffusion/sks-full.safetensors", "sd1", "epsilon")
    assert {f.path for f in manifest.files} >= {"Stable-diffusion/sks-full.safetensors",
                                                "training_report.json"}


@pytest.mark.parametrize("arch", ["sdxl", "sd2"])
def test_other_bases_train_and_load(make_job, arch):
    layout = make_job({"learning_rate": "0.05", "rank": "4", "bucketing": "true",
                       "random_flip": "true"}, arch=arch, image_size=(40, 32))
    outcome = run_in_process(layout)
    modules = _check_kohya_file(outcome.result, rank=4, alpha=4.0)
    if arch == "sdxl":  # kohya's SDXL LoRAs use the original sgm block names
        assert any(m.startswith("lora_unet_input_blocks_") for m in modules)
        assert any(m.startswith("lora_unet_output_blocks_") for m in modules)
        assert not any("down_blocks" in m for m in modules)
    trained = _image(outcome.pipeline)
    fresh = _fresh_base(layout)
    fresh.load_lora_weights(str(outcome.result))
    assert np.abs(_image(fresh) - trained).max() <= IMAGE_TOLERANCE
    served = _image(_with_server_lora(_fresh_base(layout), outcome.result))
    assert np.abs(served - trained).max() <= IMAGE_TOLERANCE


def test_model_channel_may_be_a_model_tarball(make_job, model_channels):
    import tarfile

    layout = make_job({"checkpoint": "tiny.safetensors"}, with_model=False)
    layout.model_channel.mkdir(parents=True)
    with tarfile.open(layout.model_channel / "model.tar.gz", "w:gz") as archive:
        archive.add(model_channels("sd15") / "Stable-diffusion", arcname="Stable-diffusion")
    outcome = run_in_process(layout)
    assert outcome.status == "completed"
    report = json.loads((layout.root / "model" / "training_report.json").read_text())
    assert report["base_model"]["name"] == "tiny"
