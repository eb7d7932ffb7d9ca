"""One training step replayed as a CUDA graph.

An eager SD UNet step launches thousands of small kernels and the GPU waits on the Python that
launches them. Here the batch is still built eagerly (per-sample seeds, cached latents and prompt
embeddings), copied into static buffers, and the UNet forward, loss, backward, gradient clipping
and the fused AdamW update run as one captured graph per batch shape.

Capturing needs a few warm-up iterations that would update the weights; the trainable weights and
the optimizer state are saved before and copied back in place after, so the run trains exactly
the steps it is asked for. Used on one CUDA process in LoRA mode with a frozen text encoder, a
constant learning rate and bf16/fp32 (see :func:`graph_eligible`); otherwise the eager step runs.

With ``compile`` in a mode without CUDA graphs of its own (``default``,
``max-autotune-no-cudagraphs``) the UNet's compiled forward and backward (Inductor's fused
element-wise kernels: group norms, SiLU, residual adds, LoRA's small matmuls) are captured inside
this graph: the compile happens in the capture's warm-up iterations, and each replay is one launch
of fused kernels. ``reduce-overhead`` and ``max-autotune`` bring torch's own CUDA graphs, which
cannot nest inside this capture, so they run without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from easel_contracts.hyperparameters import HyperParameters

WARMUP_ITERATIONS = 3
# torch.compile modes whose kernels this step can capture (the others add CUDA graphs themselves)
CAPTURABLE_COMPILE_MODES = frozenset({"default", "max-autotune-no-cudagraphs"})


def graph_eligible(hp: HyperParameters, *, cuda: bool, world_size: int,
                   mixed_precision: str) -> bool:
    return (cuda and hp.cuda_graphs and world_size == 1 and hp.mode == "lora"
            and not hp.train_text_encoder and mixed_precision in ("bf16", "no")
            and hp.gradient_accumulation_steps == 1
            and (not hp.compile or hp.compile_mode in CAPTURABLE_COMPILE_MODES)
            and not hp.use_8bit_adam and not hp.gradient_checkpointing
            and hp.lr_scheduler == "constant")


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    loss: torch.Tensor


class GraphedStep:
    def __init__(self, *, unet: Any, optimizer: torch.optim.Optimizer,
                 params: list[torch.nn.Parameter], loss_fn, max_grad_norm: float,
                 autocast_dtype: torch.dtype | None) -> None:
        self.unet = unet
        self.optimizer = optimizer
        self.params = params
        self.loss_fn = loss_fn  # (prediction, target, num_instance) -> loss
        self.max_grad_norm = max_grad_norm
        self.autocast_dtype = autocast_dtype
        self._graphs: dict[tuple, _Captured] = {}

    @property
    def captured_any(self) -> bool:
        return bool(self._graphs)

    def _body(self, inputs: dict[str, torch.Tensor], num_instance: int) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=False)
        added = None
        if "text_embeds" in inputs:
            added = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}
        with torch.autocast("cuda", dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None, cache_enabled=False):
            prediction = self.unet(inputs["noisy"], inputs["timesteps"],
                                   encoder_hidden_states=inputs["hidden"],
                                   added_cond_kwargs=added).sample
        loss = self.loss_fn(prediction, inputs["target"], num_instance)
        loss.backward()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        return loss.detach()

    def _snapshot(self) -> tuple[list[torch.Tensor], dict[int, dict[str, Any]]]:
        weights = [p.detach().clone() for p in self.params]
        state = {
            id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in self.optimizer.state.items()
        }
        return weights, state

    @torch.no_grad()
    def _restore(self, weights: list[torch.Tensor], state: dict[int, dict[str, Any]]) -> None:
        """Copy the pre-warm-up values back into the same tensors the graph captured."""
        for parameter, saved in zip(self.params, weights, strict=True):
            parameter.copy_(saved)
        for parameter, current in self.optimizer.state.items():
            before = state.get(id(parameter))
            for key, value in current.items():
                if not torch.is_tensor(value):
                    continue
                if before is None:
                    value.zero_()  # a fresh optimizer: moments and step count start at zero
                else:
                    value.copy_(before[key])

    def _capture(self, key: tuple, inputs: dict[str, torch.Tensor],
                 num_instance: int) -> _Captured:
        static = {name: tensor.clone() for name, tensor in inputs.items()}
        weights, state = self._snapshot()
        graph = torch.cuda.CUDAGraph()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_ITERATIONS):
                    self._body(static, num_instance)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(graph):
                loss = self._body(static, num_instance)
        finally:
            torch.cuda.synchronize()
            self._restore(weights, state)
        captured = _Captured(graph=graph, inputs=static, loss=loss)
        self._graphs[key] = captured
        return captured

    def __call__(self, inputs: dict[str, torch.Tensor], num_instance: int) -> torch.Tensor:
        key = tuple((name, tuple(t.shape)) for name, t in sorted(inputs.items())) + (num_instance,)
        captured = self._graphs.get(key) or self._capture(key, inputs, num_instance)
        for name, tensor in inputs.items():
            captured.inputs[name].copy_(tensor)
        captured.graph.replay()
        return captured.loss.clone()  # the static buffer is overwritten by the next replay
