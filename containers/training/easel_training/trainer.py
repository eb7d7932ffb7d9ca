"""The training loop: LoRA or full fine-tuning of a Stable Diffusion UNet (and text encoders).

Built on accelerate (process group, DDP, autocast, grad scaling), peft (LoRA) and diffusers
(models, pipelines); the loop and data path are Easel's own. Checkpoints are accelerate's
save_state/load_state, with hooks that keep only the trained weights (see checkpoint.py).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from easel_contracts.checkpoints import LORA_FILE
from easel_contracts.hyperparameters import HyperParameters

from easel_training import checkpoint, lora
from easel_training.base_model import BaseModel
from easel_training.batches import Batch, BatchBuilder, NoiseSchedule, gather_prompts
from easel_training.dataset import ConceptData
from easel_training.errors import TrainingInputError, TrainingRuntimeError
from easel_training.graphed import GraphedStep, graph_eligible
from easel_training.paths import JobPaths
from easel_training.plan import BatchPlan
from easel_training.progress import ProgressReporter
from easel_training.regional import compile_denoiser
from easel_training.results import write_lora
from easel_training.sampling import write_preview
from easel_training.stopping import StopRequest
from easel_training.text import PromptEncoding, encode_token_ids

STOP_SYNC_EVERY = 8  # steps between cross-process checks of a stop request
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainingResult:
    status: Literal["completed", "stopped"]
    step: int
    start_step: int
    loss_curve: list[float]
    training_seconds: float
    images_per_second: float
    world_size: int
    mixed_precision: str
    device: str
    rank_shares: list[tuple[int, int]] = field(default_factory=list)  # (steps, samples) by rank
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_mixed_precision(setting: str, *, cuda: bool) -> str:
    if setting == "auto":
        if not cuda:
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if setting == "fp16" and not cuda:
        raise TrainingInputError("hyperparameter 'mixed_precision': fp16 needs a CUDA GPU; this "
                                 "job runs on the CPU (use no or bf16)")
    return setting


def make_optimizer(groups: list[dict[str, Any]], hp: HyperParameters, *, cuda: bool,
                   capturable: bool = False):
    if hp.use_8bit_adam:
        if not cuda:
            raise TrainingInputError("hyperparameter 'use_8bit_adam': 8-bit Adam needs a CUDA GPU;"
                                     " this job runs on the CPU (set it to false)")
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise TrainingInputError("hyperparameter 'use_8bit_adam': bitsandbytes is not "
                                     "installed in this image (set it to false)") from exc
        return bnb.optim.AdamW8bit(groups, weight_decay=hp.adam_weight_decay)
    return torch.optim.AdamW(groups, weight_decay=hp.adam_weight_decay,
                             fused=cuda or None, capturable=capturable)


class Trainer:
    """The SD1.x/2.x/SDXL trainer (a UNet on the DDPM objective); :class:`FlowTrainer` in
    ``flow.py`` overrides the family-specific parts for SD3.5 and FLUX.1."""

    GRAPHS = True  # the CUDA-graph step (graphed.py) fits this trainer's UNet step

    def __init__(self, *, hp: HyperParameters, paths: JobPaths, base: BaseModel,
                 data: ConceptData, accelerator: Any, mixed_precision: str,
                 stop: StopRequest) -> None:
        self.hp = hp
        self.paths = paths
        self.base = base
        self.data = data
        self.accelerator = accelerator
        self.mixed_precision = mixed_precision
        self.stop = stop
        self.device = accelerator.device
        self.cuda = self.device.type == "cuda"
        self.sdxl = base.arch == "sdxl"
        self.weight_dtype = DTYPES[mixed_precision]
        self.world_size = accelerator.num_processes
        self.rank = accelerator.process_index
        self.is_main = accelerator.is_main_process
        self.steps_taken = 0  # by this process, in this run
        self.samples_seen = 0
        self.pipe = base.pipe
        self._bind_models()

    def _bind_models(self) -> None:
        pipe = self.pipe
        self.denoiser = pipe.unet
        self.text_encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if self.sdxl else [])
        self.tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if self.sdxl else [])

    # ---- setup -----------------------------------------------------------------------------
    def _prepare_models(self) -> None:
        hp = self.hp
        torch.manual_seed(hp.seed)  # adapter initialisation is part of the seeded run
        self.pipe.vae.requires_grad_(False).to(self.device, torch.float32).eval()
        if hp.mode == "lora":
            self.denoiser.to(self.device, self.weight_dtype)
            lora.add_lora(self.denoiser, rank=hp.rank, alpha=hp.effective_alpha,
                          dropout=hp.lora_dropout, targets=lora.UNET_TARGETS)
        else:
            self.denoiser.to(self.device, torch.float32).requires_grad_(True)
        for encoder in self.text_encoders:
            if not hp.train_text_encoder:
                encoder.requires_grad_(False).to(self.device, self.weight_dtype).eval()
            elif hp.mode == "lora":
                encoder.to(self.device, self.weight_dtype)
                lora.add_lora(encoder, rank=hp.rank, alpha=hp.effective_alpha,
                              dropout=hp.lora_dropout, targets=lora.TEXT_ENCODER_TARGETS)
                encoder.train()
            else:
                encoder.to(self.device, torch.float32).requires_grad_(True).train()
        if hp.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
            if hp.train_text_encoder:
                for encoder in self.text_encoders:
                    encoder.gradient_checkpointing_enable()
        if self.cuda:
            # static shapes per bucket: let cuDNN pick the fastest convolutions once
            torch.backends.cudnn.benchmark = True
            self.denoiser.to(memory_format=torch.channels_last)
        self.denoiser.train()

    def _components(self) -> dict[str, torch.nn.Module]:
        components = {"unet": self.denoiser}
        if self.hp.train_text_encoder:
            names = ["text_encoder", "text_encoder_2"]
            components.update(zip(names, self.text_encoders, strict=False))
        return components

    def _build_optimizer(self) -> None:
        hp = self.hp
        groups = [{"params": [p for p in self.denoiser.parameters() if p.requires_grad],
                   "lr": hp.effective_learning_rate}]
        if hp.train_text_encoder:
            params = [p for e in self.text_encoders for p in e.parameters() if p.requires_grad]
            groups.append({"params": params, "lr": hp.effective_text_encoder_learning_rate})
        self.trainable_params = [p for g in groups for p in g["params"]]
        self.use_graphs = self.GRAPHS and graph_eligible(hp, cuda=self.cuda, world_size=self.world_size,
                                         mixed_precision=self.mixed_precision)
        self.optimizer = make_optimizer(groups, hp, cuda=self.cuda, capturable=self.use_graphs)
        self.raw_optimizer = self.optimizer
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(hp.lr_scheduler, optimizer=self.optimizer,
                                          num_warmup_steps=hp.lr_warmup_steps,
                                          num_training_steps=hp.max_train_steps)

    def _prepare_distributed(self) -> None:
        models = list(self._components().values())
        # The scheduler is prepared so save_state/load_state carry it. It steps once per
        # optimizer step whatever the process count (accelerate's default steps it once per
        # process at each call, which would change the schedule with the number of GPUs).
        prepared = self.accelerator.prepare(*models, self.optimizer, self.lr_scheduler)
        self.train_models = list(prepared[:-2])
        self.optimizer, self.lr_scheduler = prepared[-2:]
        self.lr_scheduler.step_with_optimizer = False
        self.accelerator.register_save_state_pre_hook(self._save_trainable_weights)
        self.accelerator.register_load_state_pre_hook(self._load_trainable_weights)
        self.denoiser_forward = self.train_models[0]
        self.text_forward = self.train_models[1:] if self.hp.train_text_encoder else []
        if self.hp.compile and self.cuda:
            self.denoiser_forward = compile_denoiser(
                self.denoiser_forward, model=self.accelerator.unwrap_model(self.denoiser_forward),
                scope=self.hp.compile_scope, mode=self.hp.compile_mode,
                shapes=len(self.data.bucket_groups))
        self.graphed: GraphedStep | None = None
        if self.use_graphs:
            self.graphed = GraphedStep(
                unet=self.denoiser_forward, optimizer=self.raw_optimizer,
                params=self.trainable_params, loss_fn=self._loss_from,
                max_grad_norm=self.hp.max_grad_norm,
                autocast_dtype=torch.bfloat16 if self.mixed_precision == "bf16" else None)

    @torch.no_grad()
    def _encode_prompts(self) -> None:
        prompts = self.data.prompts
        ids = [_tokenize(tok, prompts).to(self.device) for tok in self.tokenizers]
        self.prompt_token_ids = ids
        self.cached_prompts: PromptEncoding | None = None
        if not self.hp.train_text_encoder:
            with self.accelerator.autocast():
                encoded = encode_token_ids(self.text_encoders, ids, sdxl=self.sdxl)
            self.cached_prompts = PromptEncoding(
                encoded.hidden.float(), None if encoded.pooled is None else encoded.pooled.float())

    def _build_batches(self) -> None:
        from diffusers import DDPMScheduler

        schedule_config = {k: v for k, v in self.pipe.scheduler.config.items()
                           if not k.startswith("_")}
        ddpm = DDPMScheduler.from_config(schedule_config)
        self.schedule = NoiseSchedule(ddpm.alphas_cumprod, device=self.device,
                                      prediction_type=self.base.prediction_type)
        from easel_training.latents import LatentStore

        self.store = LatentStore(self.pipe.vae, self.device, cache=self.hp.cache_latents)
        self.builder = BatchBuilder(images=self.data.images, class_images=self.data.class_images,
                                    store=self.store, schedule=self.schedule, device=self.device,
                                    random_flip=self.hp.random_flip,
                                    noise_offset=self.hp.noise_offset, sdxl=self.sdxl)
        self.plan = BatchPlan(self.data.bucket_groups, batch_size=self.hp.train_batch_size,
                              world_size=self.world_size, seed=self.hp.seed)

    def _warm_latent_cache(self) -> None:
        """Encode every image (and flip) up front so the steps run at full speed."""
        if not self.hp.cache_latents:
            return
        flips = (False, True) if self.hp.random_flip else (False,)
        for image in self.data.images:
            for flip in flips:
                hw = image.placement.encode_hw
                self.store.distribution((image.key, flip, hw),
                                        lambda i=image, f=flip, s=hw: i.pixels(f, s))

    def fingerprint(self) -> dict[str, Any]:
        hp = self.hp
        return {"mode": hp.mode, "rank": hp.rank if hp.mode == "lora" else None,
                "alpha": hp.effective_alpha if hp.mode == "lora" else None,
                "train_text_encoder": hp.train_text_encoder, "checkpoint": self.base.name,
                "arch": self.base.arch}

    # ---- checkpoints -------------------------------------------------------------------------
    def _save_trainable_weights(self, models: list, weights: list, output_dir: str) -> None:
        """save_state hook: only the trained weights, never the frozen base model."""
        del models
        weights.clear()
        if self.is_main:
            checkpoint.save_weights(Path(output_dir), lora.trainable_state(self._components()))

    def _load_trainable_weights(self, models: list, input_dir: str) -> None:
        """load_state hook: the trained weights from ``trainable.safetensors``."""
        models.clear()
        lora.copy_into(lora.trainable_state(self._components()),
                       checkpoint.load_weights(Path(input_dir)))

    def _save_checkpoint(self, step: int, losses: list[float]) -> None:
        extra = None
        if self.hp.mode == "lora":
            def extra(folder: Path) -> None:
                # the LoRA at this step, as the result would hold it: a stopped job's last
                # checkpoint can be published (easel_contracts.checkpoints.LORA_FILE)
                write_lora(folder / LORA_FILE, hp=self.hp, base=self.base, steps=step)
        checkpoint.save_checkpoint(
            self.accelerator, self.paths.checkpoints, step=step,
            state={"fingerprint": self.fingerprint(), "loss_curve": losses,
                   "world_size": self.world_size},
            keep=self.hp.checkpoints_total_limit, extra=extra)

    def _resume(self) -> tuple[int, list[float]]:
        found = checkpoint.latest_checkpoint(self.paths.checkpoints)
        if found is None:
            return 0, []
        checkpoint.check_resumable(found.state.get("fingerprint", {}), self.fingerprint())
        checkpoint.load_checkpoint(self.accelerator, found)
        losses = [float(x) for x in found.state.get("loss_curve", [])][:found.step]
        return found.step, losses

    # ---- one step ------------------------------------------------------------------------------
    def _conditioning(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        if self.cached_prompts is not None:
            encoding = gather_prompts(self.cached_prompts, batch.prompt_indices)
        else:
            ids = [torch.stack([token_ids[i] for i in batch.prompt_indices])
                   for token_ids in self.prompt_token_ids]
            encoding = encode_token_ids(self.text_forward, ids, sdxl=self.sdxl)
        added = None
        if self.sdxl:
            added = {"text_embeds": encoding.pooled, "time_ids": batch.time_ids}
        return encoding.hidden, added

    def _loss_from(self, prediction: torch.Tensor, target: torch.Tensor,
                   num_instance: int) -> torch.Tensor:
        prediction, target = prediction.float(), target.float()
        if not self.data.class_images:
            return F.mse_loss(prediction, target)
        instance = F.mse_loss(prediction[:num_instance], target[:num_instance])
        prior = F.mse_loss(prediction[num_instance:], target[num_instance:])
        return instance + self.hp.prior_loss_weight * prior

    def _loss(self, batch: Batch) -> torch.Tensor:
        with self.accelerator.autocast():
            hidden, added = self._conditioning(batch)
            prediction = self.denoiser_forward(batch.noisy_latents, batch.timesteps,
                                           encoder_hidden_states=hidden,
                                           added_cond_kwargs=added).sample
        return self._loss_from(prediction, batch.target, batch.num_instance)

    def _graphed_step(self, step: int) -> torch.Tensor:
        slots = self.plan.slots(step=step, micro_step=0, accumulation=1, rank=self.rank)
        batch = self.builder.build(slots)
        hidden, added = self._conditioning(batch)
        inputs = {"noisy": batch.noisy_latents, "timesteps": batch.timesteps,
                  "target": batch.target, "hidden": hidden}
        if added is not None:
            inputs.update(added)
        loss = self.graphed(inputs, batch.num_instance)
        self.lr_scheduler.step()
        self.steps_taken += 1
        self.samples_seen += len(slots)
        return loss

    def _train_step(self, step: int) -> torch.Tensor:
        if self.graphed is not None:
            try:
                return self._graphed_step(step)
            except RuntimeError as exc:  # capture refused: same step, eagerly, from here on
                if self.graphed.captured_any:
                    raise
                print(f"easel-train CUDA-graph step unavailable ({str(exc)[:200]}); "
                      "training eagerly", flush=True)
                self.graphed = None
        accumulation = self.hp.gradient_accumulation_steps
        total = torch.zeros((), device=self.device)
        for micro in range(accumulation):
            slots = self.plan.slots(step=step, micro_step=micro, accumulation=accumulation,
                                    rank=self.rank)
            batch = self.builder.build(slots)
            last = micro == accumulation - 1
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(
                self.denoiser_forward)
            with sync:
                loss = self._loss(batch)
                self.accelerator.backward(loss / accumulation)
            total += loss.detach() / accumulation
            self.samples_seen += len(slots)
        self.steps_taken += 1
        if self.hp.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.trainable_params, self.hp.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    # ---- previews --------------------------------------------------------------------------
    def _preview(self, step: int) -> None:
        if not self.is_main:
            return
        hp = self.hp
        modules = [self.denoiser, *self.text_encoders]
        modes = [m.training for m in modules]
        for module in modules:
            module.eval()
        try:
            write_preview(self.pipe, prompt=self.data.validation_prompt,
                          path=self.paths.previews / f"step-{step}.png",
                          resolution_hw=(self.data.resolution, self.data.resolution),
                          steps=hp.validation_inference_steps,
                          guidance_scale=hp.validation_guidance_scale, seed=hp.seed,
                          device=self.device, autocast=self.accelerator.autocast())
        finally:
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)

    # ---- the loop ----------------------------------------------------------------------------
    def _stop_requested(self, step: int) -> bool:
        if self.world_size == 1:
            return self.stop.requested
        if step % STOP_SYNC_EVERY:
            return False
        flag = torch.tensor([1.0 if self.stop.requested else 0.0], device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _rank_shares(self) -> list[tuple[int, int]]:
        """Every process's own (steps, samples) count, gathered by rank (a collective)."""
        mine = torch.tensor([self.steps_taken, self.samples_seen], device=self.device,
                            dtype=torch.int64)
        if self.world_size == 1:
            return [(self.steps_taken, self.samples_seen)]
        gathered = self.accelerator.gather(mine).view(self.world_size, 2).tolist()
        return [(int(steps), int(samples)) for steps, samples in gathered]

    def setup(self) -> None:
        self._prepare_models()
        self._build_optimizer()
        self._prepare_distributed()
        self._encode_prompts()
        self._build_batches()
        self._warm_latent_cache()

    def run(self, progress: ProgressReporter) -> TrainingResult:
        hp = self.hp
        start_step, losses = self._resume()
        total_steps = hp.max_train_steps
        loss_buffer = torch.zeros(max(total_steps - start_step, 1), device=self.device)
        recorded = 0
        # the first step carries torch.compile and the CUDA-graph capture (minutes at full size)
        progress.enter("first_step", step=start_step, loss=losses[-1] if losses else None)
        progress.start_timing(step=start_step)
        started = time.monotonic()
        step = start_step
        status: Literal["completed", "stopped"] = "completed"

        def flush_losses() -> list[float]:
            nonlocal recorded
            count = step - start_step
            if count > recorded:
                losses.extend(loss_buffer[recorded:count].tolist())
                recorded = count
            return losses

        while step < total_steps:
            if self._stop_requested(step):
                status = "stopped"
                break
            loss = self._train_step(step)
            loss_buffer[step - start_step] = loss
            step += 1
            first = step == start_step + 1
            if first or progress.due() or step == total_steps:
                current = flush_losses()[-1]
                if not math.isfinite(current):
                    raise TrainingRuntimeError(
                        f"the loss became {current} at step {step}: lower learning_rate, use "
                        "mixed_precision=bf16 or no, or check the images")
                progress.report(step=step, loss=current, phase="training")
            if first:  # the throughput (and so the ETA) of the steps, without the compile
                progress.start_timing(step=step)
            if hp.checkpointing_steps and step % hp.checkpointing_steps == 0 \
                    and step < total_steps:
                self._save_checkpoint(step, flush_losses())
            if hp.validation_steps and (step % hp.validation_steps == 0 or step == total_steps):
                self._preview(step)
        if self.cuda:
            torch.cuda.synchronize()
        elapsed = time.monotonic() - started
        shares = self._rank_shares()  # every process gets here at the same step
        losses = flush_losses()
        bad = [i for i, value in enumerate(losses) if not math.isfinite(value)]
        if bad:
            raise TrainingRuntimeError(f"the loss became non-finite at step {bad[0] + 1}: lower "
                                       "learning_rate or use mixed_precision=bf16 or no")
        if status == "stopped" and step > start_step:
            self._save_checkpoint(step, losses)
        images = (step - start_step) * hp.train_batch_size * self.world_size \
            * hp.gradient_accumulation_steps
        return TrainingResult(
            status=status, step=step, start_step=start_step, loss_curve=losses,
            training_seconds=elapsed,
            images_per_second=images / elapsed if elapsed > 0 else 0.0,
            world_size=self.world_size, mixed_precision=self.mixed_precision,
            device=str(self.device), rank_shares=shares)


def _tokenize(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    from easel_training.text import tokenize

    return tokenize(tokenizer, prompts)
