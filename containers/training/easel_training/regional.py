"""torch.compile of the denoiser, by the ``compile_scope`` hyperparameter.

``model`` (the default) compiles the whole forward as one graph. ``blocks`` (regional
compilation) compiles each repeated block class in place (``nn.Module.compile``); Dynamo inlines
a module's code rather than keying it to the instance (``inline_inbuilt_nn_modules``), so each
distinct block is compiled once and its repeats reuse the compiled code, and the fused
element-wise kernels (group norms, SiLU, residual adds, layer norms, GEGLU) still run inside each
block. On SD1.5 (LoRA rank 4, batch 4, inside the CUDA-graph step, H100) ``model`` measured
104 images/s after a ~300 s compile and ``blocks`` 92 images/s after ~330 s: the UNet's blocks
come in many shapes (36 graphs), and the fusions across block boundaries are lost.

The block classes come from the model's diffusers ``_repeated_blocks`` where it has one, plus
:data:`EXTRA_REPEATED_BLOCKS` below where that list misses blocks (or the class has none).
"""

from __future__ import annotations

from typing import Any

import torch

from easel_training.errors import TrainingInputError

# Denoiser class -> block classes compiled in addition to its diffusers ``_repeated_blocks``.
# The UNet (SD1.x/2.x/SDXL) lists only BasicTransformerBlock, which leaves its ResNet blocks
# (most of the group norms, SiLUs and residual adds) eager; SD3.5's transformer lists none.
EXTRA_REPEATED_BLOCKS: dict[str, tuple[str, ...]] = {
    "UNet2DConditionModel": ("ResnetBlock2D",),
    "SD3Transformer2DModel": ("JointTransformerBlock",),
}


def repeated_block_names(model: torch.nn.Module) -> frozenset[str]:
    """The class names of ``model``'s repeated blocks."""
    listed = getattr(model, "_repeated_blocks", None) or ()
    return frozenset(listed) | frozenset(EXTRA_REPEATED_BLOCKS.get(type(model).__name__, ()))


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost submodules of a repeated block class, in module order (a block inside
    another picked block is compiled with it, not again on its own)."""
    names = repeated_block_names(model)
    picked: list[torch.nn.Module] = []
    inside: list[str] = []  # module paths of the picked blocks, as prefixes
    for path, module in model.named_modules():
        if type(module).__name__ not in names or any(path.startswith(p) for p in inside):
            continue
        picked.append(module)
        inside.append(path + ".")
    if not picked:
        raise TrainingInputError(
            f"hyperparameter 'compile_scope': blocks found no repeated blocks to compile in "
            f"this base model's {type(model).__name__} (set compile_scope to model, or compile "
            f"to false)")
    return picked


def compile_denoiser(forward: Any, *, model: torch.nn.Module, scope: str, mode: str,
                     shapes: int = 1) -> Any:
    """The callable the step runs: ``forward`` compiled whole (``model``), or ``forward`` itself
    with ``model``'s repeated blocks compiled in place (``blocks``). ``model`` is the unwrapped
    denoiser that ``forward`` (possibly accelerate's wrapper) calls; ``shapes`` is how many batch
    shapes the steps will feed it (one per resolution bucket)."""
    if scope == "model":
        return torch.compile(forward, mode=mode)
    blocks = repeated_blocks(model)
    allow_a_compile_per_block(len(blocks) * max(shapes, 1))
    for block in blocks:
        block.compile(mode=mode)
    return forward


def allow_a_compile_per_block(compiles: int) -> None:
    """Let Dynamo compile a block class's forward ``compiles`` times.

    The repeats of a block class share one code object, and its compiled code is guarded on the
    shapes of the block's inputs and weights, so each distinct block (channels, latent size) of
    each batch shape is one more compile of the same forward: a UNet of SD1.5's layout has more
    than 8 distinct ResNet blocks. Past torch's default limit of 8 (``recompile_limit``) Dynamo
    would run the remaining blocks eagerly, without a word in the job's log."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, compiles)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, compiles)
