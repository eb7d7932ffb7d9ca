"""Helpers and constants for the helper-CLI tests (imported as `script_support`)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

REGION = "us-east-1"
BUCKET = "easel-data-test"
SECRET = "easel-admin-password"
TABLE = "easel-state-test"
ROLE_ARN = "arn:aws:iam::123456789012:role/easel-sagemaker-execution"
EASEL_ENV = ("EASEL_STACK", "EASEL_STAGE", "EASEL_BUCKET", "EASEL_TABLE", "EASEL_ADMIN_SECRET",
             "EASEL_EXECUTION_ROLE_ARN", "EASEL_TRAINING_IMAGE", "AWS_REGION")

STACK_TEMPLATE = {
    "Resources": {
        "Data": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": BUCKET}},
    },
    "Outputs": {
        "BucketName": {"Value": {"Ref": "Data"}},
        "AdminSecretName": {"Value": SECRET},
        "Region": {"Value": REGION},
        "TableName": {"Value": TABLE},
        "ExecutionRoleArn": {"Value": ROLE_ARN},
        "TrainingImageUri": {"Value": "123456789012.dkr.ecr.us-east-1.amazonaws.com/t:abc"},
    },
}


def write_safetensors(path: Path, tensors: dict[str, tuple[list[int], int]],
                      *, filler: bytes | None = None) -> Path:
    """A valid safetensors file: name -> (shape, element count) with float16 zeros (or filler)."""
    header: dict[str, object] = {}
    offset = 0
    for name, (shape, _count) in tensors.items():
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    data = filler[:offset] if filler is not None else bytes(offset)
    assert len(data) == offset
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def sd1_keys(extra_elements: int = 16) -> dict[str, tuple[list[int], int]]:
    return {
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": ([4, 4], 16),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
            ([8, 768], 0),
        "first_stage_model.decoder.conv_in.weight": ([extra_elements], 0),
    }


def lora_keys() -> dict[str, tuple[list[int], int]]:
    return {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": ([4, 8], 0),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": ([8, 4], 0),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ([1], 0),
    }
