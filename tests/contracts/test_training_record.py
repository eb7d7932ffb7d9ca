"""TrainingJobRecord: the attributes of a training job's table item."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from easel_contracts.training_record import TrainingJobRecord

ITEM = {"job": "easel-dog", "owner": "alice", "mode": "lora", "output_name": "dog",
        "model_s3_uri": "s3://b/models/m.tar.gz", "concepts_s3_uri": "s3://b/concepts/alice/d/",
        "instance_type": "ml.g5.2xlarge", "created_at": "2026-01-01T00:00:00Z"}


def test_a_table_item_reads_as_a_record_without_its_keys():
    record = TrainingJobRecord.model_validate(
        {**ITEM, "pk": "training#easel-dog", "sk": "meta", "gsi1pk": "training",
         "gsi1sk": "2026-01-01T00:00:00Z#easel-dog"})
    assert record.job == "easel-dog" and record.published_lora is None
    assert "pk" not in record.model_dump()


def test_a_published_lora_is_kept():
    assert TrainingJobRecord.model_validate(
        {**ITEM, "published_lora": "dog"}).published_lora == "dog"


@pytest.mark.parametrize("missing", ["job", "owner", "mode", "output_name", "created_at"])
def test_each_attribute_the_pages_show_is_required(missing):
    with pytest.raises(ValidationError, match=missing):
        TrainingJobRecord.model_validate({k: v for k, v in ITEM.items() if k != missing})


def test_the_mode_is_the_hyperparameters_mode():
    with pytest.raises(ValidationError, match="mode"):
        TrainingJobRecord.model_validate({**ITEM, "mode": "dreambooth"})
