"""FastAPI app: SageMaker ``/ping`` and ``/invocations`` with A1111 payloads.

Model loading and every generation run on one worker thread (a queue of one), so ``/ping``
keeps answering during a generation and concurrent requests wait their turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from easel_contracts.bodylimit import BodyLimit
from easel_contracts.instances import this_host_problem
from easel_contracts.invocations import (
    GENERATION_TASKS,
    TASKS,
    ControlNetModels,
    GenerationRequest,
    GenerationResponse,
    Invocation,
    Loras,
    Options,
    Scheduler,
    Schedulers,
    SdModel,
    SdModels,
    SdVae,
    SdVaes,
    Txt2ImgRequest,
    WarmUp,
)
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from .errors import ApiError, BadRequest, InternalError, NotFound, ResponseTooLarge
from .generation import StepHook, generate
from .lora import LoraLibrary
from .pipelines import PipelineManager, short_hash
from .samplers import SCHEDULE_TYPES, sampler_listing
from .settings import Settings

log = logging.getLogger("easel.inference")
Handler = Callable[[BaseModel, float], BaseModel]


@dataclass
class Engine:
    settings: Settings
    manager: PipelineManager
    library: LoraLibrary
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-gen")
    )
    ready: bool = False
    startup_error: str | None = None
    step_hook: StepHook | None = None
    cuda_probe: Callable[[], str | None] = field(default=lambda: this_host_problem(torch))
    """Why this host cannot run the image's CUDA build (None: it can); checked when required."""

    warmed_up: WarmUp | None = None

    def start(self) -> None:
        """Load the default model and warm it up (runs on the worker thread)."""
        if self.settings.require_cuda:
            problem = self.cuda_probe()
            if problem:
                # /ping stays 503 with this detail: SageMaker fails the endpoint, never a CPU run
                self.startup_error = problem
                log.error("startup failed: %s", problem)
                return
        try:
            model = self.manager.get(None)
            if self.settings.warmup:
                warm = warmup_request(model.pipe, model.name, max_pixels=self.settings.max_pixels)
                started = time.perf_counter()
                generate(warm, task="txt2img", manager=self.manager, library=self.library,
                         settings=self.settings)
                self.warmed_up = WarmUp(model=model.name, width=warm.width,
                                        height=warm.height, steps=warm.steps,
                                        seconds=round(time.perf_counter() - started, 3))
            self.ready = True
            log.info("ready: %s", model.name)
        except ApiError as exc:
            self.startup_error = exc.message
            log.error("startup failed: %s", exc.message)
        except Exception as exc:  # keep the process up; /ping reports not ready
            self.startup_error = f"{type(exc).__name__}: {exc}"
            log.exception("startup failed")

    def handlers(self) -> dict[str, Handler]:
        """Each task the server serves -> what answers it, given the validated request and the
        time it arrived; the answer is the task's registry response model."""
        return {
            "txt2img": self.generation("txt2img"),
            "img2img": self.generation("img2img"),
            "sd-models": lambda _request, _arrived: self.sd_models(),
            "sd-vae": lambda _request, _arrived: SdVaes([
                SdVae(model_name=name, filename=str(path))
                for name, path in self.manager.vae_files().items()
            ]),
            "loras": lambda _request, _arrived: Loras(self.library.listing()),
            "controlnet-models": lambda _request, _arrived: ControlNetModels(
                model_list=list(self.manager.controlnet_files())
            ),
            "samplers": lambda _request, _arrived: sampler_listing(),
            "schedulers": lambda _request, _arrived: Schedulers(
                [Scheduler(name=s.lower(), label=s) for s in SCHEDULE_TYPES]
            ),
            "options": lambda _request, _arrived: self.options(),
        }

    def sd_models(self) -> SdModels:
        models = []
        for name, path in self.manager.checkpoints().items():
            digest = short_hash(path)
            title = f"{path.name if path.is_file() else name}" + (f" [{digest}]" if digest else "")
            config = path.with_suffix(".yaml") if path.is_file() else None
            models.append(SdModel(
                title=title,
                model_name=name,
                hash=digest,
                sha256=None,
                filename=str(path),
                config=str(config) if config and config.is_file() else None,
            ))
        return SdModels(models)

    def options(self) -> Options:
        return Options(
            sd_model_checkpoint=self.manager.current,
            sd_checkpoints_loaded=self.manager.loaded_names(),
            model_load_seconds=self.manager.load_seconds(),
            CLIP_stop_at_last_layers=1,
            sd_vae="Automatic",
            samples_format="png",
            device=str(self.manager.device),
            dtype=str(self.manager.dtype).removeprefix("torch."),
            max_response_bytes=self.settings.max_response_bytes,
            pipeline_budget=self.settings.pipeline_budget,
            warmed_up=self.warmed_up,
        )

    def generation(self, task: str) -> Handler:
        def run(request: BaseModel, arrived: float) -> GenerationResponse:
            if not isinstance(request, GenerationRequest):
                raise TypeError(f"{task} takes a GenerationRequest")
            return generate(request, task=task, manager=self.manager, library=self.library,
                            settings=self.settings, step_hook=self.step_hook, queued_at=arrived)

        return run


def warmup_request(pipe: Any, model_name: str, *, max_pixels: int) -> Txt2ImgRequest:
    """A 2-step generation at the model's native size (512 for SD1.5, 768 for SD2-v, 1024 for
    SDXL), so the first real request does not pay for first-use work at that size (kernel
    selection, allocator growth); smaller when the pixel budget is smaller."""
    side = int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))
    while side > 64 and side * side > max_pixels:
        side //= 2
    side = max(64, side - side % 8)
    return Txt2ImgRequest(prompt="warm-up", steps=2, width=side, height=side, seed=0,
                          override_settings={"sd_model_checkpoint": model_name})


def _validation_field(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return ".".join(str(part) for part in first.get("loc", ())) or "payload"


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(part) for part in error.get("loc", ())) or "payload"
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def build_engine(settings: Settings) -> Engine:
    manager = PipelineManager(settings)
    library = LoraLibrary(
        settings.model_dir / "Lora", s3_uri=settings.lora_s3_uri, cache_dir=settings.lora_cache_dir
    )
    return Engine(settings=settings, manager=manager, library=library)


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    engine = engine or build_engine(settings or Settings.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        startup = loop.run_in_executor(engine.executor, engine.start)
        try:
            yield
        finally:
            startup.cancel()
            # Wait for the worker: a model load still running after the app has gone could race
            # another load in this process (diffusers' empty-weight loading patches torch's
            # Module class while it runs), and queued work is cancelled, not left behind.
            engine.executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="Easel inference", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(
            InternalError("internal error while handling the request").body(), status_code=500
        )

    @app.get("/ping")
    async def ping() -> JSONResponse:
        if engine.ready:
            return JSONResponse({"status": "ready"})
        body: dict[str, Any] = {"status": "loading" if not engine.startup_error else "failed"}
        if engine.startup_error:
            body["detail"] = engine.startup_error
        return JSONResponse(body, status_code=503)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        raw = await request.body()  # bounded while streaming: BodyLimit below
        try:
            data = json.loads(raw or b"null")
        except ValueError as exc:
            raise BadRequest("body is not valid JSON", field="body") from exc
        except RecursionError as exc:
            raise BadRequest("body is nested too deeply", field="body") from exc
        if not isinstance(data, dict):
            raise BadRequest('body must be a JSON object {"task": ..., "payload": {...}}',
                             field="body")
        try:
            invocation = Invocation.model_validate(data)
            task_request = invocation.request()
        except ValidationError as exc:
            raise BadRequest(_validation_message(exc), field=_validation_field(exc)) from exc
        except RecursionError as exc:
            raise BadRequest("payload is nested too deeply", field="payload") from exc
        handler = engine.handlers()[invocation.task]
        if invocation.task in GENERATION_TASKS:
            if not engine.ready:
                raise NotReady(engine.startup_error or "the model is still loading; retry shortly")
            loop = asyncio.get_running_loop()
            try:
                result = await loop.run_in_executor(
                    engine.executor, handler, task_request, time.perf_counter()
                )
            except ApiError:
                raise
            except Exception as exc:
                log.exception("generation failed")
                raise InternalError(
                    f"internal error during {invocation.task} ({type(exc).__name__}); "
                    "see the endpoint logs"
                ) from exc
        else:
            result = handler(task_request, time.perf_counter())
        # an answer leaves only as its task's registry response model
        expected = TASKS[invocation.task].response
        if not isinstance(result, expected):
            log.error("%s answered a %s, not its %s", invocation.task, type(result).__name__,
                      expected.__name__)
            raise InternalError(f"internal error: the {invocation.task} answer does not match "
                                "the invocation contract; see the endpoint logs")
        body = result.model_dump_json().encode("utf-8")
        limit = engine.settings.max_response_bytes
        if len(body) > limit:
            raise ResponseTooLarge(
                f"response of {len(body)} bytes exceeds the limit of {limit} bytes "
                "(EASEL_MAX_RESPONSE_BYTES); ask for fewer or smaller images, or use an "
                "asynchronous endpoint",
                field="batch_size",
            )
        return Response(body, media_type="application/json")

    app.add_middleware(BodyLimit, limit_for=lambda _scope: request_body_limit(engine.settings),
                       body=_too_large)
    return app


def request_body_limit(settings: Settings) -> int:
    """The largest /invocations body read: 4 input images of EASEL_MAX_IMAGE_BYTES (as base64)
    plus 1 MiB of JSON; the read stops there, chunked or not."""
    return settings.max_image_bytes * 4 + 1024 * 1024


def _too_large(limit: int) -> bytes:
    error = ResponseTooLarge(
        f"request body larger than {limit} bytes (4 images of EASEL_MAX_IMAGE_BYTES + 1 MiB); "
        "send smaller images", field="body")
    return json.dumps(error.body()).encode("utf-8")


class NotReady(ApiError):
    status = 503


__all__ = ["Engine", "NotFound", "build_engine", "create_app"]
