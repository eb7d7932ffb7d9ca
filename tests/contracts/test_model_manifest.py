"""The model manifest beside each model: where it lives and what a reader accepts."""

from __future__ import annotations

import pytest

from easel_contracts.model_manifest import (
    MANIFEST_MAX_BYTES,
    ManifestCheckpoint,
    ManifestError,
    ModelManifest,
    manifest_key,
    parse_manifest,
)


def _manifest() -> ModelManifest:
    return ModelManifest(
        name="studio", layout="archive", written_by="upload_model",
        checkpoints=(ManifestCheckpoint(name="a", path="Stable-diffusion/a.safetensors",
                                        family="sdxl"),
                     ManifestCheckpoint(name="b", path="Stable-diffusion/b", family="sdxl"),
                     ManifestCheckpoint(name="c", path="Stable-diffusion/c.safetensors",
                                        family="flux_schnell")),
        files=({"path": "Stable-diffusion/a.safetensors", "bytes": 10},
               {"path": "Lora/x.safetensors", "bytes": 5}),
    )


@pytest.mark.parametrize(("model_key", "expected"), [
    ("models/studio/model.tar.gz", "models/studio/easel-model.json"),
    ("models/studio/", "models/studio/easel-model.json"),
    ("training/job-1/output/model.tar.gz", "training/job-1/output/easel-model.json"),
    ("models/sd15.tar.gz", "models/sd15.easel-model.json"),
])
def test_manifest_lives_beside_the_model(model_key, expected):
    assert manifest_key(model_key) == expected


def test_manifest_key_of_something_that_is_not_a_model_is_refused():
    with pytest.raises(ManifestError, match="not a model archive"):
        manifest_key("models/readme.txt")


def test_manifest_round_trips_through_json():
    manifest = _manifest()
    assert parse_manifest(manifest.to_json().encode(), where="m") == manifest


def test_families_are_listed_once_in_order_and_sizes_add_up():
    manifest = _manifest()
    assert [f.value for f in manifest.families] == ["sdxl", "flux_schnell"]
    assert manifest.total_bytes == 15
    assert manifest.checkpoints[2].label == "FLUX.1 schnell"


def test_manifest_with_an_unknown_family_is_refused_naming_the_field():
    raw = _manifest().to_json().replace('"flux_schnell"', '"sd4"').encode()
    with pytest.raises(ManifestError, match=r"m: not a valid model manifest \(checkpoints.2.family"):
        parse_manifest(raw, where="m")


def test_manifest_without_checkpoints_is_refused():
    raw = _manifest().model_copy(update={"checkpoints": ()}).to_json().encode()
    with pytest.raises(ManifestError, match="checkpoints"):
        parse_manifest(raw, where="m")


def test_oversized_manifest_is_refused_before_parsing():
    with pytest.raises(ManifestError, match="larger than"):
        parse_manifest(b" " * (MANIFEST_MAX_BYTES + 1), where="m")


def test_a_training_manifest_may_list_only_a_lora():
    from easel_contracts.model_manifest import ManifestLora, training_manifest_key

    lora = ManifestLora(name="dog", path="Lora/dog.safetensors", family="flux_dev",
                        key_format="diffusers", rank=16, base_model="flux1-dev")
    manifest = ModelManifest(name="dog", layout="archive", written_by="training", loras=(lora,))
    assert parse_manifest(manifest.to_json().encode(), where="m") == manifest
    assert manifest.families == ("flux_dev",)
    assert training_manifest_key("easel-dog") == "training/easel-dog/checkpoints/easel-model.json"
