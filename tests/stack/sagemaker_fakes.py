"""SageMaker resources in moto, shaped like the ones the portal creates."""

from __future__ import annotations

ROLE = "arn:aws:iam::123456789012:role/easel-exec"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/inference:abc"


def make_endpoint(client, name: str, tags: list[dict[str, str]]) -> None:
    """A model, an endpoint config and an endpoint, all called `name`, all with `tags`."""
    client.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                        PrimaryContainer={"Image": IMAGE}, Tags=tags)
    client.create_endpoint_config(
        EndpointConfigName=name, Tags=tags,
        ProductionVariants=[{"VariantName": "main", "ModelName": name,
                             "InitialInstanceCount": 1, "InstanceType": "ml.g4dn.xlarge"}],
    )
    client.create_endpoint(EndpointName=name, EndpointConfigName=name, Tags=tags)
