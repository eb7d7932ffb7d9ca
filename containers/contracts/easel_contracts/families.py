"""Model families: what each one is, and which family a checkpoint or diffusers folder holds.

Four parties read this: ``scripts/upload_model`` (it checks and labels what it uploads and writes
the manifest), the inference server (it picks configs, schedulers and defaults per family), the
training job (it labels its result) and the portal (it shows the family of each model).

Detection reads tensor *names* (and a few shapes) only, never a file name, so it works on a
safetensors header without loading weights, and it is size-independent: the tiny random-weight
models of the tests are told apart by the same rules as the real ones. An unknown or mixed file is
refused with :class:`FamilyError`, whose message says what was found.

Why not diffusers' ``infer_diffusers_model_type`` alone: it keys on full-size layer indices and
widths (``resblocks.9``, ``joint_blocks.37``, a 9216-wide modulation), so pruned or toy-size
models are misread; it answers ``v1`` for anything it does not know, so an unknown file would not
be refused; and it needs diffusers and torch, which the upload script and the portal do not
install. The inference tests check that both agree on the real families' marker keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class FamilyError(ValueError):
    """A checkpoint or folder is of no supported family (or mixes several); says what was found."""


class NoDenoiserError(FamilyError):
    """The file holds no denoiser at all (it may be a VAE, a text encoder, or no model)."""


class ModelFamily(StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl_refiner"
    SD35_MEDIUM = "sd35_medium"
    SD35_LARGE = "sd35_large"
    FLUX_DEV = "flux_dev"
    FLUX_SCHNELL = "flux_schnell"


TextEncoder = Literal["clip_l", "openclip_h", "openclip_g", "t5xxl"]
Prediction = Literal["epsilon", "v_prediction", "flow"]
Guidance = Literal["cfg", "distilled", "none"]


class FamilyFacts(BaseModel):
    """The per-family facts more than one component needs (defaults as the model makers give
    them: the model cards of each release)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: ModelFamily
    label: str
    resolution: int
    sampler: str
    steps: int
    guidance: float
    guidance_kind: Guidance
    prediction: Prediction
    latent_channels: int
    text_encoders: tuple[TextEncoder, ...]
    # parts that released single files usually leave out (they ship as separate files)
    separate_text_encoders: bool
    separate_vae: bool

    @property
    def needs_t5(self) -> bool:
        return "t5xxl" in self.text_encoders


FAMILIES: dict[ModelFamily, FamilyFacts] = {
    facts.family: facts
    for facts in (
        FamilyFacts(family=ModelFamily.SD1, label="SD1.x", resolution=512, sampler="Euler a",
                    steps=20, guidance=7.0, guidance_kind="cfg", prediction="epsilon",
                    latent_channels=4, text_encoders=("clip_l",),
                    separate_text_encoders=False, separate_vae=False),
        FamilyFacts(family=ModelFamily.SD2, label="SD2.x", resolution=768, sampler="Euler a",
                    steps=20, guidance=7.0, guidance_kind="cfg", prediction="v_prediction",
                    latent_channels=4, text_encoders=("openclip_h",),
                    separate_text_encoders=False, separate_vae=False),
        FamilyFacts(family=ModelFamily.SDXL, label="SDXL", resolution=1024, sampler="Euler a",
                    steps=30, guidance=7.0, guidance_kind="cfg", prediction="epsilon",
                    latent_channels=4, text_encoders=("clip_l", "openclip_g"),
                    separate_text_encoders=False, separate_vae=False),
        FamilyFacts(family=ModelFamily.SDXL_REFINER, label="SDXL refiner", resolution=1024,
                    sampler="Euler a", steps=30, guidance=7.0, guidance_kind="cfg",
                    prediction="epsilon", latent_channels=4, text_encoders=("openclip_g",),
                    separate_text_encoders=False, separate_vae=False),
        FamilyFacts(family=ModelFamily.SD35_MEDIUM, label="SD3.5 medium", resolution=1024,
                    sampler="Euler", steps=40, guidance=4.5, guidance_kind="cfg",
                    prediction="flow", latent_channels=16,
                    text_encoders=("clip_l", "openclip_g", "t5xxl"),
                    separate_text_encoders=True, separate_vae=False),
        FamilyFacts(family=ModelFamily.SD35_LARGE, label="SD3.5 large", resolution=1024,
                    sampler="Euler", steps=28, guidance=3.5, guidance_kind="cfg",
                    prediction="flow", latent_channels=16,
                    text_encoders=("clip_l", "openclip_g", "t5xxl"),
                    separate_text_encoders=True, separate_vae=False),
        FamilyFacts(family=ModelFamily.FLUX_DEV, label="FLUX.1 dev", resolution=1024,
                    sampler="Euler", steps=28, guidance=3.5, guidance_kind="distilled",
                    prediction="flow", latent_channels=16, text_encoders=("clip_l", "t5xxl"),
                    separate_text_encoders=True, separate_vae=True),
        FamilyFacts(family=ModelFamily.FLUX_SCHNELL, label="FLUX.1 schnell", resolution=1024,
                    sampler="Euler", steps=4, guidance=0.0, guidance_kind="none",
                    prediction="flow", latent_channels=16, text_encoders=("clip_l", "t5xxl"),
                    separate_text_encoders=True, separate_vae=True),
    )
}


def facts_for(family: ModelFamily | str) -> FamilyFacts:
    try:
        return FAMILIES[ModelFamily(family)]
    except ValueError:
        known = ", ".join(f.value for f in ModelFamily)
        raise FamilyError(f"unknown model family {family!r}; known: {known}") from None


SUPPORTED_TEXT = ", ".join(facts.label for facts in FAMILIES.values())

Component = Literal["denoiser", "vae", "clip_l", "openclip_h", "openclip_g", "t5xxl"]


class Detection(BaseModel):
    """What detection found: the family, the prediction type when the weights tell it (else
    None: the family default or a ``<name>.yaml`` decides), and which parts the file holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: ModelFamily
    prediction: Prediction | None = None
    inpainting: bool = False
    components: tuple[Component, ...] = ()

    @property
    def facts(self) -> FamilyFacts:
        return FAMILIES[self.family]


# --- single-file checkpoints (original / ComfyUI key layouts)

_DIT_PREFIX = "model.diffusion_model."
_LDM_UNET = "model.diffusion_model.input_blocks."
_LDM_UNET_PARTS = tuple(_DIT_PREFIX + part for part in (
    "input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out."))
_DUAL_ATTENTION = re.compile(r"^joint_blocks\.\d+\.x_block\.attn2\.")
_CROSS_ATTENTION_KEY = re.compile(r"^model\.diffusion_model\..*attn2\.to_k\.weight$")
# text encoder markers in the original layouts -> (what it is, in words)
_LDM_TEXT = {
    "cond_stage_model.transformer.": ("sd1", "an SD1.x CLIP-L text encoder"),
    "cond_stage_model.model.": ("sd2", "an SD2.x OpenCLIP-H text encoder"),
    "conditioner.embedders.1.model.": ("sdxl", "SDXL base's two text encoders"),
    "conditioner.embedders.0.model.": ("sdxl_refiner", "SDXL refiner's OpenCLIP-G encoder"),
}
_CONTEXT_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}
_SD3_TEXT = {
    "text_encoders.clip_l.": "clip_l",
    "text_encoders.clip_g.": "openclip_g",
    "text_encoders.t5xxl.": "t5xxl",
}
# FLUX.1 img_in input widths of the tool variants (64 = 16 latent channels x 2x2 patches)
_FLUX_VARIANTS = {384: "FLUX.1 Fill", 128: "FLUX.1 Depth/Canny"}
SD3_MEDIUM_WIDTH = 1536  # SD3 (3.0) medium: MMDiT without dual attention at this width


def _denoiser_key(key: str) -> str:
    return key[len(_DIT_PREFIX):] if key.startswith(_DIT_PREFIX) else key


def _prefix_summary(keys: Iterable[str], limit: int = 6) -> str:
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        head = ".".join(parts[:2]) if len(parts) > 2 else parts[0]
        counts[head] = counts.get(head, 0) + 1
    top = sorted(counts.items(), key=lambda item: -item[1])[:limit]
    return ", ".join(f"{head}.* ({count})" for head, count in top) or "no tensors"


def _has(keys: Sequence[str], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in keys)


def detect_checkpoint(shapes: Mapping[str, Sequence[int]], *, name: str = "the file") -> Detection:
    """The family of a single-file checkpoint from its tensor names (and a few shapes).

    ``shapes`` maps each tensor name to its shape (a safetensors header gives both). Raises
    :class:`FamilyError` for a file of no supported family or one that mixes families.
    """
    keys = list(shapes)
    bare = [_denoiser_key(key) for key in keys]
    denoisers = {
        "an SD UNet (model.diffusion_model.input_blocks.*)":
            any(key.startswith(_LDM_UNET_PARTS) for key in keys),
        "an SD3 MMDiT (joint_blocks.*)": _has(bare, "joint_blocks."),
        "a FLUX.1 transformer (double_blocks.*)": _has(bare, "double_blocks.")
        and not _has(bare, "single_stream_modulation."),
        "a FLUX.2 transformer (single_stream_modulation.*)":
            _has(bare, "single_stream_modulation."),
    }
    present = [what for what, found in denoisers.items() if found]
    if not present:
        raise NoDenoiserError(
            f"{name}: no denoiser of a supported family (supported: {SUPPORTED_TEXT}); its "
            f"tensors are {_prefix_summary(keys)}"
        )
    if len(present) > 1:
        raise FamilyError(f"{name}: mixes model families: it holds {' and '.join(present)}")
    vae = _has(keys, "first_stage_model.") or _has(keys, "vae.")
    if present[0].startswith("an SD UNet"):
        return _detect_ldm(keys, shapes, name=name, vae=vae)
    if present[0].startswith("an SD3"):
        return _detect_sd3(keys, bare, shapes, name=name, vae=vae)
    if present[0].startswith("a FLUX.1"):
        return _detect_flux(keys, bare, shapes, name=name, vae=vae)
    raise FamilyError(f"{name}: holds {present[0]}; FLUX.2 is not supported "
                      f"(supported: {SUPPORTED_TEXT})")


def _foreign_text(keys: Sequence[str], allowed: Iterable[str]) -> list[str]:
    allowed = set(allowed)
    words = {prefix: what for prefix, (_, what) in _LDM_TEXT.items()}
    words.update({prefix: f"an SD3-style {what} encoder" for prefix, what in _SD3_TEXT.items()})
    return [what for prefix, what in words.items() if prefix not in allowed and _has(keys, prefix)]


def _detect_ldm(keys: Sequence[str], shapes: Mapping[str, Sequence[int]], *, name: str,
                vae: bool) -> Detection:
    encoders = [prefix for prefix in _LDM_TEXT if _has(keys, prefix)]
    if len(encoders) > 1:
        found = " and ".join(_LDM_TEXT[prefix][1] for prefix in encoders)
        raise FamilyError(f"{name}: mixes model families: an SD UNet with {found}")
    sd3_text = [what for prefix, what in _SD3_TEXT.items() if _has(keys, prefix)]
    if sd3_text:
        raise FamilyError(f"{name}: mixes model families: an SD UNet with SD3-style text "
                          f"encoders ({', '.join(sd3_text)})")
    if encoders:
        kind = _LDM_TEXT[encoders[0]][0]
    else:  # a UNet-only file: the width of the text embedding its cross-attention reads
        widths = {shape[1] for key, shape in shapes.items()
                  if _CROSS_ATTENTION_KEY.match(key) and len(shape) == 2}
        kinds = {_CONTEXT_WIDTH.get(width) for width in widths}
        if len(kinds) != 1 or None in kinds:
            raise FamilyError(
                f"{name}: an SD UNet without text encoders whose cross-attention width "
                f"({', '.join(map(str, sorted(widths))) or 'none found'}) matches no family "
                "(768 SD1.x, 1024 SD2.x, 2048 SDXL, 1280 SDXL refiner)"
            )
        kind = kinds.pop()
    adm = _has(keys, "model.diffusion_model.label_emb.")
    if encoders and adm != kind.startswith("sdxl"):
        held = "has" if adm else "lacks"
        raise FamilyError(f"{name}: mixes model families: text encoders of "
                          f"{facts_for(kind).label} with a UNet that {held} SDXL's size "
                          "conditioning (label_emb)")
    conv_in = shapes.get(_LDM_UNET + "0.0.weight")
    inpainting = bool(conv_in) and len(conv_in) == 4 and conv_in[1] == 9
    prediction = "v_prediction" if any(k in shapes for k in ("v_pred", "edm_vpred.sigma_max")) \
        else None
    components: list[Component] = ["denoiser"]
    if vae:
        components.append("vae")
    components.extend({"sd1": ["clip_l"], "sd2": ["openclip_h"], "sdxl": ["clip_l", "openclip_g"],
                       "sdxl_refiner": ["openclip_g"]}[kind] if encoders else [])
    return Detection(family=ModelFamily(kind), prediction=prediction, inpainting=inpainting,
                     components=tuple(components))


def _sd3_text_components(keys: Sequence[str]) -> list[Component]:
    return [what for prefix, what in _SD3_TEXT.items() if _has(keys, prefix)]


def _detect_sd3(keys: Sequence[str], bare: Sequence[str], shapes: Mapping[str, Sequence[int]],
                *, name: str, vae: bool) -> Detection:
    foreign = _foreign_text(keys, _SD3_TEXT)
    if foreign:
        raise FamilyError(f"{name}: mixes model families: an SD3 MMDiT with {', '.join(foreign)}")
    if any(_DUAL_ATTENTION.match(key) for key in bare):
        family = ModelFamily.SD35_MEDIUM
    else:
        width = None
        for key, shape in shapes.items():
            if _denoiser_key(key) == "context_embedder.weight" and len(shape) == 2:
                width = shape[0]
        if width == SD3_MEDIUM_WIDTH:
            raise FamilyError(f"{name}: an SD3 (3.0) medium MMDiT (1536 wide, no dual attention); "
                              f"only SD3.5 medium and large are supported")
        family = ModelFamily.SD35_LARGE
    components: list[Component] = ["denoiser", *(["vae"] if vae else []),
                                   *_sd3_text_components(keys)]
    return Detection(family=family, prediction="flow", components=tuple(components))


def _detect_flux(keys: Sequence[str], bare: Sequence[str], shapes: Mapping[str, Sequence[int]],
                 *, name: str, vae: bool) -> Detection:
    foreign = _foreign_text(keys, ("text_encoders.clip_l.", "text_encoders.t5xxl."))
    if foreign:
        raise FamilyError(f"{name}: mixes model families: a FLUX.1 transformer with "
                          f"{', '.join(foreign)}")
    img_in = next((shape for key, shape in shapes.items()
                   if _denoiser_key(key) == "img_in.weight"), None)
    if img_in is not None and len(img_in) == 2 and img_in[1] in _FLUX_VARIANTS:
        raise FamilyError(f"{name}: a {_FLUX_VARIANTS[img_in[1]]} transformer (img_in takes "
                          f"{img_in[1]} channels); only FLUX.1 dev and schnell are supported")
    guided = _has(bare, "guidance_in.")
    family = ModelFamily.FLUX_DEV if guided else ModelFamily.FLUX_SCHNELL
    components: list[Component] = ["denoiser", *(["vae"] if vae else []),
                                   *_sd3_text_components(keys)]
    return Detection(family=family, prediction="flow", components=tuple(components))


# --- diffusers folders (model_index.json and component configs)

_PIPELINES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionInpaintPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "StableDiffusion3Img2ImgPipeline": "sd3",
    "FluxPipeline": "flux",
    "FluxImg2ImgPipeline": "flux",
}


def _component_config(folder: Path, component: str) -> dict[str, Any]:
    path = folder / component / "config.json"
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise FamilyError(f"{folder.name}: {component}/config.json is missing or unreadable "
                          f"({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise FamilyError(f"{folder.name}: {component}/config.json is not a JSON object")
    return data


def _listed(index: Mapping[str, Any], component: str) -> bool:
    entry = index.get(component)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None


def detect_diffusers_folder(folder: Path) -> Detection:
    """The family of a diffusers pipeline folder from ``model_index.json`` and the denoiser's
    ``config.json`` (never from the folder's name)."""
    index_path = folder / "model_index.json"
    try:
        index = json.loads(index_path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise FamilyError(f"{folder.name}: model_index.json is unreadable ({exc})") from None
    class_name = str(index.get("_class_name", "")) if isinstance(index, dict) else ""
    kind = _PIPELINES.get(class_name)
    if kind is None:
        raise FamilyError(f"{folder.name}: model_index.json names {class_name or 'no pipeline'!r}, "
                          f"which is not a supported family (supported: {SUPPORTED_TEXT})")
    prediction: Prediction | None = None
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        try:
            value = json.loads(scheduler.read_text("utf-8")).get("prediction_type")
        except (OSError, ValueError, AttributeError):
            value = None
        prediction = value if value in ("epsilon", "v_prediction") else None
    if kind in ("sd", "sdxl"):
        unet = _component_config(folder, "unet")
        inpainting = unet.get("in_channels") == 9
        if kind == "sd":
            family = ModelFamily.SD2 if unet.get("use_linear_projection") else ModelFamily.SD1
        elif _listed(index, "text_encoder"):
            family = ModelFamily.SDXL
        else:
            family = ModelFamily.SDXL_REFINER
        return Detection(family=family, prediction=prediction, inpainting=inpainting,
                         components=_folder_components(index, family))
    transformer = _component_config(folder, "transformer")
    if kind == "sd3":
        if transformer.get("dual_attention_layers"):
            family = ModelFamily.SD35_MEDIUM
        else:
            width = int(transformer.get("num_attention_heads", 0)) * int(
                transformer.get("attention_head_dim", 0))
            if width == SD3_MEDIUM_WIDTH:
                raise FamilyError(f"{folder.name}: an SD3 (3.0) medium pipeline; only SD3.5 "
                                  "medium and large are supported")
            family = ModelFamily.SD35_LARGE
    else:
        family = ModelFamily.FLUX_DEV if transformer.get("guidance_embeds") else \
            ModelFamily.FLUX_SCHNELL
    return Detection(family=family, prediction="flow",
                     components=_folder_components(index, family))


def _folder_components(index: Mapping[str, Any], family: ModelFamily) -> tuple[Component, ...]:
    """The parts a folder lists; text encoder slots in the family's order (``text_encoder``,
    ``text_encoder_2``, ``text_encoder_3``)."""
    parts: list[Component] = []
    if _listed(index, "unet") or _listed(index, "transformer"):
        parts.append("denoiser")
    if _listed(index, "vae"):
        parts.append("vae")
    encoders = FAMILIES[family].text_encoders
    slots = ("text_encoder", "text_encoder_2", "text_encoder_3")
    if family is ModelFamily.SDXL_REFINER:  # the refiner keeps only SDXL's second encoder
        slots = ("text_encoder_2",)
    parts.extend(encoder for slot, encoder in zip(slots, encoders, strict=False)
                 if _listed(index, slot))
    return tuple(parts)


# --- where the parts that single files leave out live (the A1111 model layout)

# SD3.5 and FLUX.1 single files usually hold only the denoiser (FLUX also lacks its VAE): their
# text encoders go into ``text_encoder/`` and FLUX's VAE into ``VAE/``, beside
# ``Stable-diffusion/``, under these names; the T5 encoder's SentencePiece tokenizer goes beside it.
SEPARATE_PARTS: dict[Component, str] = {
    "clip_l": "text_encoder/clip_l.safetensors",
    "openclip_g": "text_encoder/clip_g.safetensors",
    "t5xxl": "text_encoder/t5xxl.safetensors",
    "vae": "VAE/ae.safetensors",
}
T5_TOKENIZER = "text_encoder/spiece.model"


def missing_parts(detection: Detection, present: Iterable[str]) -> list[str]:
    """Layout paths a single-file checkpoint needs beside it and ``present`` (the model's
    layout paths) lacks: each part its family ships separately (SD3.5: text encoders; FLUX.1:
    text encoders and VAE) that the file itself does not hold, and the T5 tokenizer wherever a
    T5 encoder is needed."""
    have = set(present)
    facts = detection.facts
    needed: list[Component] = [*(facts.text_encoders if facts.separate_text_encoders else ()),
                               *(("vae",) if facts.separate_vae else ())]
    missing = [SEPARATE_PARTS[part] for part in needed
               if part not in detection.components and part in SEPARATE_PARTS
               and SEPARATE_PARTS[part] not in have]
    if facts.needs_t5 and T5_TOKENIZER not in have:
        missing.append(T5_TOKENIZER)
    return missing


# T5-XXL v1.1 as SD3.5 and FLUX.1 use it: 32,128 embedding rows for the 32,000 pieces of its
# SentencePiece model (the rest pad the table); a toy tokenizer trained for tests cannot drive it.
T5_REAL_VOCAB = 32128
T5_REAL_PIECES = 32000


def t5_tokenizer_problem(embedding_rows: int, pieces: int) -> str | None:
    """Why a T5 encoder with ``embedding_rows`` token embeddings cannot use a tokenizer of
    ``pieces`` pieces, or None when it can."""
    if pieces > embedding_rows:
        return (f"{T5_TOKENIZER} has {pieces} pieces but the T5 encoder embeds only "
                f"{embedding_rows} tokens: they do not belong together")
    if embedding_rows == T5_REAL_VOCAB and pieces != T5_REAL_PIECES:
        return (f"the T5 encoder is real-size ({T5_REAL_VOCAB} tokens) but {T5_TOKENIZER} has "
                f"{pieces} pieces, not T5's {T5_REAL_PIECES}: ship T5's own spiece.model")
    return None
