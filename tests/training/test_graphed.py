"""The CUDA-graph step's CPU-checkable parts: when it is used, and that the capture warm-up is
undone in place (the GPU path itself is checked by bench/training.py against the eager step)."""

from __future__ import annotations

import torch

from easel_contracts.hyperparameters import HyperParameters
from easel_training.graphed import GraphedStep, graph_eligible

BASE = {"instance_prompt": "sks"}


def test_graphs_only_where_a_captured_step_is_equivalent():
    hp = HyperParameters.from_strings(BASE)
    assert graph_eligible(hp, cuda=True, world_size=1, mixed_precision="bf16")
    assert not graph_eligible(hp, cuda=False, world_size=1, mixed_precision="no")
    assert not graph_eligible(hp, cuda=True, world_size=2, mixed_precision="bf16")
    assert not graph_eligible(hp, cuda=True, world_size=1, mixed_precision="fp16")
    for changed in ({"mode": "full"}, {"train_text_encoder": "true"}, {"lr_scheduler": "cosine"},
                    {"gradient_accumulation_steps": "2"}, {"cuda_graphs": "false"},
                    {"compile": "true", "compile_mode": "reduce-overhead"},
                    {"compile": "true", "compile_mode": "max-autotune"},
                    {"gradient_checkpointing": "true"}):
        other = HyperParameters.from_strings({**BASE, **changed})
        assert not graph_eligible(other, cuda=True, world_size=1, mixed_precision="bf16"), changed


def test_compile_without_its_own_graphs_runs_inside_the_captured_step():
    for mode in ("default", "max-autotune-no-cudagraphs"):
        hp = HyperParameters.from_strings({**BASE, "compile": "true", "compile_mode": mode})
        assert graph_eligible(hp, cuda=True, world_size=1, mixed_precision="bf16"), mode


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, optimizer, list(model.parameters())


def _train(model, optimizer, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(2, 4)).pow(2).mean().backward()
        optimizer.step()


def _step(model, optimizer, params) -> GraphedStep:
    return GraphedStep(unet=model, optimizer=optimizer, params=params, loss_fn=None,
                       max_grad_norm=0.0, autocast_dtype=None)


def test_warm_up_on_a_fresh_optimizer_is_undone_in_place():
    model, optimizer, params = _model_and_optimizer()
    before = [p.detach().clone() for p in params]
    graphed = _step(model, optimizer, params)
    snapshot = graphed._snapshot()
    _train(model, optimizer, 3)  # what the capture warm-up does
    state_tensors = {id(v) for s in optimizer.state.values() for v in s.values()
                     if torch.is_tensor(v)}
    graphed._restore(*snapshot)
    for parameter, original in zip(params, before, strict=True):
        assert torch.equal(parameter, original)
    for state in optimizer.state.values():
        for value in state.values():
            assert id(value) in state_tensors  # same tensors (a graph holds their addresses)
            assert not value.any()  # moments and step back at a fresh optimizer's zero


def test_warm_up_after_real_steps_restores_the_optimizer_state():
    model, optimizer, params = _model_and_optimizer()
    _train(model, optimizer, 2)
    weights = [p.detach().clone() for p in params]
    moments = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    graphed = _step(model, optimizer, params)
    snapshot = graphed._snapshot()
    _train(model, optimizer, 3)
    graphed._restore(*snapshot)
    for parameter, saved in zip(params, weights, strict=True):
        assert torch.equal(parameter, saved)
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            assert torch.equal(value, moments[id(parameter)][key])
