"""The SageMaker control-plane operations the stand-in answers (AWS JSON 1.1)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from local.sagemaker import s3io
from local.sagemaker.arns import ArnFactory
from local.sagemaker.endpoints import EndpointManager
from local.sagemaker.errors import (
    ResourceInUse,
    ResourceNotFound,
    UnknownOperation,
    ValidationException,
)
from local.sagemaker.listing import list_page
from local.sagemaker.records import RecordStore, now
from local.sagemaker.training import TrainingManager
from local.sagemaker.validation import filter_to_shape, operation_model, validate_json_request

SERVICE = "sagemaker"
_KIND_LABEL = {
    "model": "model",
    "endpoint-config": "endpoint configuration",
    "endpoint": "endpoint",
    "training-job": "training job",
}
_NAME_KEY = {
    "model": "ModelName",
    "endpoint-config": "EndpointConfigName",
    "endpoint": "EndpointName",
    "training-job": "TrainingJobName",
}
_ARN_KEY = {
    "model": "ModelArn",
    "endpoint-config": "EndpointConfigArn",
    "endpoint": "EndpointArn",
    "training-job": "TrainingJobArn",
}


class SageMakerControlPlane:
    """Dispatches ``SageMaker.<Operation>`` requests to the records and process managers."""

    def __init__(
        self,
        *,
        records: RecordStore,
        endpoints: EndpointManager,
        training: TrainingManager,
        arns: ArnFactory,
    ) -> None:
        self._records = records
        self._endpoints = endpoints
        self._training = training
        self._arns = arns
        self._operations: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "CreateModel": self.create_model,
            "DescribeModel": self.describe_model,
            "DeleteModel": self.delete_model,
            "ListModels": self.list_models,
            "CreateEndpointConfig": self.create_endpoint_config,
            "DescribeEndpointConfig": self.describe_endpoint_config,
            "DeleteEndpointConfig": self.delete_endpoint_config,
            "ListEndpointConfigs": self.list_endpoint_configs,
            "CreateEndpoint": self.create_endpoint,
            "DescribeEndpoint": self.describe_endpoint,
            "UpdateEndpoint": self.update_endpoint,
            "DeleteEndpoint": self.delete_endpoint,
            "ListEndpoints": self.list_endpoints,
            "CreateTrainingJob": self.create_training_job,
            "DescribeTrainingJob": self.describe_training_job,
            "ListTrainingJobs": self.list_training_jobs,
            "StopTrainingJob": self.stop_training_job,
            "AddTags": self.add_tags,
            "ListTags": self.list_tags,
            "DeleteTags": self.delete_tags,
        }

    @property
    def operation_names(self) -> list[str]:
        return sorted(self._operations)

    def handle(self, operation: str, body: bytes) -> dict[str, Any]:
        """Validate the request against botocore's model, run it, shape the response."""
        handler = self._operations.get(operation)
        if handler is None:
            raise UnknownOperation(
                f"The local SageMaker stand-in does not implement {operation!r}; "
                f"it implements: {', '.join(self.operation_names)}"
            )
        model = operation_model(SERVICE, operation)
        params = validate_json_request(model, body)
        result = handler(params)
        return filter_to_shape(result, model.output_shape)

    # --- helpers

    def _find(self, kind: str, name: str, *, missing: type = ValidationException) -> dict[str, Any]:
        record = self._records.get(kind, name)
        if record is None:
            if kind == "training-job":
                raise missing("Requested resource not found.")
            raise missing(f'Could not find {_KIND_LABEL[kind]} "{self._arns.arn(kind, name)}".')
        return record

    def _create(self, kind: str, name: str, record: dict[str, Any]) -> None:
        taken = {r[_NAME_KEY[kind]].lower() for r in self._records.all(kind)}
        if name.lower() in taken or not self._records.create(kind, name, record):
            if kind == "training-job":
                raise ResourceInUse(
                    "Training job names must be unique within an AWS account and region, and "
                    "a training job with this name already exists "
                    f"({self._arns.arn(kind, name)})"
                )
            raise ValidationException(
                f"Cannot create already existing {_KIND_LABEL[kind]} "
                f'"{self._arns.arn(kind, name)}".'
            )

    def _base_record(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        name = params[_NAME_KEY[kind]]
        timestamp = now()
        return {
            **params,
            _ARN_KEY[kind]: self._arns.arn(kind, name),
            "CreationTime": timestamp,
            "LastModifiedTime": timestamp,
            "Tags": params.get("Tags") or [],
        }

    @staticmethod
    def _require_s3_uri(value: str | None, field: str) -> None:
        if value is None:
            return
        try:
            s3io.parse_s3_uri(value, field=field)
        except s3io.S3DataError as exc:
            raise ValidationException(str(exc)) from exc

    # --- models

    def create_model(self, params: dict[str, Any]) -> dict[str, Any]:
        containers = ([params["PrimaryContainer"]] if params.get("PrimaryContainer") else []) + (
            params.get("Containers") or []
        )
        if not containers:
            raise ValidationException("Either PrimaryContainer or Containers must be provided.")
        for index, container in enumerate(containers):
            self._require_s3_uri(container.get("ModelDataUrl"), f"Containers[{index}].ModelDataUrl")
            source = (container.get("ModelDataSource") or {}).get("S3DataSource") or {}
            self._require_s3_uri(
                source.get("S3Uri"), f"Containers[{index}].ModelDataSource.S3DataSource.S3Uri"
            )
            if container.get("ModelDataUrl") and source:
                raise ValidationException(
                    "ModelDataUrl and ModelDataSource cannot both be set on a container."
                )
        record = self._base_record("model", params)
        self._create("model", params["ModelName"], record)
        return {"ModelArn": record["ModelArn"]}

    def describe_model(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._find("model", params["ModelName"])

    def delete_model(self, params: dict[str, Any]) -> dict[str, Any]:
        self._find("model", params["ModelName"])
        self._records.delete("model", params["ModelName"])
        return {}

    def list_models(self, params: dict[str, Any]) -> dict[str, Any]:
        models, token = list_page(
            self._records.all("model"),
            params,
            name_key="ModelName",
            status_key=None,
            summarize=lambda r: {k: r[k] for k in ("ModelName", "ModelArn", "CreationTime")},
            sort_keys={"Name": "ModelName", "CreationTime": "CreationTime"},
        )
        return {"Models": models, "NextToken": token}

    # --- endpoint configs

    def create_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        variants = params.get("ProductionVariants") or []
        if not variants:
            raise ValidationException("ProductionVariants must contain at least one variant.")
        names = [v["VariantName"] for v in variants]
        if len(set(names)) != len(names):
            raise ValidationException("VariantName must be unique within ProductionVariants.")
        for variant in variants:
            if not variant.get("ModelName"):
                raise ValidationException(
                    f"ProductionVariants[{variant['VariantName']}].ModelName is required."
                )
            self._find("model", variant["ModelName"])
        output = (params.get("AsyncInferenceConfig") or {}).get("OutputConfig") or {}
        if params.get("AsyncInferenceConfig") and not (
            output.get("S3OutputPath") or output.get("S3FailurePath")
        ):
            raise ValidationException(
                "AsyncInferenceConfig.OutputConfig.S3OutputPath is required for asynchronous "
                "inference."
            )
        self._require_s3_uri(output.get("S3OutputPath"), "AsyncInferenceConfig.S3OutputPath")
        self._require_s3_uri(output.get("S3FailurePath"), "AsyncInferenceConfig.S3FailurePath")
        record = self._base_record("endpoint-config", params)
        self._create("endpoint-config", params["EndpointConfigName"], record)
        return {"EndpointConfigArn": record["EndpointConfigArn"]}

    def describe_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._find("endpoint-config", params["EndpointConfigName"])

    def delete_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        self._find("endpoint-config", params["EndpointConfigName"])
        self._records.delete("endpoint-config", params["EndpointConfigName"])
        return {}

    def list_endpoint_configs(self, params: dict[str, Any]) -> dict[str, Any]:
        configs, token = list_page(
            self._records.all("endpoint-config"),
            params,
            name_key="EndpointConfigName",
            status_key=None,
            summarize=lambda r: {
                k: r[k] for k in ("EndpointConfigName", "EndpointConfigArn", "CreationTime")
            },
            sort_keys={"Name": "EndpointConfigName", "CreationTime": "CreationTime"},
        )
        return {"EndpointConfigs": configs, "NextToken": token}

    # --- endpoints

    def _config_and_model(self, config_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        config = self._find("endpoint-config", config_name)
        model = self._find("model", config["ProductionVariants"][0]["ModelName"])
        return config, model

    def create_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["EndpointName"]
        config, model = self._config_and_model(params["EndpointConfigName"])
        record = self._base_record("endpoint", params)
        record.update(EndpointStatus="Creating", _pending={"config": config, "model": model})
        self._create("endpoint", name, record)
        self._endpoints.start_deploy(name, config=config, model=model)
        return {"EndpointArn": record["EndpointArn"]}

    def describe_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        record = self._find("endpoint", params["EndpointName"])
        deployed = record.get("_deployed") or record.get("_pending") or {}
        config = deployed.get("config") or {}
        if record.get("EndpointStatus") in ("InService", "Updating") and config:
            serving = self._endpoints.serving(record["EndpointName"])
            record["ProductionVariants"] = [
                _variant_summary(v, model=deployed.get("model") or {}, live=serving is not None)
                for v in config["ProductionVariants"]
            ]
        progress = self._endpoints.progress(record["EndpointName"])
        pending = (record.get("_pending") or {}).get("config") or config
        if progress is not None and record.get("EndpointStatus") in ("Creating", "Updating") \
                and pending:
            # The deploy's current step (download MB/s, unpack, load, warm-up) in SageMaker's
            # own field for it: ProductionVariantSummary.VariantStatus, whose StatusMessage
            # "describes the status of the production variant".
            # https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ProductionVariantStatus.html
            message, started = progress
            variants = {v["VariantName"]: v for v in record.get("ProductionVariants") or []}
            name = pending["ProductionVariants"][0]["VariantName"]
            variant = variants.setdefault(name, {"VariantName": name})
            variant["VariantStatus"] = [{
                "Status": "Creating" if record["EndpointStatus"] == "Creating" else "Updating",
                "StatusMessage": message, "StartTime": round(started, 3)}]
            record["ProductionVariants"] = list(variants.values())
        if config.get("AsyncInferenceConfig"):
            record["AsyncInferenceConfig"] = config["AsyncInferenceConfig"]
        return record

    def update_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["EndpointName"]
        record = self._find("endpoint", name)
        if record.get("EndpointStatus") != "InService":
            raise ValidationException(
                f'Cannot update in-progress endpoint "{record["EndpointArn"]}".'
            )
        config, model = self._config_and_model(params["EndpointConfigName"])
        self._records.update(
            "endpoint",
            name,
            EndpointStatus="Updating",
            LastModifiedTime=now(),
            _pending={"config": config, "model": model},
        )
        self._endpoints.start_deploy(name, config=config, model=model)
        return {"EndpointArn": record["EndpointArn"]}

    def delete_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["EndpointName"]
        self._find("endpoint", name)
        self._records.update("endpoint", name, EndpointStatus="Deleting", LastModifiedTime=now())
        # Like SageMaker, answer at once and delete in the background (status Deleting): a
        # busy server may take its whole stop grace to end, and the caller must not wait.
        threading.Thread(target=self._finish_delete, args=(name,), name=f"delete-{name}",
                         daemon=True).start()
        return {}

    def _finish_delete(self, name: str) -> None:
        try:
            self._endpoints.stop_endpoint(name)
            self._endpoints.remove_files(name)
        finally:
            self._records.delete("endpoint", name)

    def list_endpoints(self, params: dict[str, Any]) -> dict[str, Any]:
        endpoints, token = list_page(
            self._records.all("endpoint"),
            params,
            name_key="EndpointName",
            status_key="EndpointStatus",
            summarize=lambda r: {
                k: r[k]
                for k in (
                    "EndpointName",
                    "EndpointArn",
                    "CreationTime",
                    "LastModifiedTime",
                    "EndpointStatus",
                )
            },
            sort_keys={
                "Name": "EndpointName",
                "CreationTime": "CreationTime",
                "Status": "EndpointStatus",
            },
        )
        return {"Endpoints": endpoints, "NextToken": token}

    # --- training jobs

    def create_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["TrainingJobName"]
        self._require_s3_uri(
            params["OutputDataConfig"].get("S3OutputPath"), "OutputDataConfig.S3OutputPath"
        )
        if not params["OutputDataConfig"].get("S3OutputPath"):
            raise ValidationException("OutputDataConfig.S3OutputPath is required.")
        self._require_s3_uri(
            (params.get("CheckpointConfig") or {}).get("S3Uri"), "CheckpointConfig.S3Uri"
        )
        if not params.get("AlgorithmSpecification"):
            raise ValidationException("AlgorithmSpecification is required.")
        channels = params.get("InputDataConfig") or []
        seen = set()
        for channel in channels:
            channel_name = channel["ChannelName"]
            if channel_name in seen:
                raise ValidationException(f"Channel name {channel_name!r} is used twice.")
            seen.add(channel_name)
            source = (channel.get("DataSource") or {}).get("S3DataSource")
            if not source:
                raise ValidationException(
                    f"InputDataConfig.{channel_name}: only S3DataSource channels are supported "
                    "locally."
                )
            if source.get("S3DataType") not in ("S3Prefix", None):
                raise ValidationException(
                    f"InputDataConfig.{channel_name}: S3DataType {source['S3DataType']} is not "
                    "supported locally; use S3Prefix."
                )
            self._require_s3_uri(source.get("S3Uri"), f"InputDataConfig.{channel_name}.S3Uri")
        hyperparameters = params.get("HyperParameters") or {}
        for key, value in hyperparameters.items():
            if not isinstance(value, str):
                raise ValidationException(f"HyperParameters.{key} must be a string.")
        record = self._base_record("training-job", params)
        timestamp = record["CreationTime"]
        record.update(
            TrainingJobStatus="InProgress",
            SecondaryStatus="Starting",
            SecondaryStatusTransitions=[
                {
                    "Status": "Starting",
                    "StartTime": timestamp,
                    "StatusMessage": "Preparing the instances for training",
                }
            ],
        )
        record.setdefault("StoppingCondition", {"MaxRuntimeInSeconds": 86400})
        self._create("training-job", name, record)
        self._training.start(name)
        return {"TrainingJobArn": record["TrainingJobArn"]}

    def describe_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._find("training-job", params["TrainingJobName"])

    def list_training_jobs(self, params: dict[str, Any]) -> dict[str, Any]:
        jobs, token = list_page(
            self._records.all("training-job"),
            params,
            name_key="TrainingJobName",
            status_key="TrainingJobStatus",
            summarize=lambda r: {
                k: r.get(k)
                for k in (
                    "TrainingJobName",
                    "TrainingJobArn",
                    "CreationTime",
                    "TrainingEndTime",
                    "LastModifiedTime",
                    "TrainingJobStatus",
                    "SecondaryStatus",
                )
                if r.get(k) is not None
            },
            sort_keys={
                "Name": "TrainingJobName",
                "CreationTime": "CreationTime",
                "Status": "TrainingJobStatus",
            },
        )
        return {"TrainingJobSummaries": jobs, "NextToken": token}

    def stop_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["TrainingJobName"]
        job = self._find("training-job", name, missing=ResourceNotFound)
        if job["TrainingJobStatus"] != "InProgress":
            raise ValidationException(
                "The request was rejected because the training job is in status "
                f"{job['TrainingJobStatus']}."
            )
        self._training.request_stop(name)
        return {}

    # --- tags

    def _record_for_arn(self, arn: str) -> tuple[str, str]:
        for kind in _ARN_KEY:
            for record in self._records.all(kind):
                if record.get(_ARN_KEY[kind]) == arn.lower() or record.get(_ARN_KEY[kind]) == arn:
                    return kind, record[_NAME_KEY[kind]]
        raise ValidationException(f"Resource {arn} not found or not taggable.")

    def add_tags(self, params: dict[str, Any]) -> dict[str, Any]:
        kind, name = self._record_for_arn(params["ResourceArn"])
        tags = {t["Key"]: t for t in (self._records.get(kind, name) or {}).get("Tags", [])}
        for tag in params["Tags"]:
            tags[tag["Key"]] = {"Key": tag["Key"], "Value": tag.get("Value", "")}
        if len(tags) > 50:
            raise ValidationException("A resource can have at most 50 tags.")
        self._records.update(kind, name, Tags=list(tags.values()))
        return {"Tags": params["Tags"]}

    def list_tags(self, params: dict[str, Any]) -> dict[str, Any]:
        kind, name = self._record_for_arn(params["ResourceArn"])
        tags = (self._records.get(kind, name) or {}).get("Tags", [])
        start = (
            int(params.get("NextToken") or 0)
            if str(params.get("NextToken") or "0").isdigit()
            else 0
        )
        limit = int(params.get("MaxResults") or 50)
        page = tags[start : start + limit]
        token = str(start + limit) if start + limit < len(tags) else None
        return {"Tags": page, "NextToken": token}

    def delete_tags(self, params: dict[str, Any]) -> dict[str, Any]:
        kind, name = self._record_for_arn(params["ResourceArn"])
        remove = set(params["TagKeys"])
        tags = (self._records.get(kind, name) or {}).get("Tags", [])
        self._records.update(kind, name, Tags=[t for t in tags if t["Key"] not in remove])
        return {}


def _variant_summary(
    variant: dict[str, Any], *, model: dict[str, Any], live: bool
) -> dict[str, Any]:
    count = int(variant.get("InitialInstanceCount") or 1)
    weight = float(variant.get("InitialVariantWeight", 1.0))
    summary: dict[str, Any] = {
        "VariantName": variant["VariantName"],
        "CurrentWeight": weight,
        "DesiredWeight": weight,
        "CurrentInstanceCount": count if live else 0,
        "DesiredInstanceCount": count,
    }
    image = (model.get("PrimaryContainer") or {}).get("Image")
    if image:
        summary["DeployedImages"] = [{"SpecifiedImage": image, "ResolvedImage": image}]
    return summary
