"""Loaded pipelines kept up to a budget, least recently used evicted; per-task variants."""

from __future__ import annotations

import gc
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from easel_contracts.families import FAMILIES, ModelFamily
from easel_contracts.memory_plan import GIB, footprint

from .errors import NotFound
from .fastpath import FastPathOptions, FastPathReport, apply_fast_path
from .loader import (
    find_checkpoints,
    flow_family_of,
    load_controlnet,
    load_pipeline,
    load_vae,
)
from .lora import LoraFuser
from .settings import Settings
from .upscalers import UpscalerSet

log = logging.getLogger("easel.inference")


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    if setting == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[setting]


def wants_fp8(setting: str, *, device: str, family: ModelFamily, model_bytes: int,
              offload: bool, gpu_gib: float | None) -> bool:
    """``EASEL_FP8_WEIGHTS`` for one SD3.5 / FLUX.1 model: ``on``/``off`` as set; ``auto``: on
    CUDA, where the memory plan's 16-bit need exceeds the GPU's memory (``gpu_gib``)."""
    if setting != "auto":
        return setting == "on"
    if device != "cuda" or gpu_gib is None:
        return False
    fp = footprint(family, "bfloat16", model_bytes=model_bytes)
    return (fp.offload_gpu_gib if offload else fp.full_gpu_gib) > gpu_gib


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _gpu_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB


def short_hash(path: Path) -> str | None:
    """A1111's legacy model hash: sha256 of 64 KiB at offset 1 MiB, 8 hex digits."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(0x100000)
        digest.update(handle.read(0x10000))
    return digest.hexdigest()[:8]


def pipeline_family(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline, from its classes and its denoiser's config."""
    name = type(pipe).__name__
    transformer = getattr(pipe, "transformer", None)
    if name.startswith("StableDiffusion3"):
        return ModelFamily.SD35_MEDIUM if transformer.config.dual_attention_layers else \
            ModelFamily.SD35_LARGE
    if name.startswith("Flux"):
        return ModelFamily.FLUX_DEV if transformer.config.guidance_embeds else \
            ModelFamily.FLUX_SCHNELL
    if getattr(pipe, "text_encoder_2", None) is not None:
        return ModelFamily.SDXL if getattr(pipe, "text_encoder", None) is not None else \
            ModelFamily.SDXL_REFINER
    return ModelFamily.SD2 if pipe.text_encoder.config.hidden_act == "gelu" else ModelFamily.SD1


def native_side(pipe: Any) -> int:
    """The side (pixels) the model was trained at: its denoiser's sample size in latents times
    the VAE's factor (512 SD1.5, 768 SD2-v, 1024 SDXL); SD3.5 and FLUX.1 at their family's
    resolution scaled by the VAE's factor over 8 (1024 for the released models)."""
    vae_factor = int(getattr(pipe, "vae_scale_factor", 8))
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        return int(unet.config.sample_size) * vae_factor
    return FAMILIES[pipeline_family(pipe)].resolution * vae_factor // 8


@dataclass
class LoadedModel:
    name: str
    path: Path
    pipe: Any
    fuser: LoraFuser
    base_scheduler_config: dict[str, Any]
    load_seconds: float
    short_hash: str | None = None
    variants: dict[str, Any] = field(default_factory=dict)
    fast_path: FastPathReport = field(default_factory=FastPathReport)

    @property
    def family(self) -> ModelFamily:
        return pipeline_family(self.pipe)

    @property
    def is_flow(self) -> bool:
        """SD3.5 or FLUX.1: a flow-matching transformer instead of a UNet."""
        return getattr(self.pipe, "unet", None) is None

    @property
    def is_inpainting(self) -> bool:
        """A 9-channel UNet (latents + mask + masked-image latents): an inpainting checkpoint."""
        unet = getattr(self.pipe, "unet", None)
        return unet is not None and int(getattr(unet.config, "in_channels", 4)) == 9

    @property
    def is_xl(self) -> bool:
        return getattr(self.pipe, "text_encoder_2", None) is not None

    def variant(self, kind: str, make: Callable[[Any], Any]) -> Any:
        if kind not in self.variants:
            variant = make(self.pipe)
            variant.set_progress_bar_config(disable=True)
            self.variants[kind] = variant
        return self.variants[kind]


class PipelineManager:
    def __init__(self, settings: Settings, *, loader: Callable[..., Any] = load_pipeline) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.fast_options = FastPathOptions(
            enabled=settings.fast_path == "on" or (settings.fast_path == "auto"
                                                  and self.device == "cuda"),
            fuse_qkv=settings.fast_qkv, channels_last=settings.fast_channels_last,
            cuda_graphs=settings.fast_graphs, compile_vae=settings.fast_vae)
        self._loader = loader
        self.upscalers = UpscalerSet(settings.model_dir, device=self.device,
                                     max_pixels=settings.max_pixels,
                                     max_image_bytes=settings.max_image_bytes)
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._controlnets: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.RLock()
        self.current: str | None = None

    def checkpoints(self) -> dict[str, Path]:
        return find_checkpoints(self.settings.model_dir)

    def default_name(self) -> str:
        found = self.checkpoints()
        if not found:
            raise NotFound(f"no checkpoints under {self.settings.model_dir}/Stable-diffusion")
        wanted = self.settings.default_model
        if wanted:
            name = self.lookup_name(wanted, found)
            if name is None:
                raise NotFound(
                    f"EASEL_DEFAULT_MODEL {wanted!r} not found; available: {', '.join(found)}"
                )
            return name
        return next(iter(found))

    @staticmethod
    def lookup_name(wanted: str, found: dict[str, Path]) -> str | None:
        if wanted in found:
            return wanted
        for name, path in found.items():
            if wanted in (path.name, path.stem):
                return name
        return None

    def loaded_names(self) -> list[str]:
        return list(self._loaded)

    def load_seconds(self) -> dict[str, float]:
        return {name: round(model.load_seconds, 3) for name, model in self._loaded.items()}

    def peek(self, name: str | None) -> LoadedModel | None:
        """The model a request names (or the default) if it is loaded already; loads nothing."""
        with self._lock:
            found = self.checkpoints()
            try:
                resolved = self.lookup_name(name, found) if name else self.default_name()
            except NotFound:
                return None
            return self._loaded.get(resolved) if resolved else None

    def get(self, name: str | None) -> LoadedModel:
        with self._lock:
            found = self.checkpoints()
            resolved = self.lookup_name(name, found) if name else self.default_name()
            if resolved is None:
                raise NotFound(
                    f"checkpoint {name!r} not found; available: {', '.join(found) or 'none'}",
                    field="override_settings.sd_model_checkpoint",
                )
            if resolved in self._loaded:
                self._loaded.move_to_end(resolved)
                self.current = resolved
                return self._loaded[resolved]
            while len(self._loaded) >= self.settings.pipeline_budget:
                evicted, model = self._loaded.popitem(last=False)
                log.info("evicting pipeline %s (budget %d)", evicted, self.settings.pipeline_budget)
                model.fuser.restore()
                del model
                self.release_memory()
            import time

            started = time.perf_counter()
            flow_family = flow_family_of(found[resolved])
            flow = flow_family is not None
            extra: dict[str, Any] = {}
            dtype = self.dtype
            if flow and self.settings.dtype == "auto" and self.device == "cuda":
                dtype = torch.bfloat16  # SD3.5 and FLUX.1 overflow float16
            if flow and self.settings.text_encoder_offload and self.device == "cuda":
                extra["offload"] = True
            if flow_family is not None and wants_fp8(
                    self.settings.fp8_weights, device=self.device, family=flow_family,
                    model_bytes=_size(found[resolved]), offload="offload" in extra,
                    gpu_gib=_gpu_gib()):
                extra["fp8"] = True
            pipe = self._loader(found[resolved], device=self.device, dtype=dtype, **extra)
            pipe.set_progress_bar_config(disable=True)
            # the fast path rewrites a UNet; SD3.5 / FLUX.1 transformers run eager
            fast_path = (apply_fast_path(pipe, self.fast_options)
                         if getattr(pipe, "unet", None) is not None else FastPathReport())
            loaded = LoadedModel(
                name=resolved,
                path=found[resolved],
                pipe=pipe,
                fuser=LoraFuser(pipe),
                base_scheduler_config=dict(pipe.scheduler.config),
                load_seconds=time.perf_counter() - started,
                short_hash=short_hash(found[resolved]),
                fast_path=fast_path,
            )
            self._loaded[resolved] = loaded
            self.current = resolved
            log.info("loaded %s in %.1fs on %s", resolved, loaded.load_seconds, self.device)
            return loaded

    def controlnet_files(self) -> dict[str, Path]:
        """ControlNets under ``ControlNet/``: diffusers folders and single files, by name."""
        root = self.settings.model_dir / "ControlNet"
        if not root.is_dir():
            return {}
        found: dict[str, Path] = {}
        for path in sorted(root.iterdir()):
            if path.is_dir() and (path / "config.json").is_file():
                found[path.name] = path
            elif path.is_file() and path.suffix in (".safetensors", ".pth", ".ckpt"):
                found.setdefault(path.stem, path)
        return found

    def controlnet(self, name: str, model: LoadedModel) -> Any:
        with self._lock:
            found = self.controlnet_files()
            key = name if name in found else next(
                (stem for stem, path in found.items() if path.name == name), None
            )
            if key is None:
                raise NotFound(
                    f"ControlNet {name!r} not found; available: {', '.join(found) or 'none'}",
                    field="alwayson_scripts.controlnet.args.model",
                )
            cache_key = (key, model.name)
            if cache_key in self._controlnets:
                self._controlnets.move_to_end(cache_key)
                return self._controlnets[cache_key]
            controlnet = load_controlnet(
                found[key], unet_config=dict(model.pipe.unet.config), device=self.device,
                dtype=self.dtype,
            )
            self._controlnets[cache_key] = controlnet
            while len(self._controlnets) > 2:
                self._controlnets.popitem(last=False)
            return controlnet

    def restore_all_loras(self) -> None:
        for model in self._loaded.values():
            model.fuser.restore()

    def vae_files(self) -> dict[str, Path]:
        root = self.settings.model_dir / "VAE"
        if not root.is_dir():
            return {}
        found = {}
        for path in sorted(root.iterdir()):
            if path.is_file() and path.suffix == ".safetensors" or path.is_dir() and (path / "config.json").is_file():
                found[path.name] = path
        return found

    def vae(self, name: str | None, model: LoadedModel) -> Any:
        """The VAE named by ``override_settings.sd_vae`` for this model, or None (built-in)."""
        if not name:
            return None
        found = self.vae_files()
        key = name if name in found else next(
            (file for file, path in found.items() if path.stem == name), None
        )
        if key is None:
            raise NotFound(
                f"VAE {name!r} not found; available: {', '.join(found) or 'none'}",
                field="override_settings.sd_vae",
            )
        cache_key = f"vae:{key}"
        if cache_key not in model.variants:
            model.variants[cache_key] = load_vae(
                found[key], base_config=dict(model.pipe.vae.config), device=self.device,
                dtype=model.pipe.vae.dtype,  # bf16 for SD3.5 / FLUX.1 on a GPU
            )
        return model.variants[cache_key]

    def release_memory(self) -> None:
        gc.collect()
        if self.device == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
