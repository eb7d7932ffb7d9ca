"""Find and load Stable Diffusion checkpoints from an A1111-layout model folder, offline.

Single files (``.safetensors``; ``.ckpt`` only through a weights-only load) go through diffusers'
single-file loader with a local config folder written from, in order of precedence: the exact
component configs embedded by Easel's builder, the ``<name>.yaml`` beside the checkpoint, or the
shipped configs of the architecture detected from the weights (an SDXL refiner: the shipped
refiner UNet with SDXL's VAE). Diffusers folders load with ``local_files_only``. Nothing is
fetched from a model hub.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from easel_contracts.families import (
    FamilyError,
    ModelFamily,
    detect_checkpoint,
    detect_diffusers_folder,
    facts_for,
)
from safetensors import safe_open

from . import checkpoint_keys
from .archconfigs import (
    full_components,
    refiner_unet,
    text_encoder_names,
    tokenizer_pad_tokens,
)
from .builder import ARCH_METADATA_KEY, COMPONENTS_METADATA_KEY
from .flow_loader import FLOW_FAMILIES, FlowLoadError, load_flow_folder, load_flow_single_file
from .original_config import OriginalConfigError, arch_of_original, components_from_original
from .tokenizer import build_clip_tokenizer

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
PIPELINE_CLASSES = {"sdxl": StableDiffusionXLPipeline}


class ModelLoadError(RuntimeError):
    """A checkpoint cannot be loaded; the message says why."""


def find_checkpoints(model_dir: str | Path) -> dict[str, Path]:
    """Checkpoints in ``<model_dir>/Stable-diffusion``: name -> file or diffusers folder.

    Names are the file name without suffix (or the folder name), sorted. Only the folder's top
    level is listed, so every name is a plain name (requests may not carry path separators).
    """
    root = Path(model_dir) / "Stable-diffusion"
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for path in sorted(root.iterdir()):
        if path.is_dir() and (path / "model_index.json").is_file():
            found[path.name] = path
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def _read_ckpt(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler refuses anything but tensors
        raise ModelLoadError(f"{path.name} is not a weights-only checkpoint: {exc}") from exc
    while isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name} does not hold a state dict")
    return data


class _CheckpointView:
    """Key names, a few shapes and metadata of a single-file checkpoint without loading it all."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metadata: dict[str, str] = {}
        self._ckpt: dict[str, torch.Tensor] | None = None
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as handle:
                    self.metadata = dict(handle.metadata() or {})
                    self.keys = set(handle.keys())
                    self._shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in self.keys}
            except Exception as exc:
                raise ModelLoadError(f"{path.name} is not a readable safetensors file: {exc}") from exc
        else:
            self._ckpt = _read_ckpt(path)
            self.keys = set(self._ckpt)
            self._shapes = {key: tuple(value.shape) for key, value in self._ckpt.items()
                            if isinstance(value, torch.Tensor)}

    def shape(self, key: str) -> tuple[int, ...] | None:
        return self._shapes.get(key)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return len({match.group(1) for key in self.keys if (match := regex.match(key))})


# the families this loader builds pipelines for, and the shipped config folder of each
SERVED_ARCHES = {ModelFamily.SD1: "sd15", ModelFamily.SD2: "sd2", ModelFamily.SDXL: "sdxl"}


def _served_arch(family: ModelFamily, name: str) -> str:
    arch = SERVED_ARCHES.get(family)
    if arch is None:
        served = ", ".join(facts_for(f).label
                           for f in (*SERVED_ARCHES, ModelFamily.SDXL_REFINER, *FLOW_FAMILIES))
        raise ModelLoadError(f"{name} is a {facts_for(family).label} model; this server loads "
                             f"{served} models only")
    return arch


def _detected_family(view: _CheckpointView) -> ModelFamily | None:
    try:
        return detect_checkpoint(view.shapes(), name=view.path.name).family
    except FamilyError:
        return None  # detect_arch says what is wrong


def _flow_family(view: _CheckpointView) -> ModelFamily | None:
    """The flow-matching family (SD3.5, FLUX.1) of a checkpoint, or None for any other."""
    family = _detected_family(view)
    return family if family in FLOW_FAMILIES else None


def detect_arch(view: _CheckpointView) -> str:
    """The shipped config folder for a checkpoint's family (detected from its tensor names)."""
    try:
        detection = detect_checkpoint(view.shapes(), name=view.path.name)
    except FamilyError as exc:
        raise ModelLoadError(str(exc)) from None
    return _served_arch(detection.family, view.path.name)


def _text_encoder_from_shapes(view: _CheckpointView, base: dict[str, Any], prefix: str,
                              *, open_clip: bool) -> dict[str, Any]:
    config = dict(base)
    if open_clip:
        token = view.shape(prefix + "token_embedding.weight")
        positions = view.shape(prefix + "positional_embedding")
        layers = view.count(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
        fc1 = view.shape(prefix + "transformer.resblocks.0.mlp.c_fc.weight")
        projection = view.shape(prefix + "text_projection")
    else:
        inner = prefix + "text_model."
        token = view.shape(inner + "embeddings.token_embedding.weight")
        positions = view.shape(inner + "embeddings.position_embedding.weight")
        layers = view.count(re.escape(inner) + r"encoder\.layers\.(\d+)\.")
        fc1 = view.shape(inner + "encoder.layers.0.mlp.fc1.weight")
        projection = None
    if token is None or fc1 is None or positions is None:
        raise ModelLoadError(f"{view.path.name} has no complete text encoder under {prefix!r}")
    hidden = int(token[1])
    if open_clip and base["num_hidden_layers"] == layers - 1 and hidden == base["hidden_size"]:
        layers -= 1  # SD2 uses the penultimate layer; diffusers keeps 23 of the 24
    config.update(
        vocab_size=int(token[0]),
        hidden_size=hidden,
        max_position_embeddings=int(positions[0]),
        num_hidden_layers=layers,
        intermediate_size=int(fc1[0]),
        num_attention_heads=max(1, hidden // 64),
    )
    if projection is not None:
        config["projection_dim"] = int(projection[1])
    return config


def resolve_components(path: Path, view: _CheckpointView) -> tuple[str, dict[str, dict[str, Any]]]:
    """Arch and diffusers component configs for a single-file checkpoint."""
    embedded = view.metadata.get(COMPONENTS_METADATA_KEY)
    if embedded:
        arch = view.metadata.get(ARCH_METADATA_KEY) or detect_arch(view)
        configs = json.loads(embedded)
        base = full_components(arch)
        return arch, dict(base, **configs)
    yaml_path = path.with_suffix(".yaml")
    if yaml_path.is_file():
        try:
            original = yaml.safe_load(yaml_path.read_text("utf-8"))
            arch = arch_of_original(original)
            configs = components_from_original(original, full_components(arch))
        except (yaml.YAMLError, OriginalConfigError) as exc:
            raise ModelLoadError(f"{yaml_path.name} is not a usable original config: {exc}") from exc
    else:
        arch = detect_arch(view)
        configs = full_components(arch)
        in_conv = view.shape(checkpoint_keys.UNET_PREFIX + "input_blocks.0.0.weight")
        if in_conv is not None:
            configs["unet"] = dict(configs["unet"], in_channels=int(in_conv[1]))
    if arch == "sd15":
        configs["text_encoder"] = _text_encoder_from_shapes(
            view, configs["text_encoder"], checkpoint_keys.SD1_TEXT_PREFIX, open_clip=False
        )
    elif arch == "sd2":
        configs["text_encoder"] = _text_encoder_from_shapes(
            view, configs["text_encoder"], checkpoint_keys.SD2_TEXT_PREFIX, open_clip=True
        )
    else:
        first, second = checkpoint_keys.SDXL_TEXT_PREFIXES
        configs["text_encoder"] = _text_encoder_from_shapes(
            view, configs["text_encoder"], first, open_clip=False
        )
        configs["text_encoder_2"] = _text_encoder_from_shapes(
            view, configs["text_encoder_2"], second, open_clip=True
        )
    return arch, configs


def _write_config_folder(folder: Path, arch: str, configs: dict[str, dict[str, Any]]) -> None:
    index = dict(full_components(arch)["model_index"])
    (folder / "model_index.json").write_text(json.dumps(index), "utf-8")
    for name in ("unet", "vae", *text_encoder_names(arch)):
        (folder / name).mkdir()
        config = dict(configs[name])
        if name.startswith("text_encoder"):
            config["architectures"] = [
                "CLIPTextModelWithProjection" if name == "text_encoder_2" else "CLIPTextModel"
            ]
            config["model_type"] = "clip_text_model"
        (folder / name / "config.json").write_text(json.dumps(config), "utf-8")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(configs["scheduler"]), "utf-8"
    )


def _scheduler_from(configs: dict[str, dict[str, Any]]) -> Any:
    from diffusers import EulerDiscreteScheduler

    fields = {k: v for k, v in configs["scheduler"].items() if not k.startswith("_")}
    return EulerDiscreteScheduler.from_config(fields)


# the refiner pipeline's components: no first text encoder; the aesthetic score as a condition
_REFINER_INDEX = {
    "_class_name": "StableDiffusionXLImg2ImgPipeline", "force_zeros_for_empty_prompt": False,
    "requires_aesthetics_score": True, "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": [None, None], "tokenizer": [None, None],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def refiner_components(view: _CheckpointView) -> dict[str, dict[str, Any]]:
    """Component configs of an SDXL refiner single file: those Easel's builder embedded, else the
    shipped refiner UNet and SDXL's VAE and scheduler, with the OpenCLIP-G read from the file's
    shapes."""
    embedded = view.metadata.get(COMPONENTS_METADATA_KEY)
    if embedded:
        return json.loads(embedded)
    sdxl = full_components("sdxl")
    return {"unet": refiner_unet(), "vae": sdxl["vae"], "scheduler": sdxl["scheduler"],
            "text_encoder_2": _text_encoder_from_shapes(
                view, sdxl["text_encoder_2"], checkpoint_keys.REFINER_TEXT_PREFIX,
                open_clip=True)}


def _load_refiner_single_file(view: _CheckpointView, *, device: str, dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    configs = refiner_components(view)
    with tempfile.TemporaryDirectory(prefix="easel-config-") as name:
        folder = Path(name)
        (folder / "model_index.json").write_text(json.dumps(_REFINER_INDEX), "utf-8")
        for component in ("unet", "vae", "text_encoder_2"):
            config = dict(configs[component])
            if component == "text_encoder_2":
                config.update(architectures=["CLIPTextModelWithProjection"],
                              model_type="clip_text_model")
            (folder / component).mkdir()
            (folder / component / "config.json").write_text(json.dumps(config), "utf-8")
        (folder / "scheduler").mkdir()
        (folder / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(configs["scheduler"]), "utf-8")
        pad = tokenizer_pad_tokens("sdxl")["tokenizer_2"]
        try:
            pipe = StableDiffusionXLImg2ImgPipeline.from_single_file(
                str(view.path), config=str(folder), local_files_only=True, torch_dtype=dtype,
                scheduler=_scheduler_from(configs), text_encoder=None, tokenizer=None,
                tokenizer_2=build_clip_tokenizer(pad_token=pad))
        except Exception as exc:
            raise ModelLoadError(f"{view.path.name} could not be loaded as an SDXL refiner: "
                                 f"{exc}") from exc
    return pipe.to(device)


def load_single_file(path: str | Path, *, device: str = "cpu",
                     dtype: torch.dtype = torch.float32, offload: bool = False,
                     fp8: bool = False) -> Any:
    path = Path(path)
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ModelLoadError(f"{path.name}: checkpoints must be .safetensors or .ckpt")
    view = _CheckpointView(path)
    if view.path.suffix == ".safetensors" and _flow_family(view) is not None:
        try:
            return load_flow_single_file(path, model_dir=path.parent.parent, device=device,
                                         dtype=dtype, offload=offload, fp8=fp8)
        except FlowLoadError as exc:
            raise ModelLoadError(str(exc)) from None
    if _detected_family(view) is ModelFamily.SDXL_REFINER:
        return _load_refiner_single_file(view, device=device, dtype=dtype)
    arch, configs = resolve_components(path, view)
    pipeline_class = PIPELINE_CLASSES.get(arch, StableDiffusionPipeline)
    tokenizers = {
        name: build_clip_tokenizer(pad_token=pad) for name, pad in tokenizer_pad_tokens(arch).items()
    }
    extra: dict[str, Any] = {}
    if arch != "sdxl":
        extra.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with tempfile.TemporaryDirectory(prefix="easel-config-") as folder:
        _write_config_folder(Path(folder), arch, configs)
        try:
            pipe = pipeline_class.from_single_file(
                str(path),
                config=folder,
                local_files_only=True,
                torch_dtype=dtype,
                scheduler=_scheduler_from(configs),
                **tokenizers,
                **extra,
            )
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{path.name} could not be loaded as {arch}: {exc}") from exc
    return pipe.to(device)


def load_diffusers_folder(path: str | Path, *, device: str = "cpu",
                          dtype: torch.dtype = torch.float32, offload: bool = False,
                          fp8: bool = False) -> Any:
    path = Path(path)
    try:
        family = detect_diffusers_folder(path).family
    except FamilyError as exc:
        raise ModelLoadError(str(exc)) from None
    if family in FLOW_FAMILIES:
        try:
            return load_flow_folder(path, family, device=device, dtype=dtype, offload=offload,
                                    fp8=fp8)
        except FlowLoadError as exc:
            raise ModelLoadError(str(exc)) from None
    if family is ModelFamily.SDXL_REFINER:
        from diffusers import StableDiffusionXLImg2ImgPipeline

        try:
            pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
                str(path), dtype=dtype, local_files_only=True, use_safetensors=None)
        except Exception as exc:
            raise ModelLoadError(f"{path.name} could not be loaded as an SDXL refiner: "
                                 f"{exc}") from exc
        return pipe.to(device)
    arch = _served_arch(family, path.name)
    pipeline_class = PIPELINE_CLASSES.get(arch, StableDiffusionPipeline)
    extra: dict[str, Any] = {}
    if pipeline_class is StableDiffusionPipeline:
        extra.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        pipe = pipeline_class.from_pretrained(
            str(path), torch_dtype=dtype, local_files_only=True, use_safetensors=None, **extra
        )
    except Exception as exc:
        raise ModelLoadError(f"{path.name} could not be loaded as a diffusers folder: {exc}") from exc
    return pipe.to(device)


def load_vae(path: str | Path, *, base_config: dict[str, Any], device: str = "cpu",
             dtype: torch.dtype = torch.float32) -> Any:
    """A VAE from ``VAE/``: a single file (ldm keys, with or without ``first_stage_model.``)
    shaped like ``base_config`` (the checkpoint's own VAE), or a diffusers folder."""
    from diffusers import AutoencoderKL

    path = Path(path)
    try:
        if path.is_dir():
            vae = AutoencoderKL.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        else:
            with tempfile.TemporaryDirectory(prefix="easel-vae-") as folder:
                config = {k: v for k, v in base_config.items() if not k.startswith("_")}
                config["_class_name"] = "AutoencoderKL"
                (Path(folder) / "config.json").write_text(json.dumps(config), "utf-8")
                vae = AutoencoderKL.from_single_file(
                    str(path), config=folder, local_files_only=True, torch_dtype=dtype
                )
    except Exception as exc:
        raise ModelLoadError(f"VAE {path.name} could not be loaded: {exc}") from exc
    return vae.to(device).eval()


def controlnet_config_for(unet_config: dict[str, Any]) -> dict[str, Any]:
    """The ControlNet config matching a UNet (what ``ControlNetModel.from_unet`` would use)."""
    import inspect

    from diffusers import ControlNetModel

    accepted = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    config = {k: v for k, v in unet_config.items() if k in accepted and not k.startswith("_")}
    config["_class_name"] = "ControlNetModel"
    return config


def load_controlnet(path: str | Path, *, unet_config: dict[str, Any], device: str = "cpu",
                    dtype: torch.dtype = torch.float32) -> Any:
    """A ControlNet from ``ControlNet/``: a diffusers folder, or a single file in the original
    layout (``.safetensors``; ``.pth``/``.ckpt`` weights-only) shaped like the base UNet."""
    from diffusers import ControlNetModel

    path = Path(path)
    try:
        if path.is_dir():
            model = ControlNetModel.from_pretrained(
                str(path), torch_dtype=dtype, local_files_only=True
            )
        else:
            if path.suffix in (".pth", ".ckpt"):
                _read_ckpt(path)  # refuse anything but tensors before diffusers reads it
            with tempfile.TemporaryDirectory(prefix="easel-controlnet-") as folder:
                config = controlnet_config_for(unet_config)
                (Path(folder) / "config.json").write_text(json.dumps(config), "utf-8")
                model = ControlNetModel.from_single_file(
                    str(path), config=folder, local_files_only=True, torch_dtype=dtype
                )
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"ControlNet {path.name} could not be loaded: {exc}") from exc
    return model.to(device).eval()


def load_pipeline(path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                  offload: bool = False, fp8: bool = False) -> Any:
    """A diffusers pipeline from a single-file checkpoint or a diffusers folder, offline;
    ``offload`` keeps SD3.5 / FLUX.1 text encoders in host memory (``offload_text_encoders``);
    ``fp8`` stores their transformer's weights in float8 (``flow_loader.store_fp8``)."""
    path = Path(path)
    if path.is_dir():
        return load_diffusers_folder(path, device=device, dtype=dtype, offload=offload, fp8=fp8)
    if not path.is_file():
        raise ModelLoadError(f"{path.name} does not exist")
    return load_single_file(path, device=device, dtype=dtype, offload=offload, fp8=fp8)


def flow_family_of(path: str | Path) -> ModelFamily | None:
    """SD3.5 / FLUX.1 family of a checkpoint file or folder (read from its header or
    ``model_index.json``, nothing loaded), or None for any other or an unreadable one. Read
    once per version of the file (its modification time): the samplers listing asks for every
    checkpoint of the endpoint on each call."""
    path = Path(path)
    index = path / "model_index.json"
    try:
        version = (index if index.is_file() else path).stat().st_mtime_ns
    except OSError:
        return None
    return _flow_family_read(str(path), version)


@functools.lru_cache(maxsize=256)
def _flow_family_read(where: str, _version: int) -> ModelFamily | None:
    path = Path(where)
    try:
        if path.is_dir():
            family = detect_diffusers_folder(path).family
        else:
            family = _flow_family(_CheckpointView(path)) if path.suffix == ".safetensors" \
                else None
    except (FamilyError, ModelLoadError):
        return None
    return family if family in FLOW_FAMILIES else None
