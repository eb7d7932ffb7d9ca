"""Training jobs: check the concepts path, submit, follow progress, publish the result."""

from __future__ import annotations

import json
import logging
import re
import tarfile
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from easel_contracts import table as keys
from easel_contracts.s3uri import S3Uri
from easel_webui import sagemaker_requests as req
from easel_webui.auth import User
from easel_webui.errors import Conflict, NotFound, PortalError, UpstreamError, describe_validation
from easel_webui.settings import Settings
from easel_webui.storage import IMAGE_EXTENSIONS, Bucket, check_set_name
from easel_webui.store import Table, iso_now, owned_records

log = logging.getLogger("easel_webui.training")
# What the execution role may read (ARCHITECTURE.md's prefix table).
READABLE_PREFIXES = ("models/", "loras/", "concepts/", "training/", "async/in/")
_OUTPUT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _number(form: dict[str, Any], field: str, kind: type, *, default: Any, low: float,
            high: float) -> Any:
    raw = form.get(field)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise PortalError(f"{field.replace('_', ' ')}: must be a number") from None
    if not low <= value <= high:
        raise PortalError(f"{field.replace('_', ' ')}: must be between {low:g} and {high:g}")
    return value


class Training:
    def __init__(self, *, settings: Settings, clients: Any, table: Table, bucket: Bucket) -> None:
        self.settings = settings
        self.clients = clients
        self.table = table
        self.bucket = bucket

    # --- the concepts path

    def resolve_concepts(self, *, user: User, concept_set: str, s3_uri: str) -> str:
        """The concepts S3 URI after every check, or `PortalError` saying what is wrong."""
        if concept_set and s3_uri:
            raise PortalError("concepts: choose an uploaded set or enter an S3 path, not both")
        if concept_set:
            owner, _, name = concept_set.partition("/") if "/" in concept_set else (
                user.username, "", concept_set)
            if owner != user.username and not user.is_admin:
                raise PortalError("concepts: you can only train on your own concept sets")
            key = f"concepts/{owner}/{check_set_name(name)}/"
        elif s3_uri:
            try:
                uri = S3Uri.parse(s3_uri)
            except ValueError as exc:
                raise PortalError(f"concepts: {exc}") from None
            if uri.bucket != self.bucket.name:
                raise PortalError(
                    f"concepts: the training job can only read the data bucket "
                    f"({self.bucket.name}), not {uri.bucket!r}"
                )
            if "//" in uri.key:
                raise PortalError("concepts: the path must not contain empty parts")
            key = uri.key
            if not any(uri.is_under(prefix) for prefix in READABLE_PREFIXES):
                raise PortalError(
                    "concepts: the path must be inside a prefix the training job can read: "
                    + ", ".join(READABLE_PREFIXES)
                )
            if not user.is_admin and not uri.is_under(f"concepts/{user.username}/"):
                raise PortalError(
                    f"concepts: use a path under concepts/{user.username}/ (your uploads)"
                )
            key = uri.prefix
        else:
            raise PortalError("concepts: choose an uploaded set or enter an S3 path")
        objects, _ = self.bucket.list(key, limit=2000)
        if not objects:
            raise PortalError(f"concepts: s3://{self.bucket.name}/{key} is empty or does not exist")
        if not any(o.key.lower().endswith(IMAGE_EXTENSIONS) for o in objects):
            raise PortalError(
                f"concepts: s3://{self.bucket.name}/{key} holds no images (png, jpg, webp, bmp)"
            )
        return f"s3://{self.bucket.name}/{key}"

    # --- submit

    def spec_from_form(self, form: dict[str, Any], *, user: User) -> req.TrainingSpec:
        settings = self.settings
        if not settings.training_image:
            raise PortalError("The training image is not configured (EASEL_TRAINING_IMAGE).")
        instance_type = str(form.get("instance_type", ""))
        info = settings.training_instance_types.get(instance_type)
        if info is None:
            raise PortalError(f"instance type: {instance_type!r} is not in the allowlist")
        mode = str(form.get("mode") or "lora")
        if mode not in ("lora", "full"):
            raise PortalError("mode: choose lora or full")
        model = str(form.get("model_s3_uri") or "").strip()
        try:
            model_uri = S3Uri.parse(model)
        except ValueError as exc:
            raise PortalError(f"base model: {exc}") from None
        if not any(model_uri.is_under(prefix, bucket=self.bucket.name)
                   for prefix in ("models/", "training/")):
            raise PortalError("base model: choose a model under models/ of the data bucket")
        instance_prompt = str(form.get("instance_prompt") or "").strip()
        if not instance_prompt:
            raise PortalError("instance prompt: describe the concept, e.g. 'a photo of sks dog'")
        class_prompt = str(form.get("class_prompt") or "").strip()
        checkpoint = str(form.get("checkpoint") or "").strip()
        if checkpoint and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,120}", checkpoint):
            raise PortalError("checkpoint: a plain model name without paths")
        output_name = str(form.get("output_name") or "").strip() or str(form.get("name", ""))
        if not _OUTPUT_NAME_RE.match(output_name or ""):
            raise PortalError("output name: letters, digits, '.', '_' or '-'")
        steps = _number(form, "max_train_steps", int, default=800, low=1, high=20000)
        learning_rate = _number(form, "learning_rate", float,
                                default=1e-4 if mode == "lora" else 2e-6, low=1e-8, high=1e-1)
        rank = _number(form, "rank", int, default=16, low=1, high=256)
        resolution = _number(form, "resolution", int, default=0, low=0, high=2048)
        if resolution % 8:
            raise PortalError("resolution: must be a multiple of 8 (or empty for the model's)")
        concepts = self.resolve_concepts(
            user=user, concept_set=str(form.get("concept_set") or "").strip(),
            s3_uri=str(form.get("concepts_s3_uri") or "").strip(),
        )
        hyperparameters = {
            "mode": mode, "checkpoint": checkpoint, "instance_prompt": instance_prompt,
            "class_prompt": class_prompt, "max_train_steps": str(steps),
            "learning_rate": f"{learning_rate:g}", "rank": str(rank), "alpha": str(rank),
            "output_name": output_name, "checkpointing_steps": str(max(1, min(250, steps))),
            "validation_steps": str(max(1, min(100, steps))),
            "validation_prompt": instance_prompt,
            "with_prior_preservation": "true" if class_prompt and form.get("prior") else "false",
        }
        if resolution:
            hyperparameters["resolution"] = str(resolution)
        spot = str(form.get("spot", "")).lower() in ("1", "true", "on", "yes")
        try:
            return req.TrainingSpec(
                deployment_id=settings.deployment_id,
                name=str(form.get("name", "")).strip(),
                creator=user.username, image=settings.training_image,
                execution_role_arn=settings.execution_role_arn, bucket=self.bucket.name,
                concepts_s3_uri=concepts, model_s3_uri=model, instance_type=instance_type,
                instance=req.InstanceFacts(**info.model_dump()), spot=spot,
                max_runtime_seconds=int(settings.training_max_runtime_hours * 3600),
                hyperparameters=hyperparameters,
            )
        except ValidationError as exc:
            raise PortalError(describe_validation(list(exc.errors()))) from None

    def submit(self, spec: req.TrainingSpec) -> str:
        request = req.build_create_training_job(spec)
        try:
            self.clients.sagemaker.create_training_job(**request)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") == "ResourceInUse":
                raise Conflict(f"job name: {spec.job_name!r} is already used") from None
            raise UpstreamError(
                f"SageMaker refused the job: {error.get('Code')}: {error.get('Message', '')}"
            ) from None
        self.record_job(spec, spec.job_name)
        return spec.job_name

    def record_job(self, spec: req.TrainingSpec, job_name: str) -> None:
        """The job's table record (and its owner item), so it shows on the Training page."""
        created = iso_now()
        self.table.put({
            **keys.training_job_key(job_name).item(), **keys.training_job_index(created, job_name),
            "job": job_name, "owner": spec.creator,
            "mode": spec.hyperparameters["mode"],
            "output_name": spec.hyperparameters["output_name"],
            "model_s3_uri": spec.model_s3_uri, "concepts_s3_uri": spec.concepts_s3_uri,
            "instance_type": spec.instance_type, "created_at": created,
        })
        self.table.put(keys.owner_training_item(spec.creator, created, job_name))

    # --- follow

    def _record(self, job: str, *, user: User) -> dict[str, Any]:
        record = self.table.get(*keys.training_job_key(job)) if len(job) <= 80 else None
        if not record or (record["owner"] != user.username and not user.is_admin):
            raise NotFound("No such training job.")
        return record

    def jobs(self, *, user: User, limit: int = 50) -> list[dict[str, Any]]:
        """The newest jobs: everyone's for an admin, else the user's own."""
        if user.is_admin:
            records = self.table.query_index(keys.TRAINING_INDEX, newest_first=True, limit=limit)
        else:
            records = owned_records(self.table, user.username, keys.OWNER_TRAINING, limit=limit)
        return [self._status(r) for r in records]

    def job(self, job: str, *, user: User) -> dict[str, Any]:
        return self._status(self._record(job, user=user), previews=True)

    def _status(self, record: dict[str, Any], *, previews: bool = False) -> dict[str, Any]:
        job = record["job"]
        try:
            live = self.clients.sagemaker.describe_training_job(TrainingJobName=job)
        except ClientError:
            live = {}
        status = live.get("TrainingJobStatus", "Unknown")
        progress = self._progress(job)
        percent = 0.0
        if progress.get("total_steps"):
            percent = min(100.0, 100.0 * float(progress.get("step", 0))
                          / float(progress["total_steps"]))
        if status == "Completed":
            percent = 100.0
        result = {
            **record, "status": status, "secondary_status": live.get("SecondaryStatus", ""),
            "failure": live.get("FailureReason", ""), "progress": progress,
            "percent": round(percent, 1),
            "result_uri": f"{self.bucket.uri}/training/{job}/output/model.tar.gz",
        }
        if previews:
            objects, _ = self.bucket.list(f"training/{job}/checkpoints/preview/")
            pngs = sorted((o for o in objects if o.key.endswith(".png")),
                          key=lambda o: _step_of(o.key))
            result["previews"] = [{"url": self.bucket.url(o.key),
                                   "step": _step_of(o.key)} for o in pngs[-6:]]
        return result

    def _progress(self, job: str) -> dict[str, Any]:
        key = f"training/{job}/checkpoints/progress.json"
        try:
            data = json.loads(self.bucket.read(key, max_bytes=64 * 1024))
        except (NotFound, ValueError, PortalError):
            return {}
        return data if isinstance(data, dict) else {}

    def stop(self, job: str, *, user: User) -> None:
        self._record(job, user=user)
        try:
            self.clients.sagemaker.stop_training_job(TrainingJobName=job)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise PortalError(f"SageMaker: {error.get('Message') or error.get('Code')}") from None

    # --- results

    def publish_lora(self, job: str, *, user: User) -> str:
        """Copy the LoRA out of a completed job's model.tar.gz into `loras/`."""
        record = self._record(job, user=user)
        if record.get("mode") != "lora":
            raise PortalError("Only lora results go into the LoRA library; deploy a full result.")
        status = self._status(record)
        if status["status"] != "Completed":
            raise PortalError(f"The job is {status['status']}; publish it once it completes.")
        key = f"training/{job}/output/model.tar.gz"
        published = None
        # Stream the archive (it may be GBs; the portal task has 1 GiB): gzip and tar are read
        # sequentially, and the LoRA member is uploaded in parts as it is decompressed.
        body = self.bucket.stream(key)
        try:
            with tarfile.open(fileobj=body, mode="r|gz") as tar:
                for member in tar:
                    parts = member.name.lstrip("./").split("/")
                    if not (member.isfile() and len(parts) == 2 and parts[0] == "Lora"
                            and parts[1].endswith(".safetensors")
                            and _OUTPUT_NAME_RE.match(parts[1])):
                        continue
                    handle = tar.extractfile(member)
                    if handle is None:
                        continue
                    self.bucket.upload(f"loras/{parts[1]}", handle,
                                       content_type="application/octet-stream")
                    published = parts[1].rsplit(".", 1)[0]
                    break
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise PortalError(f"The job's result is not a readable model.tar.gz ({exc}).") \
                from None
        finally:
            body.close()
        if published is None:
            raise PortalError("The job's result holds no Lora/<name>.safetensors file.")
        self.table.update(*keys.training_job_key(job), {"published_lora": published})
        return published


def _step_of(key: str) -> int:
    match = re.search(r"step-(\d+)", key)
    return int(match.group(1)) if match else 0
