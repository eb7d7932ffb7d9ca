"""Deploying, listing and deleting SageMaker endpoints for the portal."""

from __future__ import annotations

from contextlib import suppress
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import ValidationError

from easel_contracts import scaling
from easel_contracts import table as keys
from easel_contracts.compile_cache import COMPILE_CACHE_PREFIX
from easel_contracts.instances import InstanceFacts
from easel_contracts.memory_plan import FP8_ENV, OFFLOAD_ENV, MemoryPlan, plan
from easel_contracts.model_manifest import (
    MANIFEST_MAX_BYTES,
    ManifestError,
    ModelManifest,
    manifest_key,
    parse_manifest,
)
from easel_contracts.s3uri import S3Uri
from easel_webui import sagemaker_requests as req
from easel_webui.errors import Conflict, NotFound, PortalError, UpstreamError, describe_validation
from easel_webui.settings import Settings
from easel_webui.storage import Bucket
from easel_webui.store import Table, iso_now, now

# While an endpoint is in one of these, SageMaker's variant status says what it is doing.
_CHANGING = ("Creating", "Updating", "SystemUpdating", "RollingBack")


def variant_progress(described: dict[str, Any]) -> str:
    """What a changing endpoint is doing, from its variants' status (``VariantStatus``:
    SageMaker's ``Status`` with its ``StatusMessage``; the local SageMaker puts the deploy step
    there: download MB/s, unpack, loading the model, warming up), or ""."""
    if described.get("EndpointStatus") not in _CHANGING:
        return ""
    parts = []
    for variant in described.get("ProductionVariants") or []:
        for status in variant.get("VariantStatus") or []:
            message = str(status.get("StatusMessage") or "").strip()
            if message:
                parts.append(message)
    return "; ".join(parts)


def _aws_message(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".strip()


# The deploy form's checkbox: it allows FP8 transformer weights (SD3.5 / FLUX.1), which the plan
# then chooses only where the 16-bit weights do not fit. Off by default: FP8 changes the images
# (README: their measured deviation) and the server refuses LoRAs on an FP8 transformer.
FP8_CHECKBOX = "FP8 weights"
FP8_ATTRIBUTE = "fp8_weights"  # the endpoint record's copy of FP8_ENV ("on", or "auto": no plan)


def allows_fp8(form: dict[str, Any]) -> bool:
    return str(form.get("fp8_weights") or "").strip().lower() in ("on", "1", "true", "yes")


def fp8_environment(fit: MemoryPlan | None, allowed: bool) -> dict[str, str]:
    """``FP8_ENV`` for the endpoint: ``on`` where the plan chose FP8 weights; ``auto`` (the server
    decides from the GPU it finds) where the box is ticked but the model has no manifest to plan
    with; nothing otherwise."""
    if fit is None:
        return {FP8_ENV: "auto"} if allowed else {}
    return {FP8_ENV: "on"} if fit.fp8_weights else {}


def _served_families(manifest: ModelManifest | None) -> list[Any]:
    """The families an endpoint would load: the manifest's checkpoints (its LoRAs need one)."""
    return [] if manifest is None else [c.family for c in manifest.checkpoints]


class Endpoints:
    def __init__(self, *, settings: Settings, clients: Any, table: Table, bucket: Bucket) -> None:
        self.settings = settings
        self.clients = clients
        self.table = table
        self.bucket = bucket

    # --- deploy

    def spec_from_form(self, form: dict[str, Any], *, creator: str) -> req.EndpointSpec:
        settings = self.settings
        instance_type = str(form.get("instance_type", ""))
        info = settings.endpoint_instance_types.get(instance_type)
        if info is None:
            raise PortalError(f"instance type: {instance_type!r} is not in the allowlist")
        picked = str(form.get("model") or "").strip()
        typed = str(form.get("model_s3_uri") or "").strip()
        if picked and typed and picked != typed:
            raise PortalError("model: choose a model from the bucket or enter an S3 URI, not both "
                              "(clear one of the two fields)")
        model = picked or typed
        if not model:
            raise PortalError("model: choose a model from the bucket or enter an s3:// URI")
        self._check_model_uri(model)
        mode = str(form.get("mode") or "realtime")
        if mode not in ("realtime", "async"):
            raise PortalError("mode: choose realtime or async")
        min_default = "1" if mode == "realtime" else "0"
        try:
            min_instances = int(form.get("min_instances") or min_default)
            max_instances = int(form.get("max_instances") or max(min_instances, 1))
            idle = float(form.get("idle_ttl_hours") if form.get("idle_ttl_hours") not in (None, "")
                         else settings.idle_ttl_hours)
            volume_raw = form.get("volume_size_gb")
            volume = int(volume_raw) if volume_raw not in (None, "") else None
        except ValueError:
            raise PortalError(
                "min/max instances, idle hours and volume size must be numbers"
            ) from None
        if max_instances > settings.max_instances_per_endpoint:
            raise PortalError(
                f"max instances: at most {settings.max_instances_per_endpoint} per endpoint"
            )
        if volume is not None and info.instance_storage:
            volume = None  # types with instance storage take no EBS volume: ignore the field
        if not info.instance_storage and volume is None:
            volume = 100
        if not settings.inference_image:
            raise PortalError("The inference image is not configured (EASEL_INFERENCE_IMAGE).")
        allowed = allows_fp8(form)
        manifest = self.manifest_of(model)
        fit = self.memory_plan(manifest, model, instance_type, info, volume,
                               fp8="auto" if allowed else "off")
        if fit is not None and not fit.fits:
            hint = ""
            if not allowed and self.memory_plan(manifest, model, instance_type, info, volume,
                                                fp8="auto").fits:
                hint = (f'; tick "{FP8_CHECKBOX}" to deploy it so (LoRAs are then not '
                        "available on this endpoint)")
            raise PortalError(f"instance type: {fit.summary()}{hint}")
        environment = {OFFLOAD_ENV: "1"} if fit is not None and fit.offload_text_encoders else {}
        environment.update(fp8_environment(fit, allowed))
        try:
            return req.EndpointSpec(
                deployment_id=settings.deployment_id,
                name=self.short_name(str(form.get("name", ""))),
                creator=creator,
                image=settings.inference_image,
                execution_role_arn=settings.execution_role_arn,
                model_s3_uri=model,
                instance_type=instance_type,
                instance=req.InstanceFacts(**info.model_dump()),
                mode=mode,  # type: ignore[arg-type]
                min_instances=min_instances,
                max_instances=max_instances,
                volume_size_gb=volume,
                idle_ttl_hours=idle,
                max_response_bytes=(settings.realtime_max_response_bytes if mode == "realtime"
                                    else settings.async_max_response_bytes),
                async_s3_uri=f"{self.bucket.uri}/async",
                lora_s3_uri=f"{self.bucket.uri}/loras/",
                compile_cache_s3_uri=f"{self.bucket.uri}/{COMPILE_CACHE_PREFIX}",
                log_retention_days=settings.log_retention_days,
                created_at=now(),
                extra_environment=environment,
            )
        except ValidationError as exc:
            raise PortalError(describe_validation(list(exc.errors()))) from None
        except ValueError as exc:
            raise PortalError(str(exc)) from None

    def manifest_of(self, uri: str) -> ModelManifest | None:
        """The manifest beside a model in the data bucket, or None where it has none (a model
        uploaded before manifests, or copied in by hand: it deploys without a plan)."""
        try:
            key = manifest_key(S3Uri.parse(uri).key)
            return parse_manifest(self.bucket.read(key, max_bytes=MANIFEST_MAX_BYTES), where=key)
        except NotFound:
            return None
        except (ManifestError, ValueError) as exc:
            raise PortalError(f"model: {exc}") from None

    def deploy_choices(self, models: list[dict[str, Any]]) -> None:
        """Each listed model (manifests attached) with its plan on every allowed instance type,
        ``fits``, the types it fits (the deploy form offers only those), and ``fits_fp8``, the
        types it fits with FP8 weights allowed (offered instead while the form's box is ticked)."""
        for model in models:
            manifest = model.get("manifest")
            served = _served_families(manifest)
            model["plans"], model["fits"], model["fits_fp8"] = {}, [], []
            if not served:
                continue
            sizes = {"model_bytes": manifest.total_bytes, "archive": model["kind"] == "archive"}
            for name, info in self.settings.endpoint_instance_types.items():
                fit = model["plans"][name] = plan(served, name, info, **sizes)
                if fit.fits:
                    model["fits"].append(name)
                if fit.fits or plan(served, name, info, fp8="auto", **sizes).fits:
                    model["fits_fp8"].append(name)

    def memory_plan(self, manifest: ModelManifest | None, uri: str, instance_type: str,
                    info: InstanceFacts, volume_size_gb: int | None, *,
                    fp8: Literal["off", "auto"] = "off") -> MemoryPlan | None:
        """The plan for a model (its manifest) on ``instance_type``; None without a manifest.
        ``fp8="auto"``: FP8 transformer weights where only they fit (the form's checkbox)."""
        served = _served_families(manifest)
        if manifest is None or not served:
            return None
        return plan(served, instance_type, info, model_bytes=manifest.total_bytes,
                    archive=not uri.endswith("/"), volume_size_gb=volume_size_gb, fp8=fp8)

    def _check_model_uri(self, uri: str) -> None:
        try:
            parsed = S3Uri.parse(uri)
        except ValueError as exc:
            raise PortalError(f"model: {exc}") from None
        if parsed.bucket != self.bucket.name:
            raise PortalError(
                f"model: the execution role reads only the data bucket ({self.bucket.name}); "
                "copy the model under models/ first"
            )
        if not (parsed.is_under("models/") or parsed.is_under("training/")):
            raise PortalError(
                "model: the execution role reads models only under models/ or training/"
            )
        if not parsed.key.endswith(("/", ".tar.gz", ".tgz")):
            raise PortalError("model: give a model.tar.gz object or a folder ending in '/'")
        # checked now: SageMaker would accept it and fail minutes later, in its own words
        key = parsed.key
        present = (bool(self.bucket.list(key, limit=1)[0]) if key.endswith("/")
                   else self.bucket.exists(key))
        if not present:
            raise PortalError(
                f"model: {uri} does not exist; upload the model there first or pick one "
                "from the bucket"
            )

    def short_name(self, typed: str) -> str:
        """The endpoint's own part of its name: every endpoint is named `<deployment id>-<name>`,
        so a name typed with that prefix already keeps it once, not twice."""
        name = typed.strip()
        return name.removeprefix(f"{self.settings.deployment_id}-") or name

    def deploy(self, spec: req.EndpointSpec) -> str:
        """Create model, endpoint config, endpoint and log group; returns the name.

        The scaling plan goes on the endpoint's record: the stack's scaler Lambda applies it when
        SageMaker reports the endpoint InService (it refuses scaling before), whoever uses it.
        """
        owned = [e for e in self.records() if e.get("creator") == spec.creator
                 and self.describe(e["endpoint"])]
        if len(owned) >= self.settings.max_endpoints_per_user:
            raise Conflict(
                f"You already have {len(owned)} endpoints; the limit is "
                f"{self.settings.max_endpoints_per_user}. Delete one first."
            )
        sm = self.clients.sagemaker
        try:
            sm.describe_endpoint(EndpointName=spec.endpoint_name)
        except ClientError:
            pass
        else:
            raise Conflict(f"name: an endpoint {spec.endpoint_name!r} already exists")
        self.table.put({
            **keys.endpoint_key(spec.endpoint_name).item(),
            **keys.endpoint_index(spec.endpoint_name), "endpoint": spec.endpoint_name,
            "creator": spec.creator, "mode": spec.mode, "instance_type": spec.instance_type,
            "min_instances": spec.min_instances, "max_instances": spec.max_instances,
            "idle_ttl_hours": spec.idle_ttl_hours, "model_s3_uri": spec.model_s3_uri,
            "model_name": spec.model_name, "endpoint_config_name": spec.endpoint_config_name,
            "created_at": iso_now(), "last_used_at": int(now()), "status": "Creating",
            **({FP8_ATTRIBUTE: spec.extra_environment[FP8_ENV]}
               if spec.extra_environment.get(FP8_ENV) else {}),
            scaling.PLAN_ATTRIBUTE: req.build_scaling(spec).to_json(),
            scaling.STATUS_ATTRIBUTE: scaling.PENDING,
        })
        try:
            self._create_log_group(spec)
            sm.create_model(**req.build_create_model(spec))
            sm.create_endpoint_config(**req.build_create_endpoint_config(spec))
            sm.create_endpoint(**req.build_create_endpoint(spec))
        except ClientError as exc:
            # Undo what was made, so a refused deployment leaves nothing behind.
            with suppress(ClientError):
                sm.delete_endpoint_config(EndpointConfigName=spec.endpoint_config_name)
            with suppress(ClientError):
                sm.delete_model(ModelName=spec.model_name)
            self.table.delete(*keys.endpoint_key(spec.endpoint_name))
            raise UpstreamError(f"SageMaker refused the deployment: {_aws_message(exc)}") from None
        return spec.endpoint_name

    def _create_log_group(self, spec: req.EndpointSpec) -> None:
        request = req.build_log_group(spec)
        logs = self.clients.logs
        try:
            logs.create_log_group(logGroupName=request["logGroupName"], tags=request["tags"])
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceAlreadyExistsException":
                raise
        logs.put_retention_policy(logGroupName=request["logGroupName"],
                                  retentionInDays=request["retentionInDays"])

    # --- read

    def records(self) -> list[dict[str, Any]]:
        return self.table.query_index(keys.ENDPOINTS_INDEX)

    def record(self, name: str) -> dict[str, Any]:
        record = self.table.get(*keys.endpoint_key(name))
        if not record:
            raise NotFound(f"endpoint {name!r} is not one of this portal's endpoints")
        return record

    def describe(self, name: str) -> dict[str, Any]:
        try:
            return self.clients.sagemaker.describe_endpoint(EndpointName=name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
                return {}
            raise UpstreamError(f"SageMaker: {_aws_message(exc)}") from None

    def listing(self) -> list[dict[str, Any]]:
        """Every endpoint of this deployment with live status and running cost."""
        result = []
        for record in self.records():
            name = record["endpoint"]
            live = self.describe(name)
            status = live.get("EndpointStatus", "Deleted" if live == {} else "Unknown")
            instances = 0
            for variant in live.get("ProductionVariants", []) or []:
                instances += int(variant.get("CurrentInstanceCount") or 0)
            info = self.settings.endpoint_instance_types.get(record.get("instance_type", ""))
            hourly = (info.hourly_usd if info else 0.0) * instances
            result.append({
                **record,
                "status": status,
                "failure": live.get("FailureReason") or record.get("failure", ""),
                "progress": variant_progress(live),
                "instances": instances,
                "cost_per_hour": round(hourly, 3),
                "usable": status in ("InService", "Updating"),
                "scaling_status": record.get(scaling.STATUS_ATTRIBUTE, ""),
                "scaling_error": record.get(scaling.ERROR_ATTRIBUTE, ""),
            })
        return result

    def usable_names(self) -> list[str]:
        return [e["endpoint"] for e in self.listing() if e["usable"]]

    def touch(self, name: str) -> None:
        """Mark an endpoint used now (the reaper spares endpoints used within their TTL)."""
        self.table.update(*keys.endpoint_key(name), {"last_used_at": int(now())})

    # --- delete

    def delete(self, name: str) -> None:
        record = self.record(name)
        sm = self.clients.sagemaker
        resource_id = req.scaling_resource_id(name)
        # Scaling first (SageMaker refuses to delete a variant that is still registered).
        # Deregistering drops the target's policies and their target-tracking alarms; none of it
        # exists when the endpoint never reached InService.
        with suppress(ClientError):
            self.clients.autoscaling.deregister_scalable_target(
                ServiceNamespace=scaling.SERVICE_NAMESPACE, ResourceId=resource_id,
                ScalableDimension=req.SCALABLE_DIMENSION,
            )
        if record.get("mode") == "async":
            with suppress(ClientError):
                self.clients.cloudwatch.delete_alarms(AlarmNames=[req.backlog_alarm_name(name)])
        for call, kwargs in (
            (sm.delete_endpoint, {"EndpointName": name}),
            (sm.delete_endpoint_config, {"EndpointConfigName": record["endpoint_config_name"]}),
            (sm.delete_model, {"ModelName": record["model_name"]}),
        ):
            try:
                call(**kwargs)
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code not in ("ValidationException", "ResourceNotFound"):
                    raise UpstreamError(f"SageMaker: {_aws_message(exc)}") from None
        self.table.delete(*keys.endpoint_key(name))
