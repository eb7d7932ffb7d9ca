"""SageMaker ARNs (the resource part is lowercased, as SageMaker does)."""

from __future__ import annotations

from dataclasses import dataclass

RESOURCE_TYPES = {
    "model": "model",
    "endpoint-config": "endpoint-config",
    "endpoint": "endpoint",
    "training-job": "training-job",
}


@dataclass(frozen=True)
class ArnFactory:
    region: str
    account_id: str

    def arn(self, kind: str, name: str) -> str:
        resource = f"{RESOURCE_TYPES[kind]}/{name.lower()}"
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}:{resource}"

    def log_stream_arn(self, endpoint_name: str) -> str:
        return (
            f"arn:aws:logs:{self.region}:{self.account_id}:log-group:"
            f"/aws/sagemaker/Endpoints/{endpoint_name}"
        )
