"""The fast path: a UNet step with few kernel launches, every option with an eager fallback.

Options (environment variables, read by ``Settings``):

- ``EASEL_FAST_PATH`` ``auto`` (default: on when serving on CUDA), ``on`` or ``off``.
- ``EASEL_FAST_QKV`` (``1``): fused attention projections (one matmul for Q, K and V). The
  separate ``to_q``/``to_k``/``to_v`` weights become views into the fused weight, so a LoRA fused
  into them (in place) lands in the weight the fused projection reads.
- ``EASEL_FAST_CHANNELS_LAST`` (``1``): UNet and VAE weights in channels-last layout (no
  NCHW<->NHWC conversion kernels around cuDNN's convolutions).
- ``EASEL_FAST_GRAPHS`` (``1``): the UNet's forward through ``torch.compile`` in
  ``reduce-overhead`` mode (Inductor kernels replayed from CUDA graphs, one graph per shape).
  Only the UNet call is compiled, not the sampling loop, so the per-step callback (the deadline
  and cancellation check) still runs between steps. The step's output is copied out of the graph's
  static buffer, so any sampler may keep it across steps.
- ``EASEL_FAST_VAE`` (``1``): the VAE decode through ``torch.compile`` (default mode: Inductor
  fuses the decoder's group norms, activations and residual adds; no CUDA graphs, so no graph
  memory pool is kept per image size). Recompiles per latent shape; the decode of a per-request
  VAE (``sd_vae``) stays eager.

New shapes: a shape the compiled forward has not seen costs a compile (about a minute for
SD1.5's UNet on an H100), longer than a request's deadline. While the server warms up
(``FastPathReport.compile_new_shapes``) every shape is compiled; once it is ready, a shape the
warm-up did not cover (a batch size, a size the form does not offer) runs eagerly, logged once per
shape, unless ``EASEL_FAST_COMPILE_ON_REQUEST=1`` (then the request that brings it pays the
compile).

Each option that fails (while being applied or, for the compiled forward, at any call) is logged
with its reason and the model keeps serving without it; a failed compiled forward is retried
eagerly in the same call. LoRAs stay free with graphs because ``LoraFuser`` writes weights in
place: their storage, which the captured graphs point at, never moves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger("easel.inference")

CompileFn = Callable[..., Callable[..., Any]]


@dataclass(frozen=True)
class FastPathOptions:
    enabled: bool = False
    fuse_qkv: bool = True
    channels_last: bool = True
    cuda_graphs: bool = True
    compile_vae: bool = True


@dataclass
class FastPathReport:
    """What the fast path applied to one pipeline and what fell back, with the reason."""

    applied: list[str] = field(default_factory=list)
    fallbacks: dict[str, str] = field(default_factory=dict)
    compile_new_shapes: bool = True  # False once warm: unseen shapes run eagerly
    eager_shapes: set[tuple[str, tuple[Any, ...]]] = field(default_factory=set)

    def serves_eagerly(self, option: str, shape: tuple[Any, ...]) -> None:
        if (option, shape) not in self.eager_shapes:
            self.eager_shapes.add((option, shape))
            log.warning("fast path: %s shape %s was not warmed up; served eagerly (warm it up, "
                        "or set EASEL_FAST_COMPILE_ON_REQUEST=1 to compile it on its first "
                        "request)", option, shape)

    def fell_back(self, option: str, exc: BaseException) -> None:
        reason = _reason(exc)
        self.fallbacks[option] = reason
        log.warning("fast path: %s unavailable (%s); serving without it", option, reason)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _as_view(parent: torch.nn.Parameter, start: int, stop: int,
              like: torch.nn.Parameter) -> torch.nn.Parameter:
    """A parameter sharing ``parent``'s storage (rows ``start:stop``)."""
    return torch.nn.Parameter(parent.data[start:stop], requires_grad=like.requires_grad)


def fuse_qkv_in_place(unet: torch.nn.Module) -> int:
    """Fuse attention projections and re-point the separate weights into the fused ones.

    Returns the number of attention modules fused. Raises if the UNet cannot be fused (added KV
    projections, an attention class without ``fuse_projections``).
    """
    unet.fuse_qkv_projections()
    fused = 0
    for module in unet.modules():
        qkv = getattr(module, "to_qkv", None)
        kv = getattr(module, "to_kv", None)
        if isinstance(qkv, torch.nn.Linear):
            parts = (module.to_q, module.to_k, module.to_v)
            target = qkv
        elif isinstance(kv, torch.nn.Linear):
            parts = (module.to_k, module.to_v)
            target = kv
        else:
            continue
        start = 0
        for part in parts:
            stop = start + part.out_features
            part.weight = _as_view(target.weight, start, stop, part.weight)
            if part.bias is not None and target.bias is not None:
                part.bias = _as_view(target.bias, start, stop, part.bias)
            start = stop
        fused += 1
    return fused


def _clone_output(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_clone_output(item) for item in out)
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return type(out)(sample=sample.clone())
    return out


def steady_timestep(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...],
                                                                            dict[str, Any]]:
    """The UNet's timestep as a float32 tensor on the latents' device, whatever the sampler gave
    (an int64 or float tensor, a Python number, on the CPU or the GPU): one compiled graph then
    serves every sampler, and no step leaves the GPU's graph for a CPU scalar. The UNet embeds
    the timestep in float32 anyway, so the picture does not change."""
    sample = args[0] if args else kwargs.get("sample")
    if not isinstance(sample, torch.Tensor):
        return args, kwargs
    if len(args) > 1:
        timestep = torch.as_tensor(args[1], dtype=torch.float32, device=sample.device)
        return (args[0], timestep, *args[2:]), kwargs
    if "timestep" in kwargs:
        timestep = torch.as_tensor(kwargs["timestep"], dtype=torch.float32, device=sample.device)
        return args, dict(kwargs, timestep=timestep)
    return args, kwargs


def shape_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The shapes and dtypes of a call's tensors (nested in dicts too): what decides whether the
    compiled forward has a graph for it."""

    def key(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return (tuple(value.shape), str(value.dtype))
        if isinstance(value, dict):
            return tuple((name, key(item)) for name, item in sorted(value.items()))
        if isinstance(value, (tuple, list)):
            return tuple(key(item) for item in value)
        return None

    return (key(args), key(kwargs))


class GuardedForward:
    """A compiled forward (the UNet's by default); on any failure but out-of-memory, eager from
    then on, with the reason recorded under ``option``. Shapes it has not compiled run eagerly
    once the report says no new shapes."""

    def __init__(self, compiled: Callable[..., Any], eager: Callable[..., Any],
                 report: FastPathReport, *, option: str = "cuda_graphs",
                 graphs: bool = True) -> None:
        self.compiled = compiled
        self.eager = eager
        self.report = report
        self.option = option
        self.graphs = graphs
        self.failure: str | None = None
        self.shapes: set[tuple[Any, ...]] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failure is None:
            # keyed as the compiled forward sees the call: any sampler's timestep is one type
            steady_args, steady_kwargs = steady_timestep(args, kwargs)
            shape = shape_key(steady_args, steady_kwargs)
            if shape not in self.shapes and not self.report.compile_new_shapes:
                self.report.serves_eagerly(self.option, shape)
                return self.eager(*args, **kwargs)
            try:
                mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
                if self.graphs and mark_step is not None:
                    mark_step()
                out = _clone_output(self.compiled(*steady_args, **steady_kwargs))
                self.shapes.add(shape)
                return out
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - any compile/capture failure: serve eagerly
                self.failure = _reason(exc)
                self.report.fell_back(self.option, exc)
                if self.option in self.report.applied:
                    self.report.applied.remove(self.option)
        return self.eager(*args, **kwargs)


class CompiledDecode:
    """``vae.decode`` with the decoder's tensor work compiled. The call keeps diffusers'
    signature (``return_dict``, ``generator``, which AutoencoderKL ignores), so pipelines call it
    as before; only the latents reach the compiled function."""

    def __init__(self, vae: Any, compile_fn: CompileFn, report: FastPathReport) -> None:
        eager_decode = vae.decode

        def decode_sample(latents: torch.Tensor) -> torch.Tensor:
            return eager_decode(latents, return_dict=False)[0]

        self.eager_decode = eager_decode
        self.guarded = GuardedForward(compile_fn(decode_sample), decode_sample, report,
                                      option="compile_vae", graphs=False)

    def __call__(self, latents: torch.Tensor, return_dict: bool = True,
                 generator: Any = None) -> Any:
        sample = self.guarded(latents)
        if return_dict:
            from diffusers.models.autoencoders.vae import DecoderOutput

            return DecoderOutput(sample=sample)
        return (sample,)


def _default_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    return torch.compile(fn, mode="reduce-overhead", fullgraph=True, dynamic=False)


def _default_vae_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    return torch.compile(fn, fullgraph=True, dynamic=False)


def apply_fast_path(pipe: Any, options: FastPathOptions, *,
                    compile_fn: CompileFn = _default_compile,
                    vae_compile_fn: CompileFn = _default_vae_compile) -> FastPathReport:
    """Apply the enabled options to ``pipe`` (before any LoRA is fused into it)."""
    report = FastPathReport()
    if not options.enabled:
        return report
    unet = pipe.unet
    if options.fuse_qkv:
        try:
            count = fuse_qkv_in_place(unet)
            report.applied.append("fuse_qkv")
            log.info("fast path: fused the projections of %d attention modules", count)
        except Exception as exc:  # noqa: BLE001 - a failed option is skipped, with its reason
            report.fell_back("fuse_qkv", exc)
    if options.channels_last:
        try:
            unet.to(memory_format=torch.channels_last)
            vae = getattr(pipe, "vae", None)
            if vae is not None:
                vae.to(memory_format=torch.channels_last)
            report.applied.append("channels_last")
        except Exception as exc:  # noqa: BLE001 - a failed option is skipped, with its reason
            report.fell_back("channels_last", exc)
    if options.cuda_graphs:
        try:
            eager = unet.forward
            guarded = GuardedForward(compile_fn(eager), eager, report)
            unet.forward = guarded
            report.applied.append("cuda_graphs")
        except Exception as exc:  # noqa: BLE001 - a failed option is skipped, with its reason
            report.fell_back("cuda_graphs", exc)
    vae = getattr(pipe, "vae", None)
    if options.compile_vae and vae is not None:
        try:
            vae.decode = CompiledDecode(vae, vae_compile_fn, report)
            report.applied.append("compile_vae")
        except Exception as exc:  # noqa: BLE001 - a failed option is skipped, with its reason
            report.fell_back("compile_vae", exc)
    return report
