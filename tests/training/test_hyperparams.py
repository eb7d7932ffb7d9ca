"""The job reads hyperparameters.json through the contract and fails with a message to act on."""

from __future__ import annotations

import json

import pytest

from easel_training.errors import TrainingInputError
from easel_training.job import read_hyperparameters
from easel_training.paths import JobPaths


def _paths(tmp_path, text):
    paths = JobPaths(tmp_path)
    paths.hyperparameters.parent.mkdir(parents=True, exist_ok=True)
    paths.hyperparameters.write_text(text, encoding="utf-8")
    return paths


def test_the_job_reads_its_string_hyperparameters(tmp_path):
    paths = _paths(tmp_path, json.dumps({"instance_prompt": "sks", "rank": "8",
                                         "sagemaker_program": "x"}))
    hp = read_hyperparameters(paths)
    assert hp.rank == 8 and hp.instance_prompt == "sks"


def test_invalid_values_fail_the_job_naming_each_field(tmp_path):
    paths = _paths(tmp_path, json.dumps({"instance_prompt": "sks", "rank": "0", "mode": "x"}))
    with pytest.raises(TrainingInputError) as caught:
        read_hyperparameters(paths)
    message = str(caught.value)
    assert "hyperparameter 'rank': must be at least 1" in message
    assert "hyperparameter 'mode': must be one of lora, full" in message


def test_compile_scope_defaults_to_model_and_refuses_other_scopes(tmp_path):
    assert read_hyperparameters(_paths(tmp_path, '{"instance_prompt": "sks"}')).compile_scope \
        == "model"
    paths = _paths(tmp_path, json.dumps({"instance_prompt": "sks", "compile_scope": "unet"}))
    with pytest.raises(TrainingInputError,
                       match="hyperparameter 'compile_scope': must be one of blocks, model"):
        read_hyperparameters(paths)


def test_a_file_that_is_not_json_fails_clearly(tmp_path):
    with pytest.raises(TrainingInputError, match="not valid JSON"):
        read_hyperparameters(_paths(tmp_path, "{nope"))


def test_a_missing_file_reports_the_required_prompt(tmp_path):
    with pytest.raises(TrainingInputError, match="'instance_prompt': required"):
        read_hyperparameters(JobPaths(tmp_path))
