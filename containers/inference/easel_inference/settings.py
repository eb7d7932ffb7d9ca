"""Server settings from environment variables (the SageMaker contract plus Easel's own)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from easel_contracts.compile_cache import COMPILE_CACHE_ENV, COMPILE_CACHE_URI_ENV
from easel_contracts.instances import REQUIRE_CUDA_ENV, cuda_required
from easel_contracts.invocations import MAX_IMAGE_BYTES
from easel_contracts.memory_plan import FP8_ENV, OFFLOAD_ENV
from easel_contracts.readiness import STARTUP_BUDGET_ENV
from easel_contracts.s3uri import S3Uri
from easel_contracts.workcap import ASYNC_INVOCATION_TIMEOUT_MAX_S, DEADLINE_ENV, deadline_seconds

DEFAULT_MAX_RESPONSE_BYTES = 6 * 1024 * 1024
# without EASEL_DEADLINE_SECONDS, a real-time endpoint's: the strictest SageMaker sets
DEFAULT_DEADLINE_SECONDS = deadline_seconds("realtime")
DEFAULT_MAX_QUEUE = 8
WORKERS_ENV = "EASEL_WORKERS"
DEFAULT_STARTUP_BUDGET_SECONDS = 1200
MAX_WORKERS = 64


class SettingsError(ValueError):
    """An environment variable has an unusable value; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _flag(env: Mapping[str, str], name: str, default: str = "1") -> bool:
    return _choice(env, name, default, ("1", "0", "true", "false")) in ("1", "true")


@dataclass(frozen=True)
class Settings:
    port: int = 8080
    host: str = "0.0.0.0"
    model_dir: Path = Path("/opt/ml/model")
    default_model: str | None = None
    device: str = "auto"
    require_cuda: bool = False  # on SageMaker: no usable GPU -> /ping fails, never a CPU run
    dtype: str = "auto"
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    lora_s3_uri: str | None = None
    lora_cache_dir: Path = Path("/tmp/easel-lora-cache")
    warmup: bool = True
    pipeline_budget: int = 2
    max_pixels: int = 2048 * 2048
    max_image_bytes: int = MAX_IMAGE_BYTES
    deadline_seconds: int = DEFAULT_DEADLINE_SECONDS  # from arrival to answer, queue included
    max_queue: int = DEFAULT_MAX_QUEUE  # generation requests admitted at once (running+waiting)
    fast_path: str = "auto"  # auto: on when serving on CUDA (easel_inference.fastpath)
    fast_qkv: bool = True
    fast_channels_last: bool = True
    fast_graphs: bool = True
    fast_vae: bool = True
    fast_compile_on_request: bool = False  # a shape the warm-up missed: compile it, or eager
    workers: int | None = None  # worker processes, one per GPU (None: the CUDA device count)
    warmup_sizes: str = "auto"  # every size the form offers: auto = when the fast path compiles
    startup_budget_seconds: int = DEFAULT_STARTUP_BUDGET_SECONDS  # SageMaker's health-check wait
    compile_cache: bool = True  # fast path: torch's compile artifacts kept in S3
    compile_cache_s3_uri: str | None = None  # s3://<data bucket>/compile-cache/ (the portal's)
    # SD3.5 / FLUX.1 text encoders in host memory, on the GPU only while they encode a prompt
    # (the portal's memory plan sets it where the model fits only that way)
    text_encoder_offload: bool = False
    # SD3.5 / FLUX.1 transformer weights stored in float8_e4m3fn, computed in the serving dtype:
    # off, on, or auto (on CUDA, where the model does not fit the GPU in bf16 otherwise)
    fp8_weights: str = "off"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        lora_uri = env.get("EASEL_LORA_S3_URI", "").strip() or None
        if lora_uri:
            try:
                S3Uri.parse(lora_uri)
            except ValueError as exc:
                raise SettingsError(f"EASEL_LORA_S3_URI: {exc}") from None
        cache_uri = env.get(COMPILE_CACHE_URI_ENV, "").strip() or None
        if cache_uri:
            try:
                S3Uri.parse(cache_uri)
            except ValueError as exc:
                raise SettingsError(f"{COMPILE_CACHE_URI_ENV}: {exc}") from None
        device = _choice(env, "EASEL_DEVICE", "auto", ("auto", "cpu", "cuda"))
        require_cuda = cuda_required(env)
        if require_cuda and device == "cpu":
            raise SettingsError(
                f"EASEL_DEVICE is cpu but {REQUIRE_CUDA_ENV}=1 requires a GPU; "
                f"unset one of them")
        return cls(
            port=_int(env, "SAGEMAKER_BIND_TO_PORT", 8080, low=1, high=65535),
            host=env.get("EASEL_HOST", "").strip() or "0.0.0.0",
            model_dir=Path(env.get("EASEL_MODEL_DIR", "").strip() or "/opt/ml/model"),
            default_model=env.get("EASEL_DEFAULT_MODEL", "").strip() or None,
            device=device,
            require_cuda=require_cuda,
            dtype=_choice(env, "EASEL_DTYPE", "auto", ("auto", "float16", "bfloat16", "float32")),
            max_response_bytes=_int(
                env, "EASEL_MAX_RESPONSE_BYTES", DEFAULT_MAX_RESPONSE_BYTES, low=1024, high=2**40
            ),
            lora_s3_uri=lora_uri,
            lora_cache_dir=Path(
                env.get("EASEL_LORA_CACHE_DIR", "").strip() or "/tmp/easel-lora-cache"
            ),
            warmup=_choice(env, "EASEL_WARMUP", "1", ("1", "0", "true", "false"))
            in ("1", "true"),
            pipeline_budget=_int(env, "EASEL_PIPELINE_BUDGET", 2, low=1, high=64),
            max_pixels=_int(env, "EASEL_MAX_PIXELS", 2048 * 2048, low=64 * 64, high=8192 * 8192),
            max_image_bytes=_int(
                env, "EASEL_MAX_IMAGE_BYTES", MAX_IMAGE_BYTES, low=1024, high=MAX_IMAGE_BYTES
            ),
            deadline_seconds=_int(env, DEADLINE_ENV, DEFAULT_DEADLINE_SECONDS, low=1,
                                  high=ASYNC_INVOCATION_TIMEOUT_MAX_S),
            max_queue=_int(env, "EASEL_MAX_QUEUE", DEFAULT_MAX_QUEUE, low=1, high=1024),
            fast_path=_choice(env, "EASEL_FAST_PATH", "auto", ("auto", "on", "off")),
            fast_qkv=_flag(env, "EASEL_FAST_QKV"),
            fast_channels_last=_flag(env, "EASEL_FAST_CHANNELS_LAST"),
            fast_graphs=_flag(env, "EASEL_FAST_GRAPHS"),
            fast_vae=_flag(env, "EASEL_FAST_VAE"),
            fast_compile_on_request=_flag(env, "EASEL_FAST_COMPILE_ON_REQUEST", "0"),
            workers=_workers(env),
            warmup_sizes=_choice(env, "EASEL_WARMUP_SIZES", "auto", ("auto", "on", "off")),
            startup_budget_seconds=_int(env, STARTUP_BUDGET_ENV, DEFAULT_STARTUP_BUDGET_SECONDS,
                                        low=60, high=3600),
            compile_cache=_flag(env, COMPILE_CACHE_ENV),
            compile_cache_s3_uri=cache_uri,
            text_encoder_offload=_flag(env, OFFLOAD_ENV, "0"),
            fp8_weights=_choice(env, FP8_ENV, "off", ("auto", "on", "off")),
        )


def _workers(env: Mapping[str, str]) -> int | None:
    """``EASEL_WORKERS``: a count from 1 to 64, or ``auto``/unset (one per visible GPU)."""
    raw = env.get(WORKERS_ENV, "").strip().lower()
    if raw in ("", "auto"):
        return None
    return _int(env, WORKERS_ENV, 1, low=1, high=MAX_WORKERS)
