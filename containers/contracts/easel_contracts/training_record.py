"""A training job's item in the portal's table, written by the portal and by ``scripts/train.py``
and read by the portal's Training pages.

Only the attributes live here; the item's keys (``pk``/``sk`` and the GSI pair) are built by the
table's key owner.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from easel_contracts.hyperparameters import Mode


class TrainingJobRecord(BaseModel):
    """What the portal keeps about one training job (SageMaker keeps the rest)."""

    # the table item also holds its keys; they are not part of the record
    model_config = ConfigDict(extra="ignore", frozen=True)

    job: str = Field(min_length=1, description="SageMaker training job name.")
    owner: str = Field(min_length=1, description="Portal user who submitted it.")
    mode: Mode = Field(description="`lora` or `full` (the job's `mode` hyperparameter).")
    output_name: str = Field(min_length=1, description="File name of the result.")
    model_s3_uri: str = Field(description="The base model the job trained on.")
    concepts_s3_uri: str = Field(description="The training images.")
    instance_type: str
    created_at: str = Field(description="ISO 8601 UTC time of submission.")
    published_lora: str | None = Field(
        None, description="Name in the LoRA library once the result (or, for a stopped or "
        "failed job, its last checkpoint's LoRA) was published.")
    published_step: int | None = Field(
        None, ge=0, description="The checkpoint step the published LoRA came from; None when "
        "it is the completed job's result.")
    checkpoint_s3_uri: str | None = Field(
        None, description="Where the job's /opt/ml/checkpoints syncs (SageMaker's "
        "CheckpointConfig.S3Uri): its checkpoints, progress.json and preview images. A resumed "
        "job shares the stopped job's, so it starts from that job's last checkpoint. None: "
        "`<bucket>/training/<job>/checkpoints/` (jobs recorded before this field).")
    resumed_from: str | None = Field(
        None, description="The stopped job this one resumed, if any.")
