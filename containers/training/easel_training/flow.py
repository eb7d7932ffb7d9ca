"""LoRA training of the flow-matching families: SD3.5 (MMDiT) and FLUX.1 (dev, schnell).

The loop, checkpoints, progress and data path are :class:`~easel_training.trainer.Trainer`'s; this
subclass swaps the family-specific parts:

- objective: rectified flow (``flow_schedule.py``): noisy = (1 - sigma) * x0 + sigma * noise, the
  transformer predicts noise - x0;
- model inputs: SD3.5 takes the latents as they are and ``timestep = 1000 * sigma``; FLUX.1 takes
  2x2-packed latent tokens with their image ids, the text ids, ``timestep = sigma`` and, for dev,
  the distilled guidance embedding (the family's guidance, 3.5);
- LoRA (peft) on the transformer's attention projections (``lora.FLOW_TARGETS``);
- text: every prompt (captions, the preview prompt and, for SD3.5's guided previews, the empty
  negative prompt) is encoded once with the family's own ``encode_prompt``, then the text encoders
  (T5-XXL alone is 9.5 GB in bf16) are dropped from the pipeline before the first step;
- previews: the family's pipeline, fed the cached embeddings.
"""

from __future__ import annotations

import gc
from typing import Any

import torch
from easel_contracts.families import ModelFamily, facts_for
from easel_contracts.hyperparameters import HyperParameters

from easel_training import lora
from easel_training.base_model import BaseModel
from easel_training.batches import Batch, BatchBuilder, gather_prompts
from easel_training.errors import TrainingInputError
from easel_training.flow_schedule import FlowSchedule
from easel_training.latents import LatentStore
from easel_training.plan import BatchPlan
from easel_training.sampling import write_preview
from easel_training.text import PromptEncoding
from easel_training.trainer import Trainer

# T5 tokens per prompt: what each family's pipeline uses by default (FLUX.1 schnell was distilled
# with 256, dev with 512; SD3.5's pipeline default is 256), so previews and serving see the same
TEXT_TOKENS = {ModelFamily.FLUX_DEV: 512, ModelFamily.FLUX_SCHNELL: 256,
               ModelFamily.SD35_MEDIUM: 256, ModelFamily.SD35_LARGE: 256}
ENCODE_BATCH = 8
TEXT_ENCODER_SLOTS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def check_flow_settings(hp: HyperParameters, base: BaseModel) -> None:
    """Refuse settings the flow trainer does not implement, before any work is done."""
    label = facts_for(base.family).label
    if hp.mode != "lora":
        raise TrainingInputError(f"hyperparameter 'mode': {label} trains LoRAs only (a full "
                                 "fine-tune of its transformer does not fit the training "
                                 "instance types); set mode to lora")
    if hp.train_text_encoder:
        raise TrainingInputError(f"hyperparameter 'train_text_encoder': {label} LoRAs train the "
                                 "transformer only (its text encoders are encoded once and "
                                 "freed); set it to false")


def attention_without_cudnn() -> None:
    """Turn off cuDNN's fused attention for this (training) process: FLUX.1's LoRA step crashed
    in its backward on an H100 and an H200 (torch 2.11.0+cu130, 1024x1024, batch 1: "CUDA
    error: CUBLAS_STATUS_EXECUTION_FAILED" / "mha_graph.execute(...).is_good()" with gradient
    checkpointing, "an illegal memory access" without). PyTorch's SDPA then picks flash or
    memory-efficient attention, whose backward handles FLUX's 128-wide heads. Process-wide on
    purpose: gradient checkpointing recomputes the forward inside the backward, outside any
    context manager around the step."""
    if torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)
        print("easel-train: cuDNN attention off for FLUX.1 training (flash / memory-efficient "
              "attention instead)", flush=True)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> FLUX's [B, H/2 * W/2, 4C] tokens (2x2 patches, channels-major)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for a latent grid of ``height`` x ``width``."""
    b, _, channels = tokens.shape
    grid = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, channels // 4, height, width)


def latent_image_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """FLUX's position ids of the packed tokens: (0, row, column) per 2x2 patch."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device)
    ids[..., 1] = torch.arange(height // 2, device=device)[:, None]
    ids[..., 2] = torch.arange(width // 2, device=device)[None, :]
    return ids.reshape(-1, 3)


class FlowTrainer(Trainer):
    GRAPHS = False  # the CUDA-graph step is written for the UNet's call

    def _bind_models(self) -> None:
        pipe = self.pipe
        self.flux = self.base.arch == "flux"
        self.family = self.base.family
        self.denoiser = pipe.transformer
        self.text_encoders = [getattr(pipe, slot) for slot in TEXT_ENCODER_SLOTS
                              if getattr(pipe, slot, None) is not None]
        self.tokenizers = []
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.guidance = facts_for(self.family).guidance
        self._image_ids: dict[tuple[int, int], torch.Tensor] = {}

    def _prepare_models(self) -> None:
        hp = self.hp
        torch.manual_seed(hp.seed)  # adapter initialisation is part of the seeded run
        self.pipe.vae.requires_grad_(False).to(self.device, torch.float32).eval()
        self.denoiser.to(self.device, self.weight_dtype)
        lora.add_lora(self.denoiser, rank=hp.rank, alpha=hp.effective_alpha,
                      dropout=hp.lora_dropout, targets=lora.FLOW_TARGETS)
        if hp.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        if self.flux:
            attention_without_cudnn()
        self.denoiser.train()

    def _components(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.denoiser}

    # ---- text: encode once, then free the encoders ---------------------------------------------
    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        tokens = TEXT_TOKENS[self.family]
        if self.flux:
            hidden, pooled, text_ids = self.pipe.encode_prompt(
                prompts, None, device=self.device, max_sequence_length=tokens)
            return {"prompt_embeds": hidden.float(), "pooled_prompt_embeds": pooled.float(),
                    "text_ids": text_ids.float()}
        hidden, _, pooled, _ = self.pipe.encode_prompt(
            prompts, None, None, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=tokens)
        return {"prompt_embeds": hidden.float(), "pooled_prompt_embeds": pooled.float()}

    def setup(self) -> None:
        # the prompts first: the text encoders visit the GPU alone, so the peak is the larger of
        # (text encoders) and (transformer + training), never their sum
        self._encode_prompts()
        self._prepare_models()
        self._build_optimizer()
        self._prepare_distributed()
        self._build_batches()
        self._warm_latent_cache()

    @torch.no_grad()
    def _encode_prompts(self) -> None:
        prompts = self.data.prompts
        for encoder in self.text_encoders:
            encoder.requires_grad_(False).to(self.device, self.weight_dtype).eval()
        parts: list[dict[str, torch.Tensor]] = []
        with self.accelerator.autocast():
            for start in range(0, len(prompts), ENCODE_BATCH):
                parts.append(self._encode(prompts[start:start + ENCODE_BATCH]))
            preview = self._encode([self.data.validation_prompt])
            negative = None if self.flux else self._encode([""])
        self.cached_prompts = PromptEncoding(
            torch.cat([p["prompt_embeds"] for p in parts]),
            torch.cat([p["pooled_prompt_embeds"] for p in parts]))
        self.text_ids = parts[0].get("text_ids")
        self.preview_conditioning = {"prompt_embeds": preview["prompt_embeds"],
                                     "pooled_prompt_embeds": preview["pooled_prompt_embeds"]}
        if negative is not None:
            self.preview_conditioning.update(
                negative_prompt_embeds=negative["prompt_embeds"],
                negative_pooled_prompt_embeds=negative["pooled_prompt_embeds"])
        self._free_text_encoders()

    def _free_text_encoders(self) -> None:
        for slot in TEXT_ENCODER_SLOTS:
            if getattr(self.pipe, slot, None) is not None:
                setattr(self.pipe, slot, None)
        self.text_encoders = []
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    # ---- batches ---------------------------------------------------------------------------------
    def _build_batches(self) -> None:
        patch = self.vae_scale * 2  # the transformers read 2x2 latent patches
        for image in self.data.images + self.data.class_images:
            height, width = image.placement.target_hw
            if height % patch or width % patch:
                raise TrainingInputError(
                    f"hyperparameter 'resolution': {facts_for(self.family).label} trains on 2x2 "
                    f"patches of {self.vae_scale}x-downscaled latents, so image sides must be "
                    f"multiples of {patch}; got a {width}x{height} training size")
        self.schedule = FlowSchedule(self.pipe.scheduler.config, device=self.device)
        self.store = LatentStore(self.pipe.vae, self.device, cache=self.hp.cache_latents)
        self.builder = BatchBuilder(images=self.data.images, class_images=self.data.class_images,
                                    store=self.store, schedule=self.schedule, device=self.device,
                                    random_flip=self.hp.random_flip,
                                    noise_offset=self.hp.noise_offset, sdxl=False)
        self.plan = BatchPlan(self.data.bucket_groups, batch_size=self.hp.train_batch_size,
                              world_size=self.world_size, seed=self.hp.seed)

    # ---- one step --------------------------------------------------------------------------------
    def _conditioning(self, batch: Batch) -> tuple[torch.Tensor, Any]:
        encoding = gather_prompts(self.cached_prompts, batch.prompt_indices)
        return encoding.hidden, encoding.pooled

    def _image_ids_for(self, height: int, width: int) -> torch.Tensor:
        if (height, width) not in self._image_ids:
            self._image_ids[(height, width)] = latent_image_ids(height, width, self.device)
        return self._image_ids[(height, width)]

    def _predict(self, batch: Batch) -> torch.Tensor:
        hidden, pooled = self._conditioning(batch)
        noisy, sigmas = batch.noisy_latents, batch.timesteps
        if not self.flux:
            return self.denoiser_forward(hidden_states=noisy, timestep=sigmas * 1000.0,
                                         encoder_hidden_states=hidden,
                                         pooled_projections=pooled, return_dict=False)[0]
        size, _, height, width = noisy.shape
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((size,), self.guidance, device=self.device)
        tokens = self.denoiser_forward(
            hidden_states=pack_latents(noisy), timestep=sigmas, guidance=guidance,
            pooled_projections=pooled, encoder_hidden_states=hidden, txt_ids=self.text_ids,
            img_ids=self._image_ids_for(height, width), return_dict=False)[0]
        return unpack_latents(tokens, height, width)

    def _loss(self, batch: Batch) -> torch.Tensor:
        with self.accelerator.autocast():
            prediction = self._predict(batch)
        return self._loss_from(prediction, batch.target, batch.num_instance)

    # ---- previews ----------------------------------------------------------------------------
    def _preview(self, step: int) -> None:
        if not self.is_main:
            return
        hp = self.hp
        self.denoiser.eval()
        try:
            write_preview(self.pipe, conditioning=self.preview_conditioning,
                          path=self.paths.previews / f"step-{step}.png",
                          resolution_hw=(self.data.resolution, self.data.resolution),
                          steps=hp.validation_inference_steps,
                          guidance_scale=hp.validation_guidance_scale, seed=hp.seed,
                          device=self.device, autocast=self.accelerator.autocast())
        finally:
            self.denoiser.train()


def make_trainer(*, base: BaseModel, **kwargs: Any) -> Trainer:
    """The trainer for the base model's family."""
    return (FlowTrainer if base.flow else Trainer)(base=base, **kwargs)
