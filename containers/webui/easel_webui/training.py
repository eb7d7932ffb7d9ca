"""Training jobs: check the concepts path, submit, follow progress, publish the result."""

from __future__ import annotations

import logging
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from easel_contracts import table as keys
from easel_contracts.checkpoints import CHECKPOINT_PREFIX, CheckpointFiles, checkpoints_in, lora_key
from easel_contracts.concept_uploads import MIN_CONCEPT_IMAGES
from easel_contracts.families import ModelFamily, facts_for
from easel_contracts.hyperparameters import (
    OUTPUT_NAME_MAX,
    OUTPUT_NAME_PATTERN,
    TRAINING_DEFAULTS,
    HyperParameterError,
    HyperParameters,
    field_schemas,
)
from easel_contracts.model_manifest import (
    MANIFEST_MAX_BYTES,
    ManifestError,
    manifest_key,
    parse_manifest,
    training_manifest_key,
)
from easel_contracts.progress import (
    PREVIEW_FOLDER,
    PROGRESS_FILE,
    PROGRESS_MAX_BYTES,
    Progress,
    ProgressError,
    parse_progress,
)
from easel_contracts.s3uri import S3Uri
from easel_contracts.training_memory import plan_training, refusal
from easel_contracts.training_record import TrainingJobRecord
from easel_webui import sagemaker_requests as req
from easel_webui.auth import User
from easel_webui.errors import Conflict, NotFound, PortalError, UpstreamError, describe_validation
from easel_webui.ownership import check_model_readable, claim_library_entry
from easel_webui.safetensors_header import SafetensorsError, header_length, tensor_entries
from easel_webui.settings import Settings
from easel_webui.storage import IMAGE_EXTENSIONS, MAX_LORA_BYTES, Bucket, check_set_name
from easel_webui.store import Table, iso_now, owned_records

log = logging.getLogger("easel_webui.training")
# What the execution role may read (docs/architecture.md's prefix table).
READABLE_PREFIXES = ("models/", "loras/", "concepts/", "training/", "async/in/")
_OUTPUT_NAME_RE = re.compile(OUTPUT_NAME_PATTERN)
# The form shows these first, in this order; every other hyperparameter is under "Advanced".
BASIC_FIELDS = ("instance_prompt", "class_prompt", "with_prior_preservation", "mode",
                "checkpoint", "output_name", "max_train_steps", "learning_rate", "rank",
                "resolution")
_PLACEHOLDERS = {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog",
                 "checkpoint": "(the only one)", "output_name": "(the job name)"}
_TRUE_WORDS = ("true", "1", "on", "yes")


@dataclass(frozen=True)
class FormField:
    """One hyperparameter as the training form shows it (from the contract's JSON schema)."""

    name: str
    label: str
    widget: str  # text, number, checkbox or select
    help: str
    default: Any
    placeholder: str = ""
    choices: tuple[str, ...] = ()
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    maxlength: int | None = None
    required: bool = False

    def value(self, form: Mapping[str, Any] | None) -> Any:
        """What the form shows: the submitted value after a refusal, else the default."""
        if form is not None and self.name in form:
            raw = str(form[self.name])
            return raw.strip().lower() in _TRUE_WORDS if self.widget == "checkbox" else raw
        return self.default


def form_fields() -> list[FormField]:
    """Every hyperparameter of the contract as a form field: the basic ones, then the rest."""
    schemas = field_schemas()
    names = [*BASIC_FIELDS, *(name for name in schemas if name not in BASIC_FIELDS)]
    fields = []
    for name in names:
        schema = schemas[name]
        kind = schema["type"]
        widget = ("select" if "enum" in schema else "checkbox" if kind == "boolean"
                  else "number" if kind in ("integer", "number") else "text")
        default = None if schema["derived"] or schema["required"] else schema.get("default")
        fields.append(FormField(
            name=name, label=name.replace("_", " ").capitalize(), widget=widget,
            help=schema.get("description", ""),
            default="" if default is None else default,
            placeholder=_PLACEHOLDERS.get(name, "auto" if schema["derived"] else ""),
            choices=tuple(schema.get("enum", ())), minimum=schema.get("minimum"),
            maximum=schema.get("maximum"),
            step=schema.get("multipleOf", 1) if kind == "integer" else "any",
            maxlength=schema.get("maxLength"), required=schema["required"],
        ))
    return fields


def hyperparameters_from_form(form: Mapping[str, Any]) -> HyperParameters:
    """The form's hyperparameter fields (strings, as a browser sends them) onto the contract.

    A field left empty (or not sent) takes the contract's default. Every problem is reported at
    once, each naming its field.
    """
    values = {name: str(form[name]).strip() for name in HyperParameters.model_fields
              if name in form and str(form[name]).strip()}
    try:
        return HyperParameters.from_strings(values)
    except HyperParameterError as exc:
        raise PortalError("; ".join(f"{name.replace('_', ' ')}: {text}"
                                    for name, text in exc.problems)) from None


@dataclass(frozen=True)
class TrainingConfig:
    """What submitting a job needs from the deployment: the portal's settings, or the kit's
    config and stack outputs (scripts/train.py)."""

    deployment_id: str
    image: str
    execution_role_arn: str
    instance_types: Mapping[str, Any]  # name -> facts (anything with model_dump())
    max_runtime_hours: float

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainingConfig:
        return cls(deployment_id=settings.deployment_id, image=settings.training_image,
                   execution_role_arn=settings.execution_role_arn,
                   instance_types=settings.training_instance_types,
                   max_runtime_hours=settings.training_max_runtime_hours)


class Training:
    def __init__(self, *, config: TrainingConfig, clients: Any, table: Table,
                 bucket: Bucket) -> None:
        self.config = config
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
        images = sum(1 for o in objects if o.key.lower().endswith(IMAGE_EXTENSIONS))
        if images < MIN_CONCEPT_IMAGES:
            raise PortalError(
                f"concepts: s3://{self.bucket.name}/{key} holds {images} images (png, jpg, webp, "
                f"bmp); training needs at least {MIN_CONCEPT_IMAGES}: upload more photos"
            )
        return f"s3://{self.bucket.name}/{key}"

    # --- submit

    def spec_from_form(self, form: Mapping[str, Any], *, user: User) -> req.TrainingSpec:
        """The training form (strings, as a browser sends them) -> a checked job spec."""
        return self.build_spec(
            user=user, name=str(form.get("name") or "").strip(),
            instance_type=str(form.get("instance_type") or "").strip(),
            model_s3_uri=str(form.get("model_s3_uri") or "").strip(),
            concept_set=str(form.get("concept_set") or "").strip(),
            concepts_s3_uri=str(form.get("concepts_s3_uri") or "").strip(),
            spot=str(form.get("spot") or "").strip().lower() in _TRUE_WORDS,
            hyperparameters=hyperparameters_from_form(form),
        )

    def build_spec(self, *, user: User, name: str, instance_type: str, model_s3_uri: str,
                   concept_set: str, concepts_s3_uri: str, spot: bool,
                   hyperparameters: HyperParameters) -> req.TrainingSpec:
        """Every check a job passes before it is submitted (the portal's form and
        scripts/train.py), or `PortalError` saying what is wrong. Without an output name the
        result is named after the job."""
        config = self.config
        if not config.image:
            raise PortalError("The training image is not configured (EASEL_TRAINING_IMAGE).")
        try:
            req.check_short_name(name, field="job name", max_length=40)
        except ValueError as exc:
            raise PortalError(str(exc)) from None
        info = config.instance_types.get(instance_type)
        if info is None:
            raise PortalError(f"instance type: {instance_type!r} is not in the allowlist")
        try:
            model_uri = S3Uri.parse(model_s3_uri)
        except ValueError as exc:
            raise PortalError(f"base model: {exc}") from None
        if not any(model_uri.is_under(prefix, bucket=self.bucket.name)
                   for prefix in ("models/", "training/")):
            raise PortalError("base model: choose a model under models/ of the data bucket")
        check_model_readable(self.table, user, model_uri, field="base model")
        hyperparameters = self.plan_memory(model_uri, instance_type, hyperparameters)
        if hyperparameters.output_name is None:
            # a valid job name is a valid output name
            hyperparameters = hyperparameters.model_copy(update={"output_name": name})
        concepts = self.resolve_concepts(user=user, concept_set=concept_set,
                                         s3_uri=concepts_s3_uri)
        try:
            return req.TrainingSpec(
                deployment_id=config.deployment_id, name=name,
                creator=user.username, image=config.image,
                execution_role_arn=config.execution_role_arn, bucket=self.bucket.name,
                concepts_s3_uri=concepts, model_s3_uri=model_s3_uri, instance_type=instance_type,
                instance=req.InstanceFacts(**info.model_dump()), spot=spot,
                max_runtime_seconds=int(config.max_runtime_hours * 3600),
                hyperparameters=hyperparameters.to_sagemaker(),
            )
        except ValidationError as exc:
            raise PortalError(describe_validation(list(exc.errors()))) from None

    def base_family(self, model_uri: S3Uri, checkpoint: str,
                    ) -> tuple[ModelFamily, int | None] | None:
        """The family of the base model the job will train and the model's size in bytes, from
        the manifest beside it (a training result's: its checkpoints folder); None when no
        manifest tells it."""
        if model_uri.is_under("training/"):
            key = training_manifest_key(model_uri.key.split("/")[1])
        else:
            try:
                key = manifest_key(model_uri.key)
            except ManifestError:
                return None
        try:
            manifest = parse_manifest(self.bucket.read(key, max_bytes=MANIFEST_MAX_BYTES),
                                      where=key)
        except (NotFound, ManifestError, PortalError):
            return None  # the job detects the family itself
        entries = manifest.checkpoints
        if checkpoint:
            entries = tuple(c for c in entries if checkpoint in (c.name, c.path.rsplit("/", 1)[-1]))
        families = {c.family for c in entries}
        if len(families) != 1:
            return None
        return families.pop(), manifest.total_bytes if manifest.files else None

    def plan_memory(self, model_uri: S3Uri, instance_type: str,
                    hyperparameters: HyperParameters) -> HyperParameters:
        """Refuse a job the chosen type cannot train, naming a type that can; turn on the memory
        savers the plan needs (``easel_contracts.training_memory``)."""
        found = self.base_family(model_uri, hyperparameters.checkpoint)
        if found is None:
            return hyperparameters
        family, model_bytes = found
        label = facts_for(family).label
        defaults = TRAINING_DEFAULTS.get(family)
        if defaults is None:
            raise PortalError(f"base model: {label} is not trained (it is a second pass only); "
                              "choose a base model")
        if hyperparameters.mode == "full" and defaults.full_learning_rate is None:
            raise PortalError(f"mode: {label} trains LoRAs only; choose lora")
        settings = {"resolution": hyperparameters.resolution,
                    "batch_size": hyperparameters.train_batch_size}
        plan = plan_training(family, instance_type, self.config.instance_types[instance_type],
                             mode=hyperparameters.mode,
                             gradient_checkpointing=hyperparameters.gradient_checkpointing,
                             use_8bit_adam=hyperparameters.use_8bit_adam,
                             model_bytes=model_bytes, **settings)
        message = refusal(plan, self.config.instance_types, **settings)
        if message:
            raise PortalError(message)
        return hyperparameters.model_copy(update=plan.settings)

    def submit(self, spec: req.TrainingSpec, *, resumed_from: str | None = None) -> str:
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
        self.record_job(spec, spec.job_name, resumed_from=resumed_from)
        return spec.job_name

    def record_job(self, spec: req.TrainingSpec, job_name: str, *,
                   resumed_from: str | None = None) -> TrainingJobRecord:
        """Keep the job in the table so its Training page lists it; `job_name` is the name
        SageMaker knows it by (the SageMaker SDK adds a time stamp to the spec's)."""
        record = TrainingJobRecord(
            job=job_name, owner=spec.creator, mode=spec.hyperparameters["mode"],
            output_name=spec.hyperparameters["output_name"], model_s3_uri=spec.model_s3_uri,
            concepts_s3_uri=spec.concepts_s3_uri, instance_type=spec.instance_type,
            created_at=iso_now(), checkpoint_s3_uri=spec.checkpoints, resumed_from=resumed_from,
        )
        self.table.put({
            **keys.training_job_key(job_name).item(),
            **keys.training_job_index(record.created_at, job_name),
            **record.model_dump(exclude_none=True),
        })
        self.table.put(keys.owner_training_item(spec.creator, record.created_at, job_name))
        return record

    # --- follow

    def _record(self, job: str, *, user: User) -> TrainingJobRecord:
        item = self.table.get(*keys.training_job_key(job)) if len(job) <= 80 else None
        record = TrainingJobRecord.model_validate(item) if item else None
        if record is None or (record.owner != user.username and not user.is_admin):
            raise NotFound("No such training job.")
        return record

    def jobs(self, *, user: User, limit: int = 50) -> list[dict[str, Any]]:
        """The newest jobs: everyone's for an admin, else the user's own."""
        if user.is_admin:
            items = self.table.query_index(keys.TRAINING_INDEX, newest_first=True, limit=limit)
        else:
            items = owned_records(self.table, user.username, keys.OWNER_TRAINING, limit=limit)
        return [self._status(TrainingJobRecord.model_validate(item)) for item in items]

    def resume(self, job: str, *, user: User, name: str) -> str:
        """A new job, `name`, that goes on from stopped job `job`'s last checkpoint: the same
        base model, concepts, instance type and hyperparameters (a checkpoint resumes only with
        the settings it was made with), and the same checkpoint folder, which SageMaker copies
        into the new job's /opt/ml/checkpoints before it starts."""
        record = self._record(job, user=user)
        try:
            live = self.clients.sagemaker.describe_training_job(TrainingJobName=job)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise PortalError(f"SageMaker: {error.get('Message') or error.get('Code')}") from None
        status = live.get("TrainingJobStatus", "Unknown")
        if status != "Stopped":
            raise PortalError(f"The job is {status}; only a stopped job can be resumed.")
        checkpoints = _checkpoints(record)
        if not any(c.resumable for c in self._checkpoint_list(record)):
            raise PortalError("The job stopped before it saved a checkpoint; start a new job "
                              "instead (Training page).")
        try:
            hyperparameters = HyperParameters.from_strings(live.get("HyperParameters") or {})
        except HyperParameterError as exc:
            raise PortalError(f"The stopped job's settings cannot be reused: {exc}") from None
        spec = self.build_spec(
            user=user, name=name, instance_type=record.instance_type,
            model_s3_uri=record.model_s3_uri, concept_set="",
            concepts_s3_uri=record.concepts_s3_uri,
            spot=bool(live.get("EnableManagedSpotTraining")), hyperparameters=hyperparameters)
        spec = spec.model_copy(update={
            "checkpoint_s3_uri": f"s3://{self.bucket.name}/{checkpoints}"})
        return self.submit(spec, resumed_from=job)

    def job(self, job: str, *, user: User) -> dict[str, Any]:
        return self._status(self._record(job, user=user), previews=True)

    def _status(self, record: TrainingJobRecord, *, previews: bool = False) -> dict[str, Any]:
        job = record.job
        try:
            live = self.clients.sagemaker.describe_training_job(TrainingJobName=job)
        except ClientError:
            live = {}
        status = live.get("TrainingJobStatus", "Unknown")
        progress, problem = self._progress(record)
        percent = progress.percent if progress else 0.0
        if status == "Completed":
            percent = 100.0
        # a slow start (a large base model, caching, a compiled first step) says what it is doing
        phase_label = progress.phase_note if progress and status not in FINAL_STATUSES else ""
        result = {
            **record.model_dump(), "status": status,
            "secondary_status": live.get("SecondaryStatus", ""),
            "failure": live.get("FailureReason", ""),
            "progress": progress.model_dump(mode="json") if progress else {},
            "progress_problem": problem, "percent": round(percent, 1),
            "phase_label": phase_label,
            "result_uri": f"{self.bucket.uri}/training/{job}/output/model.tar.gz",
        }
        if previews:
            # the timeline: every preview by step (a resumed job's include those before it
            # stopped, in the shared folder), the newest TIMELINE_LENGTH
            objects, _ = self.bucket.list(f"{_checkpoints(record)}{PREVIEW_FOLDER}/")
            pngs = sorted((o for o in objects if o.key.endswith(".png")),
                          key=lambda o: _step_of(o.key))
            result["previews"] = [{"url": self.bucket.url(o.key),
                                   "step": _step_of(o.key)} for o in pngs[-TIMELINE_LENGTH:]]
            if record.mode == "lora" and status in CHECKPOINT_PUBLISH_STATUSES:
                try:
                    step = self._last_checkpoint_lora(record).step
                    result["checkpoint_lora"] = {
                        "step": step, "name": checkpoint_lora_name(record.output_name, step)}
                except PortalError as exc:
                    result["checkpoint_note"] = exc.message
        return result

    def _progress(self, record: TrainingJobRecord) -> tuple[Progress | None, str]:
        """The job's progress.json and, when it cannot be used, why (shown on the job page)."""
        job = record.job
        key = _checkpoints(record) + PROGRESS_FILE
        try:
            return parse_progress(self.bucket.read(key, max_bytes=PROGRESS_MAX_BYTES)), ""
        except NotFound:
            return None, ""  # not written yet: the job is still starting
        except ProgressError as exc:
            log.warning("training job %s: %s", job, exc)
            return None, f"Progress is not available: {exc}."
        except PortalError:
            return None, "Progress is not available: progress.json is larger than expected."
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            log.warning("training job %s: reading progress.json failed: %s", job, code)
            return None, f"Progress is not available: reading it failed ({code})."

    def stop(self, job: str, *, user: User) -> None:
        self._record(job, user=user)
        try:
            self.clients.sagemaker.stop_training_job(TrainingJobName=job)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise PortalError(f"SageMaker: {error.get('Message') or error.get('Code')}") from None

    # --- results

    def _publish(self, record: TrainingJobRecord, user: User, name: str, source: Any,
                 **recorded: Any) -> str:
        """Stream `source` into the LoRA library as `loras/<name>.safetensors`, after the owner
        check (`claim_library_entry`), and note it on the job's record."""
        if not _OUTPUT_NAME_RE.match(name):
            raise PortalError(f"{name!r} is not a LoRA name the library accepts")
        entry = f"loras/{name}.safetensors"
        claim_library_entry(self.table, user, entry, exists=self.bucket.exists(entry))
        self.bucket.upload(entry, source, content_type="application/octet-stream")
        self.table.update(*keys.training_job_key(record.job),
                          {"published_lora": name, **recorded})
        return name

    def publish_lora(self, job: str, *, user: User) -> str:
        """Copy the LoRA out of a completed job's model.tar.gz into `loras/`."""
        record = self._record(job, user=user)
        if record.mode != "lora":
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
                    published = self._publish(record, user, parts[1].rsplit(".", 1)[0],
                                              handle)
                    break
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise PortalError(f"The job's result is not a readable model.tar.gz ({exc}).") \
                from None
        finally:
            body.close()
        if published is None:
            raise PortalError("The job's result holds no Lora/<name>.safetensors file.")
        return published

    def _checkpoint_list(self, record: TrainingJobRecord) -> list[CheckpointFiles]:
        prefix = _checkpoints(record)
        objects, _ = self.bucket.list(prefix + CHECKPOINT_PREFIX, limit=2000)
        return checkpoints_in((o.key for o in objects), prefix)

    def _last_checkpoint_lora(self, record: TrainingJobRecord) -> CheckpointFiles:
        """The newest checkpoint that holds its LoRA, or `PortalError` saying why there is none."""
        found = self._checkpoint_list(record)
        with_lora = [c for c in found if c.has_lora]
        if with_lora:
            return with_lora[-1]
        if any(c.resumable for c in found):
            raise PortalError(
                "The job's checkpoints hold no LoRA file (a training image from before "
                "checkpoint LoRAs wrote them): resume the job and publish its result when it "
                "completes.", status_code=409)
        raise PortalError("The job ended before it saved a checkpoint, so there is no LoRA to "
                          "publish: start a new job (Training page).", status_code=409)

    def publish_checkpoint(self, job: str, *, user: User) -> tuple[str, int]:
        """Put the LoRA of a stopped (or failed) job's last checkpoint into the library as
        `<output name>-step<N>`: the same owner check and name rule as a completed job's."""
        record = self._record(job, user=user)
        if record.mode != "lora":
            raise PortalError("Only lora jobs have a LoRA to publish; a full job's checkpoints "
                              "are for resuming.")
        status = self._status(record)["status"]
        if status == "Completed":
            raise PortalError("The job completed: publish its result (Publish to the LoRA "
                              "library).", status_code=409)
        if status not in CHECKPOINT_PUBLISH_STATUSES:
            raise PortalError(f"The job is {status}; publish a checkpoint once it has stopped "
                              "(Stop the job) or failed.", status_code=409)
        last = self._last_checkpoint_lora(record)
        key = lora_key(_checkpoints(record), last.step)
        self._check_lora_object(key, last.step)
        name = checkpoint_lora_name(record.output_name, last.step)
        body = self.bucket.stream(key)
        try:
            self._publish(record, user, name, body, published_step=last.step)
        finally:
            body.close()
        return name, last.step

    def _check_lora_object(self, key: str, step: int) -> None:
        """`PortalError` unless the object is a whole safetensors file with LoRA tensors (its
        header only is read)."""
        def unreadable(reason: str) -> PortalError:
            return PortalError(f"The LoRA of the checkpoint at step {step} cannot be read "
                               f"({reason}); resume the job or start a new one.", status_code=422)

        try:
            size = self.bucket.client.head_object(Bucket=self.bucket.name,
                                                  Key=key)["ContentLength"]
        except ClientError as exc:
            raise unreadable(exc.response.get("Error", {}).get("Code", "error")) from None
        if size > MAX_LORA_BYTES:
            raise unreadable("larger than 2 GB")
        body = self.bucket.stream(key)
        try:
            length = header_length(body.read(8))
            if length > LORA_HEADER_MAX_BYTES:
                raise SafetensorsError(f"a header of {length} bytes")
            tensors = tensor_entries(body.read(length), size=size)
        except SafetensorsError as exc:
            raise unreadable(str(exc)) from None
        finally:
            body.close()
        if not any(".lora_" in name for name in tensors):
            raise unreadable("it holds no LoRA tensors")


def _checkpoints(record: TrainingJobRecord) -> str:
    """The key prefix where SageMaker syncs the job's /opt/ml/checkpoints (the request's
    CheckpointConfig): the record's, else the job's own folder (jobs recorded before)."""
    if record.checkpoint_s3_uri:
        return S3Uri.parse(record.checkpoint_s3_uri).prefix
    return f"training/{record.job}/checkpoints/"


TIMELINE_LENGTH = 48
FINAL_STATUSES = ("Completed", "Failed", "Stopped")  # SageMaker's: the job has ended
# a job whose last checkpoint's LoRA may be published (a completed job publishes its result)
CHECKPOINT_PUBLISH_STATUSES = ("Stopped", "Failed")
LORA_HEADER_MAX_BYTES = 16 * 1024 * 1024  # an SDXL LoRA's header is a few hundred KB


def checkpoint_lora_name(output_name: str, step: int) -> str:
    """The library name of a checkpoint's LoRA: the output name and the step (`dog-step250`),
    within the output name's length."""
    suffix = f"-step{step}"
    return output_name[:OUTPUT_NAME_MAX - len(suffix)] + suffix


def _step_of(key: str) -> int:
    match = re.search(r"step-(\d+)", key)
    return int(match.group(1)) if match else 0
