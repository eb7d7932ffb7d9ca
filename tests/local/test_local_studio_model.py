"""`make local MODEL=`: the user's checkpoint goes up uncompressed and deploys from its prefix."""

from __future__ import annotations

import numpy as np
from local_helpers import fake_settings, wait_while
from safetensors.numpy import save_file

from local import studio
from local.clients import local_client
from local.runtime import LocalAws

SD1_KEYS = {
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (4, 4),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 768),
    "first_stage_model.decoder.conv_in.weight": (16,),
}


class _Clients:
    def __init__(self, aws: LocalAws) -> None:
        self.sagemaker = aws.client("sagemaker")


def test_the_model_is_uploaded_uncompressed_and_deployed_from_its_prefix(tmp_path, monkeypatch):
    checkpoint = tmp_path / "mine.safetensors"
    save_file({k: np.zeros(shape, dtype=np.float16) for k, shape in SD1_KEYS.items()},
              str(checkpoint))
    with LocalAws(tmp_path / "state", settings=fake_settings()) as aws:
        env = studio.portal_environment(aws.env, "default")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("HOME", str(tmp_path))  # upload_model's resume state
        s3 = local_client("s3", endpoint_url=aws.emulator_url, region=aws.names.region)

        endpoint = studio.upload_and_deploy(checkpoint, env, s3)

        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=aws.names.bucket,
                                                      Prefix="models/mine/")["Contents"]]
        assert keys == ["models/mine/Stable-diffusion/mine.safetensors"]
        described = wait_while(_Clients(aws), f"easel-{endpoint}", "Creating", timeout=120)
        assert described["EndpointStatus"] == "InService", described.get("FailureReason")
        model = aws.client("sagemaker").describe_model(
            ModelName=aws.client("sagemaker").describe_endpoint_config(
                EndpointConfigName=described["EndpointConfigName"]
            )["ProductionVariants"][0]["ModelName"])
        source = model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]
        assert source["S3Uri"] == f"s3://{aws.names.bucket}/models/mine/"
        assert source["CompressionType"] == "None"
