"""One training job from the SageMaker layout to the result, in the order that fails fastest:
hyperparameters, concept images, base model, class images, training, result."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from easel_contracts.hyperparameters import HyperParameterError, HyperParameters
from easel_contracts.instances import REQUIRE_CUDA_ENV, cuda_required, this_host_problem
from easel_contracts.progress import RankShare, TrainingReport

from easel_training.errors import TrainingInputError
from easel_training.images import load_image_records, reject_small_images
from easel_training.paths import JobPaths
from easel_training.progress import ProgressReporter
from easel_training.stopping import StopRequest

CONCEPTS_CHANNEL = "concepts"
MODEL_CHANNEL = "model"


@dataclass
class JobOutcome:
    status: Literal["completed", "stopped"]
    step: int
    result: Path | None
    pipeline: Any = None  # the trained pipeline (in-process callers, e.g. tests, local mode)


def read_hyperparameters(paths: JobPaths) -> HyperParameters:
    path = paths.hyperparameters
    if not path.is_file():
        raw: Any = {}
    else:
        try:
            raw = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise TrainingInputError(f"hyperparameters.json is not valid JSON: {exc}") from exc
    try:
        return HyperParameters.from_strings(raw)
    except HyperParameterError as exc:
        raise TrainingInputError(str(exc)) from None


def check_single_host(paths: JobPaths) -> None:
    if not paths.resource_config.is_file():
        return
    try:
        hosts = json.loads(paths.resource_config.read_text(encoding="utf-8")).get("hosts", [])
    except (ValueError, AttributeError):
        return
    if len(hosts) > 1:
        raise TrainingInputError(
            f"the job runs on {len(hosts)} instances; Easel trains on one instance (all of its "
            "GPUs). Set the instance count to 1.")


def resolve_device(environ: dict[str, str] | os._Environ,
                   cuda_probe: Callable[[], str | None] = lambda: this_host_problem(torch)) -> str:
    wanted = (environ.get("EASEL_DEVICE") or "auto").strip().lower()
    if wanted not in ("auto", "cpu", "cuda"):
        raise TrainingInputError(f"EASEL_DEVICE must be auto, cpu or cuda, got {wanted!r}")
    if cuda_required(environ):
        # SageMaker training hosts have no AMI selector and AWS documents no driver version:
        # fail in the job's first minute rather than train on the CPU
        if wanted == "cpu":
            raise TrainingInputError(
                f"EASEL_DEVICE is cpu but {REQUIRE_CUDA_ENV}=1 requires a GPU; unset one of them")
        problem = cuda_probe()
        if problem:
            raise TrainingInputError(f"{problem}. Choose an instance type whose host driver "
                                     "runs it (README, \"GPU drivers\")")
        return "cuda"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise TrainingInputError("EASEL_DEVICE is cuda but no CUDA GPU is visible to the job")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def make_accelerator(hp: HyperParameters, device: str) -> tuple[Any, str]:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from easel_training.trainer import resolve_mixed_precision

    mixed_precision = resolve_mixed_precision(hp.mixed_precision, cuda=device == "cuda")
    AcceleratorState._reset_state()  # a fresh job in this process may change the precision
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)
    return accelerator, mixed_precision


def early_min_side(hp: HyperParameters) -> int:
    if hp.min_image_side:
        return hp.min_image_side
    return hp.resolution // 2 if hp.resolution else 1


def run_job(*, paths: JobPaths, stop: StopRequest,
            environ: dict[str, str] | os._Environ = os.environ) -> JobOutcome:
    job_started = time.monotonic()
    hp = read_hyperparameters(paths)
    check_single_host(paths)
    device = resolve_device(environ)
    if hp.use_8bit_adam and device != "cuda":
        raise TrainingInputError("hyperparameter 'use_8bit_adam': 8-bit Adam needs a CUDA GPU; "
                                 "this job runs on the CPU (set it to false)")
    accelerator, mixed_precision = make_accelerator(hp, device)
    progress = ProgressReporter(paths.progress, total_steps=hp.max_train_steps,
                                images_per_step=hp.train_batch_size * accelerator.num_processes
                                * hp.gradient_accumulation_steps,
                                enabled=accelerator.is_main_process)
    concepts_dir = paths.channel(CONCEPTS_CHANNEL)
    records = load_image_records(concepts_dir, channel=CONCEPTS_CHANNEL,
                                 min_side=early_min_side(hp), use_captions=hp.use_captions)

    from easel_training.base_model import load_base_model
    from easel_training.trainer import DTYPES

    progress.enter("loading", step=0)
    base = load_base_model(paths.channel(MODEL_CHANNEL), paths.scratch, hp.checkpoint,
                           flow_dtype=DTYPES[mixed_precision])
    hp = hp.for_family(base.family)  # rank, learning rate, previews: the family's defaults
    if base.flow:
        from easel_training.flow import check_flow_settings

        check_flow_settings(hp, base)
    resolution = hp.resolution or base.native_resolution
    min_side = hp.min_image_side or resolution // 2
    reject_small_images(records, folder=concepts_dir, channel=CONCEPTS_CHANNEL,
                        min_side=min_side)
    class_records = []
    if hp.with_prior_preservation:
        progress.enter("class_images", step=0)
        from easel_training.class_images import prepare_class_records

        class_records = prepare_class_records(hp=hp, paths=paths, pipe=base.pipe,
                                              resolution=resolution, min_side=min_side,
                                              accelerator=accelerator, stop=stop)
        if class_records is None:
            progress.status_only("stopped", step=0)
            return JobOutcome(status="stopped", step=0, result=None)

    from easel_training.dataset import build_concept_data
    from easel_training.flow import make_trainer

    data = build_concept_data(hp=hp, records=records, class_records=class_records,
                              resolution=resolution)
    trainer = make_trainer(hp=hp, paths=paths, base=base, data=data, accelerator=accelerator,
                           mixed_precision=mixed_precision, stop=stop)
    progress.enter("caching", step=0)  # both trainers' setup: prompts, latents, device
    trainer.setup()
    result = trainer.run(progress)
    if result.status == "stopped":
        progress.status_only("stopped", step=result.step,
                             loss=result.loss_curve[-1] if result.loss_curve else None)
        return JobOutcome(status="stopped", step=result.step, result=None, pipeline=base.pipe)
    output = None
    if accelerator.is_main_process:
        progress.enter("saving", step=result.step,
                       loss=result.loss_curve[-1] if result.loss_curve else None)
        output = _save_result(hp=hp, paths=paths, base=base, result=result, data=data,
                              job_seconds=time.monotonic() - job_started, resolution=resolution)
        progress.status_only("completed", step=result.step,
                             loss=result.loss_curve[-1] if result.loss_curve else None)
    accelerator.wait_for_everyone()
    return JobOutcome(status="completed", step=result.step, result=output, pipeline=base.pipe)


def _save_result(*, hp: HyperParameters, paths: JobPaths, base: Any, result: Any, data: Any,
                 job_seconds: float, resolution: int) -> Path:
    from easel_training.results import (
        build_manifest,
        library_versions,
        save_full_result,
        save_lora_result,
        write_manifest,
        write_report,
    )

    saved_at = time.monotonic()
    if hp.mode == "lora":
        output = save_lora_result(model_dir=paths.model, hp=hp, base=base, steps=result.step)
    else:
        output = save_full_result(model_dir=paths.model, hp=hp, base=base)
    settings = hp.model_dump()
    settings.update(learning_rate=hp.effective_learning_rate, alpha=hp.effective_alpha,
                    output_name=hp.effective_output_name, resolution=resolution,
                    mixed_precision=result.mixed_precision)
    report = TrainingReport(
        mode=hp.mode,
        result=output.relative_to(paths.model).as_posix(),
        base_model={"name": base.name, "file": base.path.name, "arch": base.arch,
                    "prediction_type": base.prediction_type, "family": base.family.value},
        steps=result.step,
        resumed_from_step=result.start_step or None,
        loss_curve=[round(x, 6) for x in result.loss_curve],
        final_loss=result.loss_curve[-1] if result.loss_curve else None,
        duration_seconds=round(job_seconds + (time.monotonic() - saved_at), 3),
        training_seconds=round(result.training_seconds, 3),
        images_per_second=round(result.images_per_second, 3),
        num_images=len(data.images),
        num_class_images=len(data.class_images),
        prompts=sorted(set(data.image_prompts)),
        world_size=result.world_size,
        ranks=[RankShare(rank=rank, steps=steps, samples=samples)
               for rank, (steps, samples) in enumerate(result.rank_shares)],
        device=result.device,
        settings=settings,
        versions=library_versions(),
        latent_cache=hp.cache_latents,
        text_embedding_cache=not hp.train_text_encoder,  # flow families: always (refused)
    )
    write_report(paths.model, report)
    write_manifest(paths=paths, manifest=build_manifest(model_dir=paths.model, hp=hp, base=base,
                                                        output=output))
    return output

