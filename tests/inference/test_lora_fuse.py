"""Fusing a LoRA set (tiny SD1.5, CPU): every patch is checked before any weight changes, then
the modules are fused one at a time, each update computed on its weight's device and freed
before the next module (issue 16/17: a full-size FLUX.1 LoRA fused on the CPU, all at once)."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch
from inference_fakes import two_lora_library
from safetensors.torch import save_file

from easel_inference import lora as lora_module
from easel_inference.builder import build_pipeline
from easel_inference.errors import BadRequest
from easel_inference.lora import LoraFuser, LoraLibrary, LoraUse
from easel_inference.lora_builder import random_kohya_lora
from easel_inference.lora_format import LoraFormatError, LoraPatch, ModuleIndex, parse_lora

BOTH = [LoraUse("kohya", 1.0, 1.0), LoraUse("peft", 1.0, 1.0)]  # both on the UNet's attention


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline(arch="sd15", seed=12)


@pytest.fixture()
def library(tmp_path: Path, pipe) -> LoraLibrary:
    return two_lora_library(pipe, tmp_path)


def _weights(pipe) -> dict[str, torch.Tensor]:
    return {f"{component}.{k}": v.clone()
            for component in ("unet", "text_encoder")
            for k, v in getattr(pipe, component).state_dict().items()}


def _same(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _mismatched(pipe, folder: Path) -> tuple[LoraLibrary, str]:
    """A LoRA whose LAST patch's down matrix has one column too many; the module it targets."""
    state = random_kohya_lora(pipe, seed=4)
    last = [key for key in state if key.endswith(".lora_down.weight")][-1]
    state[last] = torch.randn(state[last].shape[0], state[last].shape[1] + 1)
    patch = parse_lora(state, ModuleIndex(pipe))[-1]
    save_file(state, str(folder / "bad.safetensors"))
    return LoraLibrary(folder), f"{patch.component}.{patch.module}"


def test_each_update_is_computed_on_the_device_of_its_weight(pipe, library, monkeypatch):
    calls: list[tuple[tuple[str, str], object]] = []
    delta = LoraPatch.delta

    def recording(self, shape, *, device=None):
        calls.append(((self.component, self.module), device))
        return delta(self, shape, device=device)

    monkeypatch.setattr(LoraPatch, "delta", recording)
    fuser = LoraFuser(pipe)
    fuser.apply(BOTH, library)
    fuser.restore()
    assert calls
    assert all(device == fuser.index.modules[key].weight.device for key, device in calls)


def test_delta_multiplies_the_factors_on_the_device_it_is_given():
    patch = LoraPatch("unet", "m", torch.randn(2, 8), torch.randn(6, 2), 0.5)
    shape = torch.Size([6, 8])
    on_meta = patch.delta(shape, device="meta")  # factors stay on the CPU; the product does not
    assert on_meta.device.type == "meta" and on_meta.shape == shape
    assert torch.equal(patch.delta(shape, device="cpu"), patch.delta(shape))


def test_modules_are_fused_one_at_a_time_and_each_update_is_freed_before_the_next(
        pipe, library, monkeypatch):
    fuser = LoraFuser(pipe)
    modules = fuser.index.modules
    base = {key: module.weight.detach().clone() for key, module in modules.items()}
    returned: list[tuple[tuple[str, str], weakref.ref]] = []
    started: list[tuple[str, str]] = []
    problems: list[str] = []
    delta = LoraPatch.delta

    def tracking(self, shape, *, device=None):
        key = (self.component, self.module)
        alive = {k for k, ref in returned if ref() is not None and k != key}
        unfused = [k for k in started if k != key and torch.equal(modules[k].weight, base[k])]
        if alive:
            problems.append(f"{key}: updates of {sorted(alive)} still alive")
        if unfused:
            problems.append(f"{key}: {unfused} not fused yet")
        if key not in started:
            started.append(key)
        result = delta(self, shape, device=device)
        returned.append((key, weakref.ref(result)))
        return result

    monkeypatch.setattr(LoraPatch, "delta", tracking)
    fuser.apply(BOTH, library)
    fuser.restore()
    assert len(started) > 1 and len(returned) > len(started)  # several modules, two terms each
    assert problems == []
    assert all(ref() is None for _, ref in returned)


def test_a_shape_mismatch_in_the_last_patch_leaves_every_weight_unchanged(pipe, tmp_path):
    library, module = _mismatched(pipe, tmp_path)
    before = _weights(pipe)
    fuser = LoraFuser(pipe)
    with pytest.raises(BadRequest, match="does not fit the loaded model") as raised:
        fuser.apply([LoraUse("bad", 1.0, 1.0)], library)
    assert module in raised.value.message and raised.value.field == "prompt"
    assert _same(before, _weights(pipe))
    assert fuser.active == ()


def test_a_bad_lora_added_to_the_set_keeps_the_active_set_fused(pipe, tmp_path):
    save_file(random_kohya_lora(pipe, seed=1), str(tmp_path / "kohya.safetensors"))
    bad, _ = _mismatched(pipe, tmp_path)
    base = _weights(pipe)
    fuser = LoraFuser(pipe)
    fuser.apply([LoraUse("kohya", 1.0, 1.0)], bad)
    fused = _weights(pipe)
    with pytest.raises(BadRequest):
        fuser.apply([LoraUse("kohya", 1.0, 1.0), LoraUse("bad", 1.0, 1.0)], bad)
    assert _same(fused, _weights(pipe))
    assert fuser.active == (LoraUse("kohya", 1.0, 1.0),)
    fuser.restore()
    assert _same(base, _weights(pipe))


def test_up_and_down_matrices_of_different_ranks_are_a_format_error():
    patch = LoraPatch("unet", "m", torch.ones(4, 8), torch.ones(6, 3), 1.0)
    with pytest.raises(LoraFormatError, match="do not belong together"):
        patch.check(torch.Size([6, 8]))


def test_a_fuse_that_runs_out_of_memory_part_way_restores_and_says_what_to_do(
        pipe, library, monkeypatch):
    before = _weights(pipe)
    calls = []
    delta = LoraPatch.delta

    def failing(self, shape, *, device=None):
        calls.append(self.module)
        if len(calls) == 5:  # some modules are fused by now
            raise torch.OutOfMemoryError("CUDA out of memory")
        return delta(self, shape, device=device)

    monkeypatch.setattr(LoraPatch, "delta", failing)
    fuser = LoraFuser(pipe)
    with pytest.raises(BadRequest, match="did not fit in the GPU's memory") as raised:
        fuser.apply(BOTH, library)
    assert raised.value.field == "prompt" and "kohya" in raised.value.message
    assert _same(before, _weights(pipe)) and fuser.active == ()


def test_any_failure_part_way_leaves_the_model_as_it_was(pipe, library, monkeypatch):
    before = _weights(pipe)
    delta = LoraPatch.delta
    calls = []

    def failing(self, shape, *, device=None):
        calls.append(self.module)
        if len(calls) == 3:
            raise RuntimeError("a device error")
        return delta(self, shape, device=device)

    monkeypatch.setattr(LoraPatch, "delta", failing)
    with pytest.raises(RuntimeError, match="a device error"):
        LoraFuser(pipe).apply(BOTH, library)
    assert _same(before, _weights(pipe))


def test_originals_go_to_host_memory_when_the_gpu_lacks_room(pipe, library, monkeypatch):
    monkeypatch.setattr(lora_module, "keeps_on_host", lambda weight, room: True)
    before = _weights(pipe)
    fuser = LoraFuser(pipe)
    fuser.apply(BOTH, library)
    assert fuser.host_originals == len(fuser._originals) > 0
    assert all(t.device.type == "cpu" for t in fuser._originals.values())
    assert not _same(before, _weights(pipe))
    fuser.restore()
    assert _same(before, _weights(pipe)) and fuser.host_originals == 0


class _Weight:
    """What keeps_on_host reads of a CUDA weight (no GPU here)."""

    def __init__(self, elements: int, *, cuda: bool = True) -> None:
        self.is_cuda, self.device = cuda, "cuda:0"
        self._elements = elements

    def numel(self) -> int:
        return self._elements

    def element_size(self) -> int:
        return 2


def test_an_original_stays_on_the_gpu_while_it_leaves_the_generation_reserve():
    gib = 1024**3
    weight = _Weight(gib // 2)  # 1 GiB of bf16
    reserve = lora_module.GENERATION_RESERVE_BYTES
    assert not lora_module.keeps_on_host(weight, lambda device: reserve + gib)
    assert lora_module.keeps_on_host(weight, lambda device: reserve + gib - 1)
    assert not lora_module.keeps_on_host(_Weight(gib, cuda=False), lambda device: 0)
