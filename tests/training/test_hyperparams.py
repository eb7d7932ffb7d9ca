"""SageMaker's string hyperparameters -> one typed, validated argument set."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from easel_training.errors import TrainingInputError
from easel_training.hyperparams import hyperparameter_specs, parse_hyperparameters

README = Path(__file__).resolve().parents[2] / "containers" / "training" / "README.md"
BASE = {"instance_prompt": "a photo of sks dog"}


def test_strings_become_typed_values():
    hp = parse_hyperparameters({
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
    hp = parse_hyperparameters(BASE)
    assert hp.mode == "lora" and hp.rank == 16
    assert hp.effective_alpha == 16.0
    assert hp.effective_learning_rate == pytest.approx(1e-4)
    assert hp.effective_output_name == "easel-lora"
    assert hp.resolution is None  # the base model's native size, decided after loading
    full = parse_hyperparameters({**BASE, "mode": "full"})
    assert full.effective_learning_rate == pytest.approx(2e-6)
    assert full.effective_output_name == "easel-full"


def test_auto_and_empty_mean_derived():
    hp = parse_hyperparameters({**BASE, "resolution": "auto", "alpha": "", "rank": "8"})
    assert hp.resolution is None and hp.effective_alpha == 8.0


def test_whole_number_floats_are_accepted_for_integers():
    assert parse_hyperparameters({**BASE, "max_train_steps": "1e3"}).max_train_steps == 1000


def test_json_numbers_and_booleans_are_accepted():
    hp = parse_hyperparameters({**BASE, "max_train_steps": 10, "random_flip": True})
    assert hp.max_train_steps == 10 and hp.random_flip is True


def test_sagemaker_bookkeeping_keys_are_ignored():
    hp = parse_hyperparameters({**BASE, "sagemaker_job_name": "x", "_tuning_objective": "y"})
    assert hp.instance_prompt == BASE["instance_prompt"]


@pytest.mark.parametrize(
    ("values", "field", "fragment"),
    [
        ({"mode": "dreambooth"}, "mode", "one of lora, full"),
        ({"max_train_steps": "ten"}, "max_train_steps", "an integer"),
        ({"max_train_steps": "0"}, "max_train_steps", "at least 1"),
        ({"max_train_steps": "2.5"}, "max_train_steps", "an integer"),
        ({"learning_rate": "0"}, "learning_rate", "greater than 0"),
        ({"learning_rate": "nan"}, "learning_rate", "a number"),
        ({"rank": "1000"}, "rank", "at most 256"),
        ({"resolution": "500"}, "resolution", "multiple of 8"),
        ({"random_flip": "maybe"}, "random_flip", "true or false"),
        ({"mixed_precision": "fp8"}, "mixed_precision", "one of"),
        ({"prior_loss_weight": "-1"}, "prior_loss_weight", "at least 0"),
        ({"output_name": "../evil"}, "output_name", "letters, digits"),
        ({"with_prior_preservation": "true"}, "class_prompt", "required when"),
        ({"lr_warmup_steps": "50", "max_train_steps": "10"}, "lr_warmup_steps", "exceed"),
        ({"instance_prompt": ""}, "instance_prompt", "must not be empty"),
        ({"instance_prompt": "x" * 3000}, "instance_prompt", "at most 2000"),
        ({"lerning_rate": "1e-4"}, "lerning_rate", "unknown name"),
        ({"seed": {"a": 1}}, "seed", "must be a string"),
    ],
)
def test_each_bad_value_names_its_field(values, field, fragment):
    with pytest.raises(TrainingInputError) as caught:
        parse_hyperparameters({**BASE, **values})
    message = str(caught.value)
    assert f"'{field}'" in message
    assert fragment in message


def test_missing_instance_prompt_is_reported():
    with pytest.raises(TrainingInputError, match="'instance_prompt': required"):
        parse_hyperparameters({})


def test_all_problems_are_reported_together():
    with pytest.raises(TrainingInputError) as caught:
        parse_hyperparameters({**BASE, "rank": "0", "seed": "-3", "mode": "x"})
    message = str(caught.value)
    assert all(f"'{name}'" in message for name in ("rank", "seed", "mode"))


def test_non_object_is_refused():
    with pytest.raises(TrainingInputError, match="JSON object"):
        parse_hyperparameters(["mode", "lora"])  # type: ignore[arg-type]


def test_readme_documents_every_hyperparameter():
    text = README.read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.MULTILINE))
    names = {spec.name for spec in hyperparameter_specs()}
    assert names <= rows, f"undocumented: {sorted(names - rows)}"
    assert rows <= names, f"documented but unknown: {sorted(rows - names)}"


def test_interface_hyperparameters_exist():
    names = {spec.name for spec in hyperparameter_specs()}
    agreed = {"mode", "checkpoint", "instance_prompt", "class_prompt", "max_train_steps",
              "learning_rate", "rank", "alpha", "resolution", "train_batch_size", "seed",
              "output_name", "with_prior_preservation", "prior_loss_weight", "num_class_images",
              "train_text_encoder", "mixed_precision", "use_8bit_adam", "center_crop",
              "bucketing", "random_flip", "checkpointing_steps", "validation_steps",
              "validation_prompt"}
    assert agreed <= names
