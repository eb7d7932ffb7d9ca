"""SD3.5 and FLUX.1 LoRA training on the tiny random-weight pipelines (easel_inference's
flow_builder): the job detects the family from the model, trains LoRAs on the transformer's
attention with the rectified-flow objective on cached text embeddings, writes progress, previews
and resumable checkpoints, and produces a LoRA the family's pipeline loads."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import FluxPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from easel_training import cli
from easel_training.flow import latent_image_ids, pack_latents, unpack_latents
from easel_training.flow_schedule import FlowSchedule

from .conftest import assert_phases_in_order, record_progress_writes, run_in_process
from .test_resume import RESUME_SETTINGS, StopAfter

FLOW = {"rank": "4", "learning_rate": "0.05", "max_train_steps": "3"}
FAMILIES = ["sd35_medium", "flux_dev"]
# SD3.5 large (no second attention) and FLUX.1 schnell (no guidance embedding) take other paths
EVERY_FAMILY = ["sd35_medium", "sd35_large", "flux_dev", "flux_schnell"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_channels):
    """One 3-step LoRA job per family (previews at steps 2 and 3), run once for this module."""
    from .conftest import FAST, JobLayout

    done = {}
    writes: dict[str, list[tuple[str, int, str]]] = {}

    def get(family: str):
        if family not in done:
            layout = JobLayout(tmp_path_factory.mktemp(f"job-{family}"))
            layout.model_channel.parent.mkdir(parents=True)
            layout.model_channel.symlink_to(model_channels(family), target_is_directory=True)
            layout.add_images(2)
            layout.write_hyperparameters({
                "instance_prompt": "a photo of sks dog", **FAST, **FLOW,
                "validation_steps": "2", "validation_inference_steps": "2"})
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("EASEL_DEVICE", "cpu")
                writes[family] = record_progress_writes(patch)
                done[family] = (layout, run_in_process(layout))
        return done[family]

    get.writes = writes  # each family's progress.json writes, as (phase, step, status)
    return get


def _image(pipe, **kwargs):
    generator = torch.Generator().manual_seed(7)
    return pipe("a photo of sks dog", num_inference_steps=2, height=32, width=32,
                generator=generator, output_type="np", **kwargs).images[0]


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_the_lora_loads_into_the_family_pipeline_and_changes_the_image(trained, family):
    from easel_inference.flow_builder import build_flow_pipeline

    layout, outcome = trained(family)
    assert outcome.status == "completed"
    pipe = build_flow_pipeline(family, seed=0)  # the same base model as the job's
    before = _image(pipe)
    pipe.load_lora_weights(str(outcome.result))
    saved = load_file(str(outcome.result))
    adapted = [name for name, module in pipe.transformer.named_modules()
               if hasattr(module, "lora_A") and module.lora_A]
    assert len(adapted) * 2 == len(saved)  # every saved layer found its module
    assert any(".attn.add_q_proj" in name for name in adapted)  # the text stream too
    after = _image(pipe)
    assert float(abs(after - before).max()) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_the_family_comes_from_the_model_and_labels_the_lora(trained, family):
    layout, outcome = trained(family)
    report = json.loads((layout.root / "model" / "training_report.json").read_text())
    assert report["base_model"]["family"] == family
    assert report["base_model"]["prediction_type"] == "flow"
    with safe_open(str(outcome.result), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["easel_family"] == family
    assert metadata["ss_base_model_version"] == ("flux1" if family == "flux_dev" else "sd3")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_manifest_beside_the_result_names_the_lora_and_its_family(trained, family):
    from easel_contracts.model_manifest import parse_manifest

    layout, outcome = trained(family)
    raw = (layout.root / "model" / "easel-model.json").read_bytes()
    manifest = parse_manifest(raw, where="result")
    (lora,) = manifest.loras
    assert (lora.path, lora.family, lora.key_format, lora.rank) == (
        "Lora/easel-lora.safetensors", family, "diffusers", 4)
    sizes = {f.path: f.bytes for f in manifest.files}
    assert sizes["Lora/easel-lora.safetensors"] == outcome.result.stat().st_size
    # the same manifest where the portal reads it while the archive is packed
    assert (layout.root / "checkpoints" / "easel-model.json").read_bytes() == raw


@pytest.mark.parametrize("family", FAMILIES)
def test_progress_and_previews_are_written(trained, family):
    layout, _ = trained(family)
    progress = json.loads((layout.root / "checkpoints" / "progress.json").read_text())
    assert progress["status"] == "completed" and progress["step"] == 3
    assert math.isfinite(progress["loss"])
    previews = sorted(p.name for p in (layout.root / "checkpoints" / "preview").iterdir())
    assert previews == ["step-2.png", "step-3.png"]


@pytest.mark.parametrize("family", FAMILIES)
def test_progress_names_each_phase_of_the_job_in_order(trained, family):
    trained(family)
    assert_phases_in_order(trained.writes[family], steps=3)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoders_are_freed_before_training(trained, family):
    _, outcome = trained(family)
    pipe = outcome.pipeline
    assert pipe.text_encoder is None and pipe.text_encoder_2 is None
    assert getattr(pipe, "text_encoder_3", None) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_resumed_run_equals_uninterrupted_run(make_job, family):
    settings = {**RESUME_SETTINGS, "center_crop": "true"}  # tiny VAE: crops off the 8-px grid
    straight = make_job(settings, images=3, arch=family)
    run_in_process(straight)
    reference = load_file(str(straight.root / "model" / "Lora" / "easel-lora.safetensors"))

    interrupted = make_job(settings, images=3, arch=family)
    first = run_in_process(interrupted, stop=StopAfter(2))
    assert first.status == "stopped" and first.step == 2
    second = run_in_process(interrupted)
    assert second.status == "completed" and second.step == 4
    resumed = load_file(str(second.result))
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name


@pytest.mark.parametrize(("values", "reason"), [
    ({"mode": "full"}, "'mode': FLUX.1 dev trains LoRAs only"),
    ({"train_text_encoder": "true"}, "'train_text_encoder': FLUX.1 dev LoRAs train the "
                                     "transformer only"),
])
def test_unsupported_flow_settings_fail_with_their_reason(make_job, monkeypatch, values, reason):
    layout = make_job(values, arch="flux_dev")
    monkeypatch.setenv("EASEL_OPT_ML", str(layout.root))
    assert cli.main([]) == 2
    failure = (layout.root / "output" / "failure").read_text(encoding="utf-8")
    assert reason in failure and "Traceback" not in failure


def test_flux_packing_matches_the_pipeline():
    latents = torch.randn(2, 4, 6, 8)
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 4, 6, 8))
    assert torch.equal(unpack_latents(packed, 6, 8), latents)
    assert torch.equal(latent_image_ids(6, 8, torch.device("cpu")),
                       FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32))


def test_rectified_flow_noises_linearly_and_targets_the_velocity():
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sigmas = torch.tensor([0.25, 1.0])
    noisy, target = FlowSchedule.noisy_and_target(x0, noise, sigmas)
    assert torch.allclose(noisy[0], 0.75 * x0[0] + 0.25 * noise[0])
    assert torch.equal(noisy[1], noise[1])
    assert torch.equal(target, noise - x0)


def test_sigmas_are_shifted_as_the_family_scheduler_shifts():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cpu = torch.device("cpu")
    plain = FlowSchedule({"shift": 1.0}, device=cpu)
    sd35 = FlowSchedule({"shift": 3.0}, device=cpu)
    draws = [(plain.draw(torch.Generator().manual_seed(s), (128, 128)),
              sd35.draw(torch.Generator().manual_seed(s), (128, 128))) for s in range(200)]
    assert all(0 < a < b < 1 for a, b in draws)  # same draw, pushed toward noise
    dynamic = FlowSchedule({"use_dynamic_shifting": True, "shift": 3.0}, device=cpu)
    assert dynamic.shift_for((128, 128)) == pytest.approx(math.exp(calculate_shift(64 * 64)))


def test_a_family_the_job_does_not_train_is_refused_naming_those_it_does():
    from easel_contracts.families import ModelFamily
    from easel_training.base_model import trained_arch
    from easel_training.errors import TrainingInputError

    with pytest.raises(TrainingInputError, match="the base model is SDXL refiner; training takes "
                                                 "SD1.x, SD2.x, SDXL, SD3.5 medium"):
        trained_arch(ModelFamily.SDXL_REFINER)
