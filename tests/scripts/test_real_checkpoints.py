"""The checks on real (tiny, random-weight) checkpoints from the inference package's builder."""

from __future__ import annotations

import pytest

from scripts.layout import Planner
from scripts.model_files import CHECKPOINT, CONTROLNET, LORA, SD1, SD2, SDXL, inspect_safetensors

builder = pytest.importorskip("easel_inference.builder")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "sd15": builder.build_model_dir(root / "sd15", arch="sd15", with_lora=True,
                                        with_controlnet=True),
        "sd2": builder.build_model_dir(root / "sd2", arch="sd2"),
        "sdxl": builder.build_model_dir(root / "sdxl", arch="sdxl", fmt="diffusers"),
    }


@pytest.mark.parametrize(("arch", "family"), [("sd15", SD1), ("sd2", SD2)])
def test_single_file_checkpoints_are_recognised(model_dirs, arch, family):
    facts = inspect_safetensors(model_dirs[arch] / "Stable-diffusion" / "tiny.safetensors")
    assert (facts.kind, facts.family) == (CHECKPOINT, family)


def test_loras_and_controlnet_are_recognised(model_dirs):
    for lora in (model_dirs["sd15"] / "Lora").glob("*.safetensors"):
        assert inspect_safetensors(lora).kind == LORA
    controlnet = model_dirs["sd15"] / "ControlNet" / "tiny-canny"
    assert inspect_safetensors(controlnet / "diffusion_pytorch_model.safetensors").kind == \
        CONTROLNET


def test_a1111_folder_plan_keeps_every_part(model_dirs, tmp_path):
    plan = Planner(converted_dir=tmp_path).plan(model_dirs["sd15"], name="tiny", lora=False)
    names = {f.arcname for f in plan.files}
    assert {"Stable-diffusion/tiny.safetensors", "Stable-diffusion/tiny.yaml",
            "ControlNet/tiny-canny/config.json",
            "ControlNet/tiny-canny/diffusion_pytorch_model.safetensors"} <= names
    assert any(n.startswith("Lora/") for n in names)


def test_sdxl_diffusers_pipeline_folder_is_planned_as_a_pipeline(model_dirs, tmp_path):
    pipeline = model_dirs["sdxl"] / "Stable-diffusion" / "tiny"
    planner = Planner(converted_dir=tmp_path)
    plan = planner.plan(pipeline, name="xl", lora=False)
    names = {f.arcname for f in plan.files}
    assert "Stable-diffusion/xl/model_index.json" in names
    assert any(n.startswith("Stable-diffusion/xl/unet/") for n in names)
    assert any(SDXL in note for note in plan.notes)


@pytest.mark.parametrize("family", ["sd35_large", "flux_schnell"])
def test_flow_family_diffusers_folder_is_planned_with_its_family_in_the_manifest(
        tmp_path, family):
    flow_builder = pytest.importorskip("easel_inference.flow_builder")
    from scripts.layout import build_manifest

    folder = flow_builder.save_flow_diffusers(flow_builder.build_flow_pipeline(family),
                                              tmp_path / "pipe")
    plan = Planner(converted_dir=tmp_path / "c").plan(folder, name="flow", lora=False)
    manifest = build_manifest(plan, layout="archive")
    assert [(c.path, c.family.value) for c in manifest.checkpoints] == [
        ("Stable-diffusion/flow", family)]
    assert "t5xxl" in manifest.checkpoints[0].components
    assert any(f.path.startswith("Stable-diffusion/flow/transformer/") for f in manifest.files)
