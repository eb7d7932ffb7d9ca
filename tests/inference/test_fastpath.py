"""The fast path (fused QKV, channels-last, compiled UNet) on a tiny CPU model: same pictures as
eager, LoRAs fused in place into the weights the fused projections read, and an eager fallback
with its reason logged when an option fails. No speed is asserted here (bench/inference.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from easel_inference.builder import build_pipeline
from easel_inference.fastpath import (
    FastPathOptions,
    apply_fast_path,
    fuse_qkv_in_place,
    steady_timestep,
)
from easel_inference.lora import LoraFuser, LoraLibrary, LoraUse
from easel_inference.lora_builder import random_kohya_lora
from easel_inference.pipelines import PipelineManager
from easel_inference.settings import Settings, SettingsError

NO_GRAPHS = FastPathOptions(enabled=True, cuda_graphs=False, compile_vae=False)
UNET_ONLY = FastPathOptions(enabled=True, compile_vae=False)


def _generate(pipe) -> np.ndarray:
    return pipe(
        "a boat", num_inference_steps=3, height=64, width=64, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


def _unet_params(pipe) -> dict[str, torch.Tensor]:
    return dict(pipe.unet.named_parameters())


@pytest.fixture()
def pipe():
    return build_pipeline(arch="sd15", seed=5)


@pytest.fixture()
def library(tmp_path: Path, pipe) -> LoraLibrary:
    save_file(random_kohya_lora(pipe, seed=3), str(tmp_path / "style.safetensors"))
    return LoraLibrary(tmp_path)


def test_fused_qkv_and_channels_last_keep_the_picture(pipe) -> None:
    eager = _generate(pipe)
    report = apply_fast_path(pipe, NO_GRAPHS)
    assert report.applied == ["fuse_qkv", "channels_last"]
    np.testing.assert_allclose(_generate(pipe), eager, atol=1e-4)


def test_separate_projection_weights_become_views_of_the_fused_weight(pipe) -> None:
    assert fuse_qkv_in_place(pipe.unet) > 0
    attn = next(m for m in pipe.unet.modules() if hasattr(m, "to_qkv"))
    base = attn.to_qkv.weight.data_ptr()
    size = attn.to_qkv.weight.element_size() * attn.to_qkv.weight.shape[1]
    assert attn.to_q.weight.data_ptr() == base
    assert attn.to_k.weight.data_ptr() == base + size * attn.to_q.out_features
    cross = next(m for m in pipe.unet.modules() if hasattr(m, "to_kv"))
    assert cross.to_v.weight.data_ptr() == cross.to_kv.weight.data_ptr() + (
        cross.to_kv.weight.element_size() * cross.to_kv.weight.shape[1] * cross.to_k.out_features)


def test_lora_fuse_and_restore_keep_every_weight_storage(pipe, library) -> None:
    apply_fast_path(pipe, NO_GRAPHS)
    pointers = {name: p.data_ptr() for name, p in _unet_params(pipe).items()}
    before = {name: p.detach().clone() for name, p in _unet_params(pipe).items()}
    fuser = LoraFuser(pipe)
    fuser.apply([LoraUse("style", 1.0, 1.0)], library)
    fused = _unet_params(pipe)
    assert {name: p.data_ptr() for name, p in fused.items()} == pointers
    assert any(not torch.equal(before[name], p) for name, p in fused.items())
    fuser.restore()
    restored = _unet_params(pipe)
    assert {name: p.data_ptr() for name, p in restored.items()} == pointers
    assert all(torch.equal(before[name], p) for name, p in restored.items())


def test_a_lora_changes_the_fused_path_as_it_changes_eager(library) -> None:
    eager_pipe = build_pipeline(arch="sd15", seed=5)
    fast_pipe = build_pipeline(arch="sd15", seed=5)
    apply_fast_path(fast_pipe, NO_GRAPHS)
    for pipe in (eager_pipe, fast_pipe):
        LoraFuser(pipe).apply([LoraUse("style", 1.0, 1.0)], library)
    eager, fast = _generate(eager_pipe), _generate(fast_pipe)
    assert not np.array_equal(eager, _generate(build_pipeline(arch="sd15", seed=5)))
    np.testing.assert_allclose(fast, eager, atol=1e-4)


def test_compiled_forward_is_used_and_its_output_is_copied_out(pipe) -> None:
    calls = []

    def fake_compile(forward):
        def compiled(*args, **kwargs):
            calls.append(1)
            return forward(*args, **kwargs)
        return compiled

    eager = _generate(pipe)
    report = apply_fast_path(pipe, UNET_ONLY, compile_fn=fake_compile)
    assert "cuda_graphs" in report.applied
    np.testing.assert_allclose(_generate(pipe), eager, atol=1e-4)
    assert len(calls) == 3  # one compiled UNet call a step: the step loop stays in Python


@pytest.mark.parametrize("timestep", [torch.tensor(981), torch.tensor(981.0), 981])
def test_the_compiled_forward_always_sees_one_timestep_type(timestep) -> None:
    """int64 (DPM++), float (Euler) or a number: one graph, not one compile per sampler."""
    sample = torch.zeros(1, 4, 8, 8)
    args, _ = steady_timestep((sample, timestep), {})
    assert args[1].dtype == torch.float32 and args[1].device == sample.device
    assert float(args[1]) == 981.0
    _, kwargs = steady_timestep((), {"sample": sample, "timestep": timestep})
    assert kwargs["timestep"].dtype == torch.float32


def test_a_failing_compiled_forward_falls_back_to_eager_and_logs_why(pipe, caplog) -> None:
    def broken_compile(forward):
        def compiled(*args, **kwargs):
            raise RuntimeError("no C compiler for the Triton launcher")
        return compiled

    eager = _generate(pipe)
    report = apply_fast_path(pipe, UNET_ONLY, compile_fn=broken_compile)
    with caplog.at_level(logging.WARNING, logger="easel.inference"):
        image = _generate(pipe)
    np.testing.assert_allclose(image, eager, atol=1e-4)
    assert "no C compiler" in report.fallbacks["cuda_graphs"]
    assert "cuda_graphs" not in report.applied
    assert "no C compiler" in caplog.text


def test_out_of_memory_in_the_compiled_forward_is_not_swallowed(pipe) -> None:
    def oom_compile(forward):
        def compiled(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory")
        return compiled

    report = apply_fast_path(pipe, UNET_ONLY, compile_fn=oom_compile)
    with pytest.raises(torch.OutOfMemoryError):
        _generate(pipe)
    assert "cuda_graphs" not in report.fallbacks


def test_an_option_that_fails_to_apply_is_skipped_with_its_reason(pipe, caplog) -> None:
    def refuse():
        raise ValueError("added KV projections")

    pipe.unet.fuse_qkv_projections = refuse
    eager = _generate(pipe)
    with caplog.at_level(logging.WARNING, logger="easel.inference"):
        report = apply_fast_path(pipe, NO_GRAPHS)
    assert report.applied == ["channels_last"]
    assert "added KV projections" in report.fallbacks["fuse_qkv"]
    assert "added KV projections" in caplog.text
    np.testing.assert_allclose(_generate(pipe), eager, atol=1e-4)


def test_real_torch_compile_traces_the_unet_in_one_graph(pipe) -> None:
    """Dynamo (eager backend: no C compiler or GPU needed) captures the whole UNet forward."""
    eager = _generate(pipe)
    report = apply_fast_path(
        pipe, UNET_ONLY,
        compile_fn=lambda f: torch.compile(f, backend="eager", fullgraph=True, dynamic=False))
    np.testing.assert_allclose(_generate(pipe), eager, atol=1e-4)
    assert report.fallbacks == {}


VAE_ONLY = FastPathOptions(enabled=True, fuse_qkv=False, channels_last=False, cuda_graphs=False)


def test_compiled_vae_decode_is_used_and_keeps_the_picture(pipe) -> None:
    calls = []

    def fake_compile(decode):
        def compiled(latents):
            calls.append(tuple(latents.shape))
            return decode(latents)
        return compiled

    eager = _generate(pipe)
    report = apply_fast_path(pipe, VAE_ONLY, vae_compile_fn=fake_compile)
    assert report.applied == ["compile_vae"]
    np.testing.assert_allclose(_generate(pipe), eager, atol=1e-5)
    side = 64 // pipe.vae_scale_factor
    assert calls == [(1, 4, side, side)]  # one decode, of the latents only
    # diffusers' own call shapes still work: a DecoderOutput, or a tuple
    latents = torch.zeros(1, 4, side, side)
    assert pipe.vae.decode(latents).sample.shape == (1, 3, 64, 64)
    assert pipe.vae.decode(latents, return_dict=False, generator=None)[0].shape == (1, 3, 64, 64)


def test_a_failing_vae_compile_falls_back_to_eager_with_its_reason(pipe, caplog) -> None:
    def broken_compile(decode):
        def compiled(latents):
            raise RuntimeError("inductor: no C++ compiler")
        return compiled

    eager = _generate(pipe)
    report = apply_fast_path(pipe, VAE_ONLY, vae_compile_fn=broken_compile)
    with caplog.at_level(logging.WARNING, logger="easel.inference"):
        image = _generate(pipe)
    np.testing.assert_allclose(image, eager, atol=1e-5)
    assert "no C++ compiler" in report.fallbacks["compile_vae"]
    assert "compile_vae" not in report.applied
    assert "no C++ compiler" in caplog.text


def test_real_torch_compile_traces_the_vae_decode_in_one_graph(pipe) -> None:
    eager = _generate(pipe)
    report = apply_fast_path(
        pipe, VAE_ONLY,
        vae_compile_fn=lambda f: torch.compile(f, backend="eager", fullgraph=True, dynamic=False))
    np.testing.assert_allclose(_generate(pipe), eager, atol=1e-5)
    assert report.fallbacks == {} and report.applied == ["compile_vae"]


def test_settings_read_the_fast_path_options() -> None:
    settings = Settings.from_env({"EASEL_FAST_PATH": "on", "EASEL_FAST_GRAPHS": "0",
                                  "EASEL_FAST_VAE": "0"})
    assert (settings.fast_path, settings.fast_graphs, settings.fast_qkv) == ("on", False, True)
    assert not settings.fast_vae and Settings.from_env({}).fast_vae
    with pytest.raises(SettingsError, match="EASEL_FAST_PATH"):
        Settings.from_env({"EASEL_FAST_PATH": "fast"})


def test_auto_means_off_on_the_cpu_and_on_turns_it_on(tmp_path: Path) -> None:
    assert not PipelineManager(Settings(model_dir=tmp_path, device="cpu")).fast_options.enabled
    forced = PipelineManager(Settings(model_dir=tmp_path, device="cpu", fast_path="on"))
    assert forced.fast_options.enabled


def _generate_at(pipe, side: int) -> np.ndarray:
    return pipe(
        "a boat", num_inference_steps=2, height=side, width=side, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


def _recording_compile(shapes: list[tuple[int, ...]]):
    """A stand-in for torch.compile that records the sample shape of each compiled call."""

    def fake_compile(forward):
        def compiled(sample, *args, **kwargs):
            shapes.append(tuple(sample.shape))
            return forward(sample, *args, **kwargs)
        return compiled

    return fake_compile


def test_a_shape_not_warmed_runs_eagerly_once_new_shapes_are_closed(pipe, caplog) -> None:
    """A new shape costs a compile longer than a request's deadline: after the warm-up it is
    served eagerly (same picture), and a warmed shape still takes the compiled forward."""
    compiled_shapes: list[tuple[int, ...]] = []
    fake_compile = _recording_compile(compiled_shapes)
    eager_64 = _generate_at(pipe, 64)
    report = apply_fast_path(pipe, UNET_ONLY, compile_fn=fake_compile)
    _generate_at(pipe, 64)  # the warm-up's shape
    report.compile_new_shapes = False
    compiled_shapes.clear()
    with caplog.at_level(logging.WARNING, logger="easel.inference"):
        np.testing.assert_allclose(_generate_at(pipe, 64), eager_64, atol=1e-4)
        assert len(compiled_shapes) == 2  # warmed: both steps compiled
        compiled_shapes.clear()
        _generate_at(pipe, 96)
        _generate_at(pipe, 96)
    assert compiled_shapes == []
    assert caplog.text.count("was not warmed up; served eagerly") == 1  # logged once a shape
    assert "cuda_graphs" in report.applied and not report.fallbacks


def test_a_warmed_shape_stays_compiled_whatever_the_samplers_timestep_type(pipe) -> None:
    """The warm-up's sampler gives float timesteps, DPM++ int64 ones: one compiled graph."""
    calls: list[tuple[int, ...]] = []
    report = apply_fast_path(pipe, UNET_ONLY, compile_fn=_recording_compile(calls))
    sample, states = torch.zeros(2, 4, 8, 8), torch.zeros(2, 77, 32)
    pipe.unet(sample, torch.tensor(981.0), encoder_hidden_states=states)
    report.compile_new_shapes = False
    pipe.unet(sample, torch.tensor(981), encoder_hidden_states=states)
    pipe.unet(sample, 981, encoder_hidden_states=states)
    assert len(calls) == 3 and not report.eager_shapes


def test_new_shapes_are_compiled_while_they_are_open(pipe) -> None:
    compiled_shapes: list[tuple[int, ...]] = []
    fake_compile = _recording_compile(compiled_shapes)
    apply_fast_path(pipe, UNET_ONLY, compile_fn=fake_compile)
    _generate_at(pipe, 64)
    _generate_at(pipe, 96)
    assert len({shape[-1] for shape in compiled_shapes}) == 2  # both sizes compiled


def test_settings_read_whether_a_request_may_compile_a_new_shape() -> None:
    assert not Settings.from_env({}).fast_compile_on_request
    assert Settings.from_env({"EASEL_FAST_COMPILE_ON_REQUEST": "1"}).fast_compile_on_request
