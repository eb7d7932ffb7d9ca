"""``<lora:name:weight>`` prompts: find LoRA files, fuse them into the weights, restore exactly.

Fusing writes ``W + sum(weight * delta)`` into the affected weights, so generation time does not
grow with the number of LoRAs. The original tensors of every affected weight are kept (copies,
not deltas) and copied back on removal, so the base model is restored bit for bit.

A transformer stored in FP8 (``EASEL_FP8_WEIGHTS``) takes no LoRA: a delta fused into float8
(3 mantissa bits) would mostly round away, so such a LoRA is refused with what to do instead.
Text-encoder-only LoRAs still fuse (the text encoders keep their serving dtype).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from easel_contracts.invocations import Lora, check_name
from easel_contracts.s3uri import S3Uri
from safetensors import safe_open

from .errors import BadRequest, NotFound
from .lora_format import DENOISERS, LoraFormatError, LoraPatch, ModuleIndex, parse_lora

LORA_TAG = re.compile(r"<lora:([^:>]*)((?::[^:>]*){0,2})>")
MAX_WEIGHT = 10.0
LORA_SUFFIX = ".safetensors"
logger = logging.getLogger("easel.inference")


@dataclass(frozen=True)
class LoraUse:
    name: str
    text_weight: float
    unet_weight: float


def _weight(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise BadRequest(f"LoRA {name!r} has a weight that is not a number: {text!r}",
                         field="prompt") from exc
    if not math.isfinite(value) or abs(value) > MAX_WEIGHT:
        raise BadRequest(f"LoRA {name!r} weight must be finite and within ±{MAX_WEIGHT}",
                         field="prompt")
    return value


def parse_lora_tags(prompt: str) -> tuple[str, list[LoraUse]]:
    """The prompt without its LoRA tags, and the LoRAs it asks for (A1111 syntax).

    ``<lora:name>`` (weight 1), ``<lora:name:w>``, ``<lora:name:te_w:unet_w>``.
    """
    uses: list[LoraUse] = []

    def take(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        try:
            check_name(name, what="LoRA name")
        except ValueError as exc:
            raise BadRequest(f"{exc}: {name!r}", field="prompt") from exc
        weights = [part for part in match.group(2).split(":")[1:]]
        text_weight = _weight(weights[0], name) if weights else 1.0
        unet_weight = _weight(weights[1], name) if len(weights) > 1 else text_weight
        uses.append(LoraUse(name, text_weight, unet_weight))
        return ""

    cleaned = LORA_TAG.sub(take, prompt)
    return re.sub(r"[ \t]{2,}", " ", cleaned).strip(), uses


class LoraLibrary:
    """LoRA files from the model's ``Lora/`` folder or, on demand, from an S3 prefix."""

    def __init__(self, lora_dir: Path, *, s3_uri: str | None = None, cache_dir: Path | None = None,
                 s3_client: Any = None, memory_items: int = 16) -> None:
        self.lora_dir = lora_dir
        self.s3_uri = s3_uri
        self.cache_dir = cache_dir
        self._s3 = s3_client
        self._lock = threading.Lock()
        self._memory: OrderedDict[str, tuple[dict[str, torch.Tensor], dict[str, str]]] = (
            OrderedDict()
        )
        self._memory_items = memory_items

    def local_names(self) -> list[str]:
        if not self.lora_dir.is_dir():
            return []
        return sorted(p.stem for p in self.lora_dir.glob("*" + LORA_SUFFIX) if p.is_file())

    def library_names(self) -> list[str]:
        """LoRAs in the S3 library prefix (e.g. published from a training job); [] if none or
        S3 cannot be read (the listing is advisory; generation fetches on demand)."""
        if not self.s3_uri:
            return []
        import botocore.exceptions

        if self._s3 is None:
            import boto3

            self._s3 = boto3.client("s3")
        library = S3Uri.parse(self.s3_uri)
        bucket, prefix = library.bucket, library.prefix
        names = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    rest = item["Key"][len(prefix) :]
                    if "/" not in rest and rest.endswith(LORA_SUFFIX):
                        names.append(rest[: -len(LORA_SUFFIX)])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            logger.warning("cannot list the LoRA library %s: %s", self.s3_uri, exc)
            return []
        return sorted(names)

    def listing(self) -> list[Lora]:
        """A1111's LoRA listing; each ``path`` says where the file is without a server path:
        ``Lora/<name>.safetensors`` in the model folder, or its key in the library bucket."""
        local = self.local_names()
        entries = [
            Lora(name=name, alias=name, path=f"{self.lora_dir.name}/{name}{LORA_SUFFIX}")
            for name in local
        ]
        entries += [
            Lora(name=name, alias=name, path=self._s3_location(name)[1])
            for name in self.library_names()
            if name not in local
        ]
        return entries

    def _s3_location(self, name: str) -> tuple[str, str]:
        assert self.s3_uri is not None
        location = S3Uri.parse(self.s3_uri).join(f"{name}{LORA_SUFFIX}")
        return location.bucket, location.key

    def _fetch_from_s3(self, name: str) -> Path | None:
        if not self.s3_uri or self.cache_dir is None:
            return None
        import botocore.exceptions

        if self._s3 is None:
            import boto3

            self._s3 = boto3.client("s3")
        bucket, key = self._s3_location(name)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        target = self.cache_dir / f"{name}{LORA_SUFFIX}"
        partial = target.with_suffix(".part")
        try:
            self._s3.download_file(bucket, key, str(partial))
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        partial.replace(target)
        return target

    def path_of(self, name: str) -> Path:
        check_name(name, what="LoRA name")
        local = self.lora_dir / f"{name}{LORA_SUFFIX}"
        if local.is_file():
            return local
        if self.cache_dir is not None:
            cached = self.cache_dir / f"{name}{LORA_SUFFIX}"
            if cached.is_file():
                return cached
        fetched = self._fetch_from_s3(name)
        if fetched is not None:
            return fetched
        raise NotFound(f"LoRA {name!r} not found in Lora/ or the LoRA library", field="prompt")

    def load(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        with self._lock:
            if name in self._memory:
                self._memory.move_to_end(name)
                return self._memory[name]
        path = self.path_of(name)
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except Exception as exc:
            raise BadRequest(f"LoRA {name!r} is not a readable safetensors file",
                             field="prompt") from exc
        with self._lock:
            self._memory[name] = (state, metadata)
            while len(self._memory) > self._memory_items:
                self._memory.popitem(last=False)
        return state, metadata


# GPU memory a fuse leaves free for generating (activations, the VAE decode, the allocator's
# slack): an original that would eat into it is kept in host memory instead
GENERATION_RESERVE_BYTES = 4 * 1024**3


def gpu_room(device: torch.device) -> int:
    """Bytes a new tensor can take on ``device``: the driver's free memory plus what torch's
    caching allocator holds unused."""
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def keeps_on_host(weight: torch.Tensor, room: Any) -> bool:
    """Whether the original of ``weight`` goes to host memory: on a GPU, when a copy there would
    leave less than GENERATION_RESERVE_BYTES free (``room(device)``: bytes free there). A LoRA on
    every linear of FLUX.1 keeps ~23 GB of bf16 originals: on a 48 GB card beside the 34 GB
    model they cannot all stay on the GPU."""
    if not weight.is_cuda:
        return False
    needed = weight.numel() * weight.element_size()
    return room(weight.device) - needed < GENERATION_RESERVE_BYTES


class LoraFuser:
    """Fuses a set of LoRAs into one pipeline's weights and restores the originals."""

    def __init__(self, pipe: Any, *, room: Any = gpu_room) -> None:
        self.pipe = pipe
        self.index = ModuleIndex(pipe)
        self._originals: dict[tuple[str, str], torch.Tensor] = {}
        self.active: tuple[LoraUse, ...] = ()
        self._parsed: dict[str, list[LoraPatch]] = {}
        self._room = room  # bytes free on a CUDA device (a parameter for tests)
        self.host_originals = 0  # originals of the active set kept in host memory

    def _patches(self, name: str, library: LoraLibrary) -> list[LoraPatch]:
        if name not in self._parsed:
            state, metadata = library.load(name)
            try:
                self._parsed[name] = parse_lora(state, self.index, metadata=metadata, name=name)
            except LoraFormatError as exc:
                raise BadRequest(str(exc), field="prompt") from exc
        return self._parsed[name]

    def apply(self, uses: list[LoraUse], library: LoraLibrary) -> None:
        """Make exactly ``uses`` active (restoring first if the set changes).

        Every patch of the set is checked first (FP8 weights, shapes), so a bad LoRA leaves the
        model as it was. Then one module at a time: its summed update is computed on the
        weight's device, fused in place, and freed before the next module, so the extra memory
        is the kept originals plus one module's update. The originals live on the weight's
        device too (a LoRA on every linear of FLUX.1 keeps ~24 GB of bf16 originals on the
        GPU) while the GPU has room for them beside GENERATION_RESERVE_BYTES, and in host memory
        from there on. A fuse that fails part-way (out of memory, say) restores what it fused, so
        the model is never left half-changed."""
        wanted = tuple(uses)
        if wanted == self.active:
            return
        plan = self._plan(wanted, library)
        self.restore()
        try:
            with torch.no_grad():
                for key, terms in plan.items():
                    self._fuse(key, terms)
        except torch.OutOfMemoryError as exc:
            self.restore()
            raise BadRequest(
                f"the LoRA set {', '.join(use.name for use in wanted)} did not fit in the GPU's "
                "memory beside the model; use fewer or smaller LoRAs, or deploy on an instance "
                "type with more GPU memory", field="prompt") from exc
        except BaseException:
            self.restore()
            raise
        self.active = wanted
        if self.host_originals:
            logger.info("LoRA set %s: %d originals kept in host memory (GPU memory short)",
                     [use.name for use in wanted], self.host_originals)

    def _plan(self, uses: tuple[LoraUse, ...], library: LoraLibrary,
              ) -> dict[tuple[str, str], list[tuple[LoraPatch, float]]]:
        """Each module's (patch, multiplier) terms in the order of the set, all checked."""
        plan: dict[tuple[str, str], list[tuple[LoraPatch, float]]] = {}
        for use in uses:
            for patch in self._patches(use.name, library):
                multiplier = (use.unet_weight if patch.component in DENOISERS
                              else use.text_weight)
                if multiplier == 0:
                    continue
                key = (patch.component, patch.module)
                weight = self.index.modules[key].weight
                if weight.dtype == torch.float8_e4m3fn:
                    raise BadRequest(
                        f"LoRA {use.name!r} changes the {patch.component}, whose weights this "
                        "server stores in FP8 (EASEL_FP8_WEIGHTS), which a LoRA cannot be "
                        "fused into; to use it, redeploy without FP8 weights (untick *FP8 "
                        "weights* in the portal's deploy form, or EASEL_FP8_WEIGHTS=off) on an "
                        "instance type the model fits in 16-bit", field="prompt")
                try:
                    patch.check(weight.shape)
                except LoraFormatError as exc:
                    raise BadRequest(f"LoRA {use.name!r} does not fit the loaded model: {exc} "
                                     "(is it made for another base model?)",
                                     field="prompt") from exc
                plan.setdefault(key, []).append((patch, multiplier))
        return plan

    def _fuse(self, key: tuple[str, str], terms: list[tuple[LoraPatch, float]]) -> None:
        """``W + sum(multiplier * delta)`` for one module, in place (CUDA-graph pointers stay
        valid); the original is kept for :meth:`restore`. The update dies with this call."""
        weight = self.index.modules[key].weight
        (first, first_multiplier), *rest = terms
        total = first.delta(weight.shape, device=weight.device).mul_(first_multiplier)
        for patch, multiplier in rest:  # summed in the order of the set
            total.add_(patch.delta(weight.shape, device=weight.device).mul_(multiplier))
        if keeps_on_host(weight, self._room):
            self._originals[key] = weight.detach().to("cpu", copy=True)
            self.host_originals += 1
        else:
            self._originals[key] = weight.detach().clone()
        weight.copy_(total.add_(weight.detach()).to(weight.dtype))

    def restore(self) -> None:
        """Copy the kept original tensors back: the base weights, bit for bit."""
        with torch.no_grad():
            for key, original in self._originals.items():
                self.index.modules[key].weight.copy_(original)
        self._originals.clear()
        self.host_originals = 0
        self.active = ()
