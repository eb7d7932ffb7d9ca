"""The SDXL refiner as A1111's second pass (``refiner_checkpoint`` / ``refiner_switch_at``), on a
tiny base and a tiny refiner built by the builder (CPU), as a diffusers folder and as a single
file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from easel_contracts.families import ModelFamily, detect_diffusers_folder
from easel_contracts.invocations import Txt2ImgRequest
from easel_inference.builder import (
    build_model_dir,
    build_refiner,
    save_diffusers,
    save_refiner_single_file,
)
from easel_inference.errors import BadRequest
from easel_inference.generation import generate
from easel_inference.lora import LoraLibrary
from easel_inference.pipelines import PipelineManager
from easel_inference.settings import Settings


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("refiner-model")
    build_model_dir(root, arch="sdxl", name="xl", seed=3)
    build_model_dir(root, name="sd", seed=4)
    save_diffusers(build_refiner(seed=5), root / "Stable-diffusion" / "xl-refiner")
    save_refiner_single_file(build_refiner(seed=5), root / "Stable-diffusion" / "xl-refiner-file")
    settings = Settings(model_dir=root, pipeline_budget=3, deadline_seconds=3600)
    return PipelineManager(settings), LoraLibrary(root / "Lora"), settings, root


def _run(served, **fields):
    manager, library, settings, _ = served
    fields.setdefault("override_settings", {"sd_model_checkpoint": "xl"})
    request = Txt2ImgRequest(prompt="a castle", seed=2, steps=4, width=64, height=64, **fields)
    answer = generate(request, task="txt2img", manager=manager, library=library,
                      settings=settings)
    return answer.images[0], json.loads(answer.info)


def test_builder_refiner_is_detected_as_the_refiner(served):
    folder: Path = served[3] / "Stable-diffusion" / "xl-refiner"
    assert detect_diffusers_folder(folder).family is ModelFamily.SDXL_REFINER


def test_refiner_takes_over_the_last_steps_and_is_recorded(served):
    plain, _ = _run(served)
    refined, info = _run(served, refiner_checkpoint="xl-refiner", refiner_switch_at=0.5)
    assert refined != plain
    assert "Refiner: xl-refiner, Refiner switch at: 0.5" in info["infotexts"][0]
    assert served[0].current == "xl"


def test_refiner_with_a_non_sdxl_base_is_refused(served):
    with pytest.raises(BadRequest, match="needs an SDXL base model; sd is SD1.x"):
        _run(served, refiner_checkpoint="xl-refiner",
             override_settings={"sd_model_checkpoint": "sd"})


def test_a_base_model_named_as_refiner_is_refused(served):
    with pytest.raises(BadRequest, match="'sd' is SD1.x, not an SDXL refiner"):
        _run(served, refiner_checkpoint="sd")


def test_the_refiner_alone_is_refused_as_a_first_pass(served):
    with pytest.raises(BadRequest, match="xl-refiner is an SDXL refiner, a second pass"):
        _run(served, override_settings={"sd_model_checkpoint": "xl-refiner"})


def _pixels(png_base64: str) -> bytes:
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(png_base64))).tobytes()


def test_a_refiner_single_file_refines_as_its_diffusers_folder_does(served):
    from_folder, _ = _run(served, refiner_checkpoint="xl-refiner", refiner_switch_at=0.5)
    from_file, info = _run(served, refiner_checkpoint="xl-refiner-file", refiner_switch_at=0.5)
    # the same weights, read from the original key layout (the PNGs' text chunks name each)
    assert _pixels(from_file) == _pixels(from_folder)
    assert "Refiner: xl-refiner-file" in info["infotexts"][0]


def test_a_refiner_file_without_configs_takes_the_shipped_unet_and_its_own_encoder(tmp_path):
    from easel_inference.archconfigs import refiner_unet
    from easel_inference.loader import _CheckpointView, refiner_components

    pipe = build_refiner(seed=5)
    path = save_refiner_single_file(pipe, tmp_path / "refiner", embed_configs=False)
    configs = refiner_components(_CheckpointView(path))
    assert configs["unet"] == refiner_unet()
    encoder = configs["text_encoder_2"]
    tiny = pipe.text_encoder_2.config
    assert (encoder["hidden_size"], encoder["num_hidden_layers"], encoder["projection_dim"]) == (
        tiny.hidden_size, tiny.num_hidden_layers, tiny.projection_dim)
