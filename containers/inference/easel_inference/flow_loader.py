"""SD3.5 and FLUX.1 pipelines from a diffusers folder or a single file plus the parts beside it.

A single file holds the denoiser in the original layout (SD3.5: ``model.diffusion_model.joint_blocks``;
FLUX.1: ``double_blocks``) and maybe its VAE and text encoders; what it lacks comes from the model
layout (``text_encoder/clip_l.safetensors``, ``clip_g``, ``t5xxl``, ``spiece.model``;
``VAE/ae.safetensors``: ``easel_contracts.families.SEPARATE_PARTS``). Configs come from the file's
Easel metadata or the released models' configs shipped in :mod:`flow_configs`; tokenizers from the
shipped CLIP vocabulary and the model's own ``spiece.model``. Nothing is fetched. Tensors are read
straight onto the target device, so host memory never holds the whole model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from easel_contracts.families import (
    SEPARATE_PARTS,
    T5_TOKENIZER,
    Detection,
    FamilyError,
    ModelFamily,
    detect_checkpoint,
    missing_parts,
    t5_tokenizer_problem,
)
from safetensors import safe_open

from . import flow_keys
from .flow_configs import SHIPPED
from .t5_spiece import SpieceError, t5_tokenizer
from .tokenizer import build_clip_tokenizer

FLOW_FAMILIES = (ModelFamily.SD35_MEDIUM, ModelFamily.SD35_LARGE, ModelFamily.FLUX_DEV,
                 ModelFamily.FLUX_SCHNELL)
COMPONENTS_METADATA_KEY = "easel.components"  # the main file: component -> config
CONFIG_METADATA_KEY = "easel.config"  # a separate part's own config
# where each text encoder sits inside an all-in-one file (Stability's / ComfyUI's layout)
_IN_FILE = {"clip_l": "text_encoders.clip_l.transformer.",
            "openclip_g": "text_encoders.clip_g.transformer.",
            "t5xxl": "text_encoders.t5xxl.transformer."}
_VAE_PREFIXES = ("first_stage_model.", "vae.")


class FlowLoadError(RuntimeError):
    """A flow-family model cannot be loaded; the message says why and what to do."""


def is_sd3(family: ModelFamily) -> bool:
    return family in (ModelFamily.SD35_MEDIUM, ModelFamily.SD35_LARGE)


def pipeline_class(family: ModelFamily) -> type:
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    return StableDiffusion3Pipeline if is_sd3(family) else FluxPipeline


def encoder_slots(family: ModelFamily) -> dict[str, str]:
    """text encoder kind -> the pipeline attribute that holds it."""
    if is_sd3(family):
        return {"clip_l": "text_encoder", "openclip_g": "text_encoder_2",
                "t5xxl": "text_encoder_3"}
    return {"clip_l": "text_encoder", "t5xxl": "text_encoder_2"}


def _tokenizer_slot(slot: str) -> str:
    return slot.replace("text_encoder", "tokenizer")


def t5_rows(encoder: Any) -> int:
    return int(encoder.get_input_embeddings().weight.shape[0])


def check_t5(encoder: Any, tokenizer: Any, *, where: str) -> None:
    """Refuse a T5 encoder whose tokenizer cannot drive it (a toy tokenizer with a real T5)."""
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    pieces = sum(1 for piece in vocab if not piece.startswith("<extra_id_"))
    problem = t5_tokenizer_problem(t5_rows(encoder), pieces)
    if problem:
        raise FlowLoadError(f"{where}: {problem}")


def offload_text_encoders(pipe: Any, device: str) -> Any:
    """Keep the text encoders in host memory and put each on ``device`` only for its forward
    pass (the memory plan's text-encoder offload); the denoiser and VAE stay on ``device``."""
    def move_in(module: torch.nn.Module, _args: Any) -> None:
        module.to(device)

    def move_out(module: torch.nn.Module, _args: Any, _output: Any) -> None:
        module.to("cpu")

    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        encoder = getattr(pipe, name, None)
        if encoder is None:
            continue
        encoder.to("cpu")
        encoder.register_forward_pre_hook(move_in)  # hooks that return None change nothing
        encoder.register_forward_hook(move_out)
    pipe.transformer.to(device)
    pipe.vae.to(device)
    return pipe


def store_fp8(transformer: Any, compute_dtype: torch.dtype) -> None:
    """Store the denoiser's layer weights in float8_e4m3fn (1 byte a parameter) and compute in
    ``compute_dtype``: diffusers' layerwise casting upcasts each layer's weights just for its
    forward pass. Norms, embeddings and the patch/position layers stay in ``compute_dtype``
    (diffusers' default skip list). Done on the host, before the move to the GPU, so the GPU
    never holds the 16-bit denoiser (``EASEL_FP8_WEIGHTS``)."""
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                         compute_dtype=compute_dtype)


def has_fp8_weights(pipe: Any) -> bool:
    transformer = getattr(pipe, "transformer", None)
    return transformer is not None and any(
        p.dtype == torch.float8_e4m3fn for p in transformer.parameters())


def _place(pipe: Any, device: str, offload: bool, fp8: bool = False,
           dtype: torch.dtype | None = None) -> Any:
    if fp8:
        pipe.transformer.to("cpu")
        store_fp8(pipe.transformer, dtype or pipe.transformer.dtype)
    return offload_text_encoders(pipe, device) if offload else pipe.to(device)


def load_flow_folder(path: Path, family: ModelFamily, *, device: str,
                     dtype: torch.dtype, offload: bool = False, fp8: bool = False) -> Any:
    try:
        pipe = pipeline_class(family).from_pretrained(str(path), dtype=dtype,
                                                      local_files_only=True)
    except Exception as exc:
        raise FlowLoadError(f"{path.name} could not be loaded as a diffusers folder: "
                            f"{exc}") from exc
    slot = encoder_slots(family)["t5xxl"]
    check_t5(getattr(pipe, slot), getattr(pipe, _tokenizer_slot(slot)), where=path.name)
    return _place(pipe, device, offload, fp8, dtype)


class _File:
    """A safetensors file's keys, shapes and metadata; tensors read onto a device on demand."""

    def __init__(self, path: Path, device: str) -> None:
        self.path, self.device = path, device
        try:
            with safe_open(str(path), framework="pt") as handle:
                self.metadata = dict(handle.metadata() or {})
                self.shapes = {key: tuple(handle.get_slice(key).get_shape())
                               for key in handle.keys()}  # noqa: SIM118
        except Exception as exc:
            raise FlowLoadError(f"{path.name} is not a readable safetensors file: {exc}") from exc

    def tensors(self, keep: Any, device: str | None = None) -> dict[str, torch.Tensor]:
        with safe_open(str(self.path), framework="pt", device=device or self.device) as handle:
            return {key: handle.get_tensor(key) for key in self.shapes if keep(key)}

    def config(self, component: str) -> dict[str, Any] | None:
        raw = self.metadata.get(COMPONENTS_METADATA_KEY)
        if raw:
            return json.loads(raw).get(component)
        if component == "own":
            own = self.metadata.get(CONFIG_METADATA_KEY)
            return json.loads(own) if own else None
        return None


def _assign(model: torch.nn.Module, state: dict[str, torch.Tensor], *, what: str) -> None:
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise FlowLoadError(f"{what}: weights do not fit the model (missing "
                            f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
    meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()]
            if tensor.is_meta]
    if meta:
        raise FlowLoadError(f"{what}: no weights for {meta[:3]}")


def _diffusers_model(cls: type, config: dict[str, Any], state: dict[str, torch.Tensor], *,
                     what: str, dtype: torch.dtype) -> Any:
    from accelerate import init_empty_weights

    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    with init_empty_weights():
        model = cls.from_config(fields)
    _assign(model, state, what=what)
    return model.to(dtype).eval()


def _text_model(kind: str, slot: str, family: ModelFamily, config: dict[str, Any],
                state: dict[str, torch.Tensor], *, what: str, dtype: torch.dtype) -> Any:
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    if kind == "t5xxl":
        cls, cfg = T5EncoderModel, T5Config(**fields)
    else:
        projection = is_sd3(family)  # SD3.5 reads the pooled projections of both CLIPs
        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        cfg = CLIPTextConfig(**fields)
    model, info = cls.from_pretrained(None, config=cfg, state_dict=state, dtype=dtype,
                                      output_loading_info=True)
    missing = [key for key in info.get("missing_keys", ()) if "position_ids" not in key]
    if missing:
        raise FlowLoadError(f"{what}: weights do not fit a {slot} ({len(missing)} missing, "
                            f"e.g. {sorted(missing)[:3]})")
    return model.eval()


def load_flow_single_file(path: Path, *, model_dir: Path, device: str,
                          dtype: torch.dtype, offload: bool = False, fp8: bool = False) -> Any:
    """A pipeline from ``Stable-diffusion/<name>.safetensors`` and the parts beside it."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    main = _File(path, device)
    try:
        detection: Detection = detect_checkpoint(main.shapes, name=path.name)
    except FamilyError as exc:
        raise FlowLoadError(str(exc)) from None
    family = detection.family
    present = {rel for rel in (*SEPARATE_PARTS.values(), T5_TOKENIZER)
               if (model_dir / rel).is_file()}
    missing = missing_parts(detection, present)
    if missing:
        raise FlowLoadError(f"{path.name} is a {detection.facts.label} checkpoint without "
                            f"{', '.join(missing)}: put them in the model folder (see the README's "
                            "Model families)")
    shipped = SHIPPED[family]
    kind = "sd3" if is_sd3(family) else "flux"
    transformer_cls = SD3Transformer2DModel if kind == "sd3" else FluxTransformer2DModel
    config = main.config("transformer") or shipped["transformer"]

    def is_denoiser(key: str) -> bool:
        return not key.startswith((*_VAE_PREFIXES, "text_encoders."))

    from accelerate import init_empty_weights

    with init_empty_weights():
        shapes_model = transformer_cls.from_config(
            {k: v for k, v in config.items() if not k.startswith("_")})
    shapes = {key: tuple(value.shape) for key, value in shapes_model.state_dict().items()}
    try:
        # FP8: the denoiser is read to the host and cast there (``_place``)
        state = flow_keys.to_diffusers(kind, main.tensors(is_denoiser, "cpu" if fp8 else None),
                                       shapes, name=path.name)
    except flow_keys.FlowKeyError as exc:
        raise FlowLoadError(f"{exc} (is the file a {detection.facts.label} of another size? "
                            "a file written without Easel's configs loads with the released "
                            "model's)") from None
    parts: dict[str, Any] = {"transformer": _diffusers_model(
        transformer_cls, config, state, what=f"{path.name} transformer", dtype=dtype)}

    vae_config = main.config("vae") or shipped["vae"]
    if "vae" in detection.components:
        prefix = next(p for p in _VAE_PREFIXES if any(k.startswith(p) for k in main.shapes))
        raw = {key.removeprefix(prefix): value
               for key, value in main.tensors(lambda k: k.startswith(prefix)).items()}
        vae_state, where = convert_ldm_vae_checkpoint(raw, vae_config), path.name
    else:
        vae_file = _File(model_dir / SEPARATE_PARTS["vae"], device)
        vae_config = vae_file.config("own") or vae_config
        raw = {key.removeprefix("first_stage_model."): value
               for key, value in vae_file.tensors(lambda _k: True).items()}
        vae_state, where = convert_ldm_vae_checkpoint(raw, vae_config), SEPARATE_PARTS["vae"]
    parts["vae"] = _diffusers_model(AutoencoderKL, vae_config, vae_state, what=f"{where} VAE",
                                    dtype=dtype)

    encoder_device = "cpu" if offload else device
    for encoder, slot in encoder_slots(family).items():
        if encoder in detection.components:
            prefix = _IN_FILE[encoder]
            enc_state = {key.removeprefix(prefix): value for key, value in main.tensors(
                lambda k, p=prefix: k.startswith(p), encoder_device).items()}
            enc_config, where = main.config(slot) or shipped[slot], path.name
        else:
            part = _File(model_dir / SEPARATE_PARTS[encoder], encoder_device)
            enc_state = part.tensors(lambda _k: True)
            enc_config, where = part.config("own") or shipped[slot], SEPARATE_PARTS[encoder]
        parts[slot] = _text_model(encoder, slot, family, enc_config, enc_state,
                                  what=where, dtype=dtype)
        if encoder == "t5xxl":
            try:
                tokenizer = t5_tokenizer(model_dir / T5_TOKENIZER)
            except SpieceError as exc:
                raise FlowLoadError(str(exc)) from None
            check_t5(parts[slot], tokenizer, where=where)
        else:
            tokenizer = (build_clip_tokenizer(pad_token="!") if encoder == "openclip_g"
                         else build_clip_tokenizer())
        parts[_tokenizer_slot(slot)] = tokenizer

    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler_config = main.config("scheduler") or shipped["scheduler"]
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler.from_config(
        {k: v for k, v in scheduler_config.items() if not k.startswith("_")})
    return _place(pipeline_class(family)(**parts), device, offload, fp8, dtype)
