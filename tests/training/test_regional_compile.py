"""compile_scope: `blocks` compiles each repeated block of the denoiser in place, `model` the whole
forward. torch.compile itself only runs on CUDA (bench/training.py times it); here a recording
stand-in replaces it, so the tests check what the trainer hands to the compiler."""

from __future__ import annotations

import pytest
import torch

from easel_training.errors import TrainingInputError
from easel_training.regional import compile_denoiser, repeated_blocks

from .conftest import SIZE


@pytest.fixture
def dynamo_limits():
    """Dynamo's recompile limits, restored after the test (compile_denoiser raises them)."""
    config = torch._dynamo.config
    names = ("recompile_limit", "accumulated_recompile_limit", "fail_on_recompile_limit_hit")
    saved = {name: getattr(config, name) for name in names}
    yield config
    for name, value in saved.items():
        setattr(config, name, value)


@pytest.fixture
def compiled(monkeypatch, dynamo_limits):
    """Record torch.compile(fn) and Module.compile() calls instead of compiling."""
    calls = {"whole": [], "modules": []}

    def fake_compile(target, **kwargs):
        calls["whole"].append((target, kwargs.get("mode")))
        return ("compiled", target)

    def fake_module_compile(self, *args, **kwargs):
        calls["modules"].append((self, kwargs.get("mode")))

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.nn.Module, "compile", fake_module_compile)
    return calls


def _of_class(model: torch.nn.Module, *names: str) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__ in names]


def test_the_unet_blocks_are_its_resnet_and_transformer_blocks():
    from easel_inference.builder import build_pipeline

    unet = build_pipeline(arch="sd15", size="tiny", seed=0).unet
    blocks = repeated_blocks(unet)
    expected = _of_class(unet, "ResnetBlock2D", "BasicTransformerBlock")
    assert {type(b).__name__ for b in blocks} == {"ResnetBlock2D", "BasicTransformerBlock"}
    assert [id(b) for b in blocks] == [id(m) for m in expected]


@pytest.mark.parametrize(("family", "block"), [("sd35_medium", "JointTransformerBlock"),
                                               ("flux_dev", "FluxSingleTransformerBlock")])
def test_the_flow_transformers_have_their_transformer_blocks(family, block):
    from easel_inference.flow_builder import build_flow_pipeline

    transformer = build_flow_pipeline(family, seed=0).transformer
    blocks = repeated_blocks(transformer)
    assert _of_class(transformer, block) and all(b in blocks for b in _of_class(transformer, block))


class _Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)


class _Outer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Inner()


class _Toy(torch.nn.Module):
    _repeated_blocks = ["_Outer", "_Inner"]

    def __init__(self):
        super().__init__()
        self.outers = torch.nn.ModuleList([_Outer(), _Outer()])
        self.loose = _Inner()


def test_a_block_inside_a_picked_block_is_compiled_with_it_not_again():
    toy = _Toy()
    assert repeated_blocks(toy) == [toy.outers[0], toy.outers[1], toy.loose]


def test_a_denoiser_without_repeated_blocks_is_refused_with_what_to_do():
    with pytest.raises(TrainingInputError, match="set compile_scope to model"):
        repeated_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_model_scope_compiles_the_forward_it_is_given(compiled):
    toy = _Toy()
    result = compile_denoiser(toy, model=toy, scope="model", mode="default")
    assert result == ("compiled", toy)
    assert compiled["modules"] == []


# ---- the trainer ---------------------------------------------------------------------------------

def _prepared_trainer(make_job, settings: dict[str, str]):
    """A CPU trainer up to the point where it compiles, told it is on CUDA for that step only
    (the CPU run skips compiling)."""
    from easel_training.base_model import load_base_model
    from easel_training.dataset import build_concept_data
    from easel_training.flow import make_trainer
    from easel_training.images import load_image_records
    from easel_training.job import make_accelerator, read_hyperparameters
    from easel_training.stopping import StopRequest

    layout = make_job(settings)
    hp = read_hyperparameters(layout.paths)
    accelerator, mixed = make_accelerator(hp, "cpu")
    base = load_base_model(layout.paths.channel("model"), layout.paths.scratch, hp.checkpoint,
                           flow_dtype=torch.float32)
    hp = hp.for_family(base.family)
    records = load_image_records(layout.paths.channel("concepts"), channel="concepts")
    data = build_concept_data(hp=hp, records=records, class_records=[], resolution=SIZE)
    trainer = make_trainer(hp=hp, paths=layout.paths, base=base, data=data,
                           accelerator=accelerator, mixed_precision=mixed, stop=StopRequest())
    trainer._prepare_models()
    trainer._build_optimizer()
    trainer.cuda = True
    trainer._prepare_distributed()
    return trainer


def test_blocks_scope_compiles_each_unet_block_and_not_the_forward(make_job, compiled):
    trainer = _prepared_trainer(make_job, {"compile": "true", "compile_scope": "blocks",
                                           "compile_mode": "max-autotune-no-cudagraphs"})
    unet = trainer.accelerator.unwrap_model(trainer.train_models[0])
    assert compiled["whole"] == []
    assert [id(m) for m, _ in compiled["modules"]] == \
        [id(m) for m in _of_class(unet, "ResnetBlock2D", "BasicTransformerBlock")]
    assert {mode for _, mode in compiled["modules"]} == {"max-autotune-no-cudagraphs"}
    assert trainer.denoiser_forward is trainer.train_models[0]  # the blocks run compiled in it


def test_model_scope_compiles_the_whole_unet_forward(make_job, compiled):
    trainer = _prepared_trainer(make_job, {"compile": "true"})  # model: the default
    assert compiled["modules"] == []
    assert compiled["whole"] == [(trainer.train_models[0], "default")]
    assert trainer.denoiser_forward == ("compiled", trainer.train_models[0])


def test_without_compile_nothing_is_compiled(make_job, compiled):
    trainer = _prepared_trainer(make_job, {})
    assert compiled == {"whole": [], "modules": []}
    assert trainer.denoiser_forward is trainer.train_models[0]


def test_every_distinct_unet_block_stays_compiled_past_torchs_default_recompile_limit(
        monkeypatch, dynamo_limits):
    """Dynamo really traces each block (a pass-through backend: no C++ compiler needed) of a UNet
    with SD1.5's block layout, whose distinct ResNet blocks alone outnumber torch's default limit
    of 8 compiles of one forward; past it Dynamo would run the rest eagerly (here: fail)."""
    from diffusers import UNet2DConditionModel

    from easel_training import lora

    graphs = []

    def traced_compile(self, *args, **kwargs):
        kind = type(self).__name__
        original(self, backend=lambda graph, inputs: graphs.append(kind) or graph.forward)

    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", traced_compile)
    dynamo_limits.fail_on_recompile_limit_hit = True
    torch._dynamo.reset()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64, 128, 128),
                                layers_per_block=2, cross_attention_dim=16, attention_head_dim=8)
    lora.add_lora(unet, rank=2, alpha=2, dropout=0.0, targets=lora.UNET_TARGETS)
    compile_denoiser(unet, model=unet, scope="blocks", mode="default", shapes=1)
    try:
        unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), encoder_hidden_states=torch.randn(1, 3, 16)
             ).sample.pow(2).mean().backward()
    finally:
        torch._dynamo.reset()
    assert graphs.count("ResnetBlock2D") > 8 and "BasicTransformerBlock" in graphs


def test_blocks_scope_allows_a_compile_per_block_and_batch_shape(compiled, dynamo_limits):
    toy = _Toy()
    compile_denoiser(toy, model=toy, scope="blocks", mode="default", shapes=40)
    assert dynamo_limits.recompile_limit == 3 * 40  # three blocks picked
    assert dynamo_limits.accumulated_recompile_limit >= 3 * 40
