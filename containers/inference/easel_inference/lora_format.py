"""Read LoRA files in the A1111/kohya and diffusers/PEFT key formats into one shape.

A LoRA becomes a list of :class:`LoraPatch` — (component, module name, down, up, scale) — against
the modules of a concrete pipeline, so it can be fused into the weights by :mod:`lora`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from .checkpoint_keys import unet_module_map

COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
DENOISERS = ("unet", "transformer")
_KOHYA_PREFIXES = {
    "lora_unet_": "unet",  # the denoiser: a UNet, or SD3.5's / FLUX.1's transformer
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te3_": "text_encoder_3",
    "lora_te_": "text_encoder",
}
_DIFFUSERS_PREFIXES = {
    "unet.": "unet",
    "transformer.": "transformer",
    "text_encoder.": "text_encoder",
    "text_encoder_2.": "text_encoder_2",
    "text_encoder_3.": "text_encoder_3",
    "base_model.model.": "unet",
}
_DOWN_UP_SUFFIXES = (
    (".lora_down.weight", ".lora_up.weight"),
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
)
_UNET_RESNET_PARTS = {
    "norm1": "in_layers_0",
    "conv1": "in_layers_2",
    "time_emb_proj": "emb_layers_1",
    "norm2": "out_layers_0",
    "conv2": "out_layers_3",
    "conv_shortcut": "skip_connection",
}


class LoraFormatError(ValueError):
    """The file is not a LoRA this server can apply to the loaded model."""


@dataclass(frozen=True)
class LoraPatch:
    component: str
    module: str
    down: torch.Tensor
    up: torch.Tensor
    scale: float

    def check(self, shape: torch.Size) -> None:
        """Raise :class:`LoraFormatError` unless the update fits a module weight of ``shape``.

        Reads only the factors' shapes (no matmul), so a whole LoRA set can be checked before
        any weight changes."""
        where = f"LoRA for {self.component}.{self.module}"
        rank = self.down.shape[0] if self.down.ndim else 0
        rows = self.up.shape[0] if self.up.ndim else 0
        if rank == 0 or rows == 0:
            raise LoraFormatError(f"{where} has an empty down or up matrix")
        if self.up.numel() != rows * rank:
            raise LoraFormatError(
                f"{where} has an up matrix of shape {tuple(self.up.shape)} for a down matrix of "
                f"rank {rank} (the two matrices do not belong together)"
            )
        product = (rows, self.down.numel() // rank)
        if math.prod(product) != math.prod(shape):
            raise LoraFormatError(
                f"{where} has shape {product}, the model weight is {tuple(shape)}"
            )

    def delta(self, shape: torch.Size, *, device: torch.device | str | None = None
              ) -> torch.Tensor:
        """The weight update (float32) for a module weight of ``shape``, at multiplier 1.

        The small ``up``/``down`` factors move to ``device`` (the weight's) first and are
        multiplied there: only the factors cross to a GPU, never the full-size update."""
        self.check(shape)
        rank = self.down.shape[0]
        up, down = self.up, self.down
        if device is not None:
            up, down = up.to(device), down.to(device)
        product = up.float().reshape(up.shape[0], rank) @ down.float().reshape(rank, -1)
        return product.reshape(shape) * self.scale


class ModuleIndex:
    """Every patchable module of a pipeline under all the names LoRA files use for it.

    SD3.5 / FLUX.1 transformers are also indexed under their original single-file names
    (kohya LoRAs use them), where one original module may be several diffusers modules
    (``fused``: a fused ``qkv`` is ``to_q``, ``to_k``, ``to_v``; see :mod:`flow_keys`)."""

    def __init__(self, pipe: object) -> None:
        self.by_alias: dict[str, tuple[str, str]] = {}
        self.modules: dict[tuple[str, str], torch.nn.Module] = {}
        self.fused: dict[str, tuple[tuple[str, ...], bool]] = {}
        self.denoiser = "transformer" if getattr(pipe, "transformer", None) is not None \
            else "unet"
        self._unet_map: dict[str, tuple[str, bool]] | None = None
        transformer = getattr(pipe, "transformer", None)
        if transformer is not None:
            self._index_original_names(pipe, transformer)
        for component in COMPONENTS:
            model = getattr(pipe, component, None)
            if model is None:
                continue
            if component == "unet":
                try:
                    self._unet_map = unet_module_map(model.config)
                except (KeyError, TypeError, ValueError):
                    self._unet_map = None
            for name, module in model.named_modules():
                if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                    continue
                self.modules[(component, name)] = module
                for alias in self._aliases(component, name):
                    self.by_alias.setdefault(alias, (component, name))

    def _aliases(self, component: str, name: str) -> Iterable[str]:
        names = [name]
        if component.startswith("text_encoder") and not name.startswith("text_model."):
            names.append("text_model." + name)
        if component == "unet" and self._unet_map is not None:
            original = _original_unet_module(name, self._unet_map)
            if original:
                names.append(original)
        for variant in names:
            yield f"{component}:{variant}"
            yield f"{component}:{variant.replace('.', '_')}"

    def _index_original_names(self, pipe: object, transformer: torch.nn.Module) -> None:
        from .flow_keys import groups_for

        kind = "sd3" if type(pipe).__name__.startswith("StableDiffusion3") else "flux"
        for group in groups_for(kind, transformer.state_dict()):
            if not group.original.endswith(".weight"):
                continue
            original = group.original[: -len(".weight")]
            parts = tuple(part[: -len(".weight")] for part in group.parts)
            for alias in (original, original.replace(".", "_")):
                self.fused[f"transformer:{alias}"] = (parts, group.swap)

    def _denoiser(self, component: str) -> str:
        return self.denoiser if component in DENOISERS else component

    def find(self, component: str, name: str) -> tuple[str, str] | None:
        return self.by_alias.get(f"{self._denoiser(component)}:{name}")

    def find_fused(self, component: str, name: str) -> tuple[tuple[str, ...], bool] | None:
        """The diffusers modules (and whether halves swap) behind an original module name."""
        return self.fused.get(f"{self._denoiser(component)}:{name}")


def _original_unet_module(name: str, modules: Mapping[str, tuple[str, bool]]) -> str | None:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in modules:
            target, is_resnet = modules[prefix]
            rest = parts[cut:]
            if is_resnet and rest:
                rest[0] = _UNET_RESNET_PARTS.get(rest[0], rest[0])
            return ".".join([target, *rest]).replace(".", "_")
    return None


def _component_scales(metadata: Mapping[str, str]) -> dict[str, float]:
    """Alpha/rank per component from diffusers' ``lora_adapter_metadata`` header."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    scales = {}
    for component in COMPONENTS:
        rank = data.get(f"{component}.r")
        alpha = data.get(f"{component}.lora_alpha")
        if isinstance(rank, int | float) and isinstance(alpha, int | float) and rank > 0:
            scales[component] = float(alpha) / float(rank)
    return scales


def _split_key(key: str) -> tuple[str, str, str] | None:
    """(component, module name as written, 'down'|'up') or None for non-weight keys."""
    for down_suffix, up_suffix in _DOWN_UP_SUFFIXES:
        for suffix, kind in ((down_suffix, "down"), (up_suffix, "up")):
            if key.endswith(suffix):
                stem = key[: -len(suffix)]
                component, module = _component_of(stem)
                return component, module, kind
    return None


def _component_of(stem: str) -> tuple[str, str]:
    for prefix, component in {**_KOHYA_PREFIXES, **_DIFFUSERS_PREFIXES}.items():
        if stem.startswith(prefix):
            return component, stem[len(prefix) :]
    return "unet", stem


def _clean_diffusers_name(module: str) -> str:
    # older diffusers attention-processor names
    module = re.sub(r"\.processor\.(to_[qkv])_lora$", r".\1", module)
    module = re.sub(r"\.processor\.to_out_lora$", ".to_out.0", module)
    module = re.sub(r"\.(to_[qkv])_lora$", r".\1", module)
    return module


def _fused_patches(index: ModuleIndex, parts: tuple[str, ...], swap: bool,
                   tensors: dict[str, torch.Tensor], scale: float, *, name: str,
                   module: str) -> list[LoraPatch]:
    """A LoRA on one original module (e.g. a fused ``qkv``) as patches of the diffusers modules
    it is: the up matrix split by their output rows (halves swapped where the weights' are),
    the down matrix shared."""
    up = tensors["up"].reshape(tensors["up"].shape[0], -1)
    if swap:
        first, second = up.chunk(2, dim=0)
        up = torch.cat([second, first], dim=0)
    sizes = [index.modules[("transformer", part)].weight.shape[0] for part in parts]
    if sum(sizes) != up.shape[0]:
        raise LoraFormatError(f"LoRA {name!r} for {module!r} has {up.shape[0]} output rows, the "
                              f"model's module has {sum(sizes)} (made for another base model?)")
    return [LoraPatch("transformer", part, tensors["down"], piece, scale)
            for part, piece in zip(parts, torch.split(up, sizes, dim=0), strict=True)]


def parse_lora(
    state: Mapping[str, torch.Tensor], index: ModuleIndex, *, metadata: Mapping[str, str] | None = None,
    name: str = "lora",
) -> list[LoraPatch]:
    """Patches for the pipeline behind ``index``; raises LoraFormatError on foreign keys."""
    scales = _component_scales(metadata or {})
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    alphas: dict[tuple[str, str], float] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        if key.endswith(".alpha"):
            component, module = _component_of(key[: -len(".alpha")])
            alphas[(component, module)] = float(tensor.float().item())
            continue
        split = _split_key(key)
        if split is None:
            unknown.append(key)
            continue
        component, module, kind = split
        pairs.setdefault((component, module), {})[kind] = tensor
    if unknown:
        raise LoraFormatError(
            f"LoRA {name!r} has weights this server cannot apply (e.g. {unknown[0]!r}); "
            "supported: A1111/kohya LoRA and diffusers/PEFT LoRA"
        )
    patches = []
    for (component, module), tensors in pairs.items():
        if set(tensors) != {"down", "up"}:
            raise LoraFormatError(f"LoRA {name!r} lacks the down or up matrix of {module!r}")
        target = index.find(component, module) or index.find(component, _clean_diffusers_name(module))
        rank = tensors["down"].shape[0]
        alpha = alphas.get((component, module))
        fused = index.find_fused(component, module) if target is None else None
        if fused is not None:
            parts, swap = fused
            scale = alpha / rank if alpha is not None else scales.get("transformer", 1.0)
            patches.extend(_fused_patches(index, parts, swap, tensors, scale, name=name,
                                          module=module))
            continue
        if target is None:
            raise LoraFormatError(
                f"LoRA {name!r} targets {component}.{module}, which the loaded model does not have "
                "(is it made for another base model?)"
            )
        scale = alpha / rank if alpha is not None else scales.get(target[0], 1.0)
        patches.append(LoraPatch(target[0], target[1], tensors["down"], tensors["up"], scale))
    if not patches:
        raise LoraFormatError(f"LoRA {name!r} holds no LoRA weights")
    return patches
