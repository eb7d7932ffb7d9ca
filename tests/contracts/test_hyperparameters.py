"""HyperParameters: SageMaker's string hyperparameters -> one typed, validated argument set."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from easel_contracts.hyperparameters import (
    HyperParameterError,
    HyperParameters,
    default_learning_rate,
    field_schemas,
    markdown_table,
)

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", ROOT / "containers" / "training" / "README.md"]
BASE = {"instance_prompt": "a photo of sks dog"}


def test_strings_become_typed_values():
    hp = HyperParameters.from_strings({
        **BASE, "mode": "FULL", "max_train_steps": "250", "learning_rate": "5e-6",
        "with_prior_preservation": "True", "class_prompt": "a photo of a dog",
        "random_flip": "yes", "train_batch_size": "2", "prior_loss_weight": "0.5",
        "resolution": "768", "mixed_precision": "bf16",
    })
    assert hp.mode == "full"
    assert hp.max_train_steps == 250
    assert hp.learning_rate == pytest.approx(5e-6)
    assert hp.with_prior_preservation is True and hp.random_flip is True
    assert hp.train_batch_size == 2 and hp.resolution == 768
    assert hp.prior_loss_weight == 0.5 and hp.mixed_precision == "bf16"


def test_defaults_and_derived_values():
    hp = HyperParameters.from_strings(BASE)
    assert hp.mode == "lora" and hp.rank is None and hp.max_train_steps == 1000
    hp = hp.for_family("sd1")  # rank: the family's, decided once the model is known
    assert hp.rank == 16 and hp.effective_alpha == 16.0
    assert hp.effective_learning_rate == pytest.approx(1e-4)
    assert hp.effective_text_encoder_learning_rate == pytest.approx(1e-4)
    assert hp.effective_output_name == "easel-lora"
    assert hp.resolution is None  # the base model's native size, decided after loading
    full = HyperParameters.from_strings({**BASE, "mode": "full"})
    assert full.effective_learning_rate == pytest.approx(2e-6)
    assert full.effective_output_name == "easel-full"


def test_the_learning_rate_rule_is_the_one_function():
    for mode in ("lora", "full"):
        hp = HyperParameters(instance_prompt="sks", mode=mode)
        assert hp.effective_learning_rate == default_learning_rate(mode)
    assert HyperParameters(instance_prompt="sks", learning_rate=3e-5).effective_learning_rate \
        == 3e-5


def test_auto_and_empty_mean_derived():
    hp = HyperParameters.from_strings({**BASE, "resolution": "auto", "alpha": "", "rank": "8",
                                       "learning_rate": "None"})
    assert hp.resolution is None and hp.learning_rate is None and hp.effective_alpha == 8.0


def test_whole_number_floats_are_accepted_for_integers():
    assert HyperParameters.from_strings({**BASE, "max_train_steps": "1e3"}).max_train_steps \
        == 1000
    assert HyperParameters.from_strings({**BASE, "rank": "8.0"}).rank == 8


def test_json_numbers_and_booleans_are_accepted():
    hp = HyperParameters.from_strings({**BASE, "max_train_steps": 10, "random_flip": True})
    assert hp.max_train_steps == 10 and hp.random_flip is True


def test_a_json_boolean_is_not_a_number():
    with pytest.raises(HyperParameterError, match="'rank': must be an integer"):
        HyperParameters.from_strings({**BASE, "rank": True})


def test_sagemaker_bookkeeping_keys_are_ignored():
    hp = HyperParameters.from_strings({**BASE, "sagemaker_job_name": "x",
                                       "_tuning_objective": "y"})
    assert hp.instance_prompt == BASE["instance_prompt"]


def test_strings_are_stripped():
    assert HyperParameters.from_strings({"instance_prompt": "  sks  "}).instance_prompt == "sks"


@pytest.mark.parametrize(
    ("values", "field", "fragment"),
    [
        ({"mode": "dreambooth"}, "mode", "one of lora, full"),
        ({"max_train_steps": "ten"}, "max_train_steps", "an integer"),
        ({"max_train_steps": "0"}, "max_train_steps", "at least 1"),
        ({"max_train_steps": "100001"}, "max_train_steps", "at most 100000"),
        ({"max_train_steps": "2.5"}, "max_train_steps", "an integer"),
        ({"learning_rate": "0"}, "learning_rate", "greater than 0"),
        ({"learning_rate": "nan"}, "learning_rate", "finite number"),
        ({"learning_rate": "abc"}, "learning_rate", "a number"),
        ({"rank": "1000"}, "rank", "at most 256"),
        ({"resolution": "500"}, "resolution", "multiple of 8"),
        ({"random_flip": "maybe"}, "random_flip", "true or false"),
        ({"mixed_precision": "fp8"}, "mixed_precision", "one of"),
        ({"compile_scope": "layers"}, "compile_scope", "one of blocks, model"),
        ({"prior_loss_weight": "-1"}, "prior_loss_weight", "at least 0"),
        ({"output_name": "../evil"}, "output_name", "letters, digits"),
        ({"with_prior_preservation": "true"}, "class_prompt", "required when"),
        ({"lr_warmup_steps": "50", "max_train_steps": "10"}, "lr_warmup_steps", "exceed"),
        ({"instance_prompt": ""}, "instance_prompt", "must not be empty"),
        ({"instance_prompt": "x" * 3000}, "instance_prompt", "at most 2000"),
        ({"class_prompt": "a\x00b"}, "class_prompt", "NUL"),
        ({"validation_prompt": "a dog\nin a hat"}, "validation_prompt", "one line"),
        ({"lerning_rate": "1e-4"}, "lerning_rate", "unknown name"),
        ({"seed": {"a": 1}}, "seed", "must be a string"),
    ],
)
def test_each_bad_value_names_its_field(values, field, fragment):
    with pytest.raises(HyperParameterError) as caught:
        HyperParameters.from_strings({**BASE, **values})
    assert [name for name, _ in caught.value.problems] == [field]
    message = str(caught.value)
    assert f"'{field}'" in message
    assert fragment in message


def test_the_bad_value_is_quoted_as_given():
    with pytest.raises(HyperParameterError, match=r"got '-3'"):
        HyperParameters.from_strings({**BASE, "seed": "-3"})


def test_missing_instance_prompt_is_reported():
    with pytest.raises(HyperParameterError, match="'instance_prompt': required"):
        HyperParameters.from_strings({})


def test_all_problems_are_reported_together():
    with pytest.raises(HyperParameterError) as caught:
        HyperParameters.from_strings({**BASE, "rank": "0", "seed": "-3", "mode": "x"})
    assert [name for name, _ in caught.value.problems] == ["mode", "rank", "seed"]


def test_non_object_is_refused():
    with pytest.raises(HyperParameterError, match="JSON object"):
        HyperParameters.from_strings(["mode", "lora"])  # type: ignore[arg-type]


def test_to_sagemaker_gives_strings_and_leaves_derived_values_out():
    hp = HyperParameters(instance_prompt="sks", learning_rate=2.5e-5, random_flip=True)
    strings = hp.to_sagemaker()
    assert all(isinstance(value, str) for value in strings.values())
    assert strings["learning_rate"] == "2.5e-05" and strings["random_flip"] == "true"
    assert "resolution" not in strings and "alpha" not in strings
    assert HyperParameters.from_strings(strings) == hp


def test_sagemaker_limits_hold_for_every_value():
    # CreateTrainingJob: HyperParameters holds at most 100 entries, keys at most 256 characters,
    # values at most 2500 characters (API reference, CreateTrainingJob, "HyperParameters":
    # https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateTrainingJob.html).
    # The stand-ins do not check this.
    texts = {name: field for name, field in field_schemas().items()
             if field["type"] == "string" and "enum" not in field}
    assert all(field.get("maxLength", 10**9) <= 2500 for field in texts.values())
    longest = {name: "x" * field["maxLength"] for name, field in texts.items()
               if "pattern" not in field}
    strings = HyperParameters(**longest).to_sagemaker()
    # The API model's HyperParameterValue pattern is `.*` (botocore's sagemaker service-2.json),
    # which matches no line break: every text field is one line.
    assert all(re.fullmatch(".*", value) for value in strings.values())
    assert len(HyperParameters.model_fields) <= 100
    assert max(len(key) for key in strings) <= 256
    assert max(len(value) for value in strings.values()) <= 2500


def test_schema_flattens_optional_fields():
    fields = field_schemas()
    assert fields["resolution"]["type"] == "integer" and fields["resolution"]["derived"]
    assert fields["resolution"]["multipleOf"] == 8
    assert fields["max_train_steps"] == {**fields["max_train_steps"], "default": 1000,
                                         "minimum": 1, "maximum": 100_000, "derived": False}
    assert fields["instance_prompt"]["required"]
    assert fields["mode"]["enum"] == ["lora", "full"]


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_readme_table_is_the_one_the_model_produces(readme):
    text = readme.read_text(encoding="utf-8")
    match = re.search(r"^\| name \| type \| default \| bounds \| meaning \|\n(?:\|.*\n)+", text,
                      flags=re.MULTILINE)
    assert match, f"{readme} has no hyperparameter table"
    assert match.group(0).rstrip("\n") == markdown_table(), (
        "regenerate the table: python -c 'from easel_contracts.hyperparameters import "
        "markdown_table; print(markdown_table())'")


def test_interface_hyperparameters_exist():
    agreed = {"mode", "checkpoint", "instance_prompt", "class_prompt", "max_train_steps",
              "learning_rate", "rank", "alpha", "resolution", "train_batch_size", "seed",
              "output_name", "with_prior_preservation", "prior_loss_weight", "num_class_images",
              "train_text_encoder", "mixed_precision", "use_8bit_adam", "center_crop",
              "bucketing", "random_flip", "checkpointing_steps", "validation_steps",
              "validation_prompt"}
    assert agreed <= set(HyperParameters.model_fields)


def test_family_defaults_fill_only_what_was_left_derived():
    hp = HyperParameters.from_strings({**BASE, "rank": "8"})
    schnell = hp.for_family("flux_schnell")
    assert schnell.rank == 8  # given: kept
    assert schnell.validation_inference_steps == 4 and schnell.validation_guidance_scale == 0.0
    assert hp.for_family("sd35_medium").validation_guidance_scale == 4.5
    assert hp.for_family("sdxl").validation_inference_steps == 25


def test_every_trained_family_has_one_row_of_defaults():
    from easel_contracts.families import ModelFamily
    from easel_contracts.hyperparameters import TRAINING_DEFAULTS, training_defaults

    assert set(TRAINING_DEFAULTS) == set(ModelFamily) - {ModelFamily.SDXL_REFINER}
    assert TRAINING_DEFAULTS[ModelFamily.FLUX_DEV].full_learning_rate is None
    with pytest.raises(ValueError, match="SDXL refiner is not trained"):
        training_defaults("sdxl_refiner")
