"""FastAPI app: SageMaker ``/ping`` and ``/invocations`` with A1111 payloads, and ``/health``.

Model loading and every generation run on one worker thread; generation requests are admitted to
its bounded queue first (``admission``), each with a deadline checked between steps. Listings run
on a pool of their own. ``/ping`` and ``/health`` read state kept in memory on the event loop, so
neither waits for a pool that load can fill.
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
from pathlib import Path
from typing import Any

import torch
from easel_contracts.bodylimit import BodyLimit
from easel_contracts.families import ModelFamily
from easel_contracts.form_sizes import Size, offered_sizes
from easel_contracts.instances import this_host_problem
from easel_contracts.invocations import (
    GENERATION_TASKS,
    IMAGE_TASKS,
    MIN_SIDE,
    TASKS,
    ControlNetModels,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    GenerationRequest,
    GenerationResponse,
    Invocation,
    ListingRequest,
    Loras,
    Options,
    Samplers,
    Scheduler,
    Schedulers,
    SdModel,
    SdModels,
    SdVae,
    SdVaes,
    Txt2ImgRequest,
    WarmUp,
)
from easel_contracts.readiness import Health, Ping, ping_status
from easel_contracts.s3uri import S3Uri
from easel_contracts.streaming import (
    STREAM_CONTENT_TYPE,
    STREAM_PATH,
    ErrorEvent,
    ResultEvent,
    encode_event,
)
from easel_contracts.workcap import MeasuredSpeed, speed_from_runs
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from .admission import Admission, Clock, Job, Readiness
from .compile_cache import CompileCache, runtime_key
from .errors import (
    ApiError,
    BadRequest,
    InternalError,
    NotFound,
    ResponseTooLarge,
    Unavailable,
)
from .generation import StepHook, generate, model_request
from .loader import flow_family_of
from .lora import LoraLibrary
from .pipelines import PipelineManager, native_side, short_hash
from .progress import StepReport, StepReporter
from .samplers import SCHEDULE_TYPES, sampler_listing
from .settings import Settings

log = logging.getLogger("easel.inference")
Handler = Callable[[BaseModel, float], BaseModel]
LISTING_THREADS = 4
# the speed is timed on two single-image runs at the native size, after the first-use run
SPEED_RUNS = (2, 6)
SPEED_MIN_HALF_SIDE = 256  # below it the second timed size is twice the native side, not half
# a compiled size is captured on its second UNet call and replayed from its third
SIZE_WARMUP_STEPS = 3
STARTUP_MARGIN_S = 60.0  # of the start-up budget, kept back for the last /ping to land
# on a CPU, a UNet this big is timed once, at the smallest size (warm_up_cpu); SD1.5's: 860 M
CPU_BIG_UNET_PARAMETERS = 100_000_000
DISCONNECT_POLL_S = 0.5


@dataclass
class Engine:
    settings: Settings
    manager: PipelineManager
    library: LoraLibrary
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-gen")
    )
    listing_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=LISTING_THREADS,
                                                   thread_name_prefix="easel-list"))
    readiness: Readiness = field(default_factory=Readiness)
    step_hook: StepHook | None = None
    cuda_probe: Callable[[], str | None] = field(default=lambda: this_host_problem(torch))
    """Why this host cannot run the image's CUDA build (None: it can); checked when required."""
    clock: Clock = time.monotonic
    """Deadlines and the speed timing read this clock (tests give a fake one)."""

    compile_cache: Callable[[Any], CompileCache | None] | None = None
    """Given the loaded default model, its compile cache in S3 (None: no cache for it)."""

    warmed_up: WarmUp | None = None
    speed: MeasuredSpeed | None = None
    native_runs: tuple[tuple[int, float], tuple[int, float]] | None = None
    """The speed's timed runs at the native size: (steps, seconds), fewer then more steps."""
    admission: Admission = field(init=False)

    warmed_sizes: list[Size] = field(default_factory=list)
    started_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(limit=self.settings.max_queue,
                                   deadline_s=self.settings.deadline_seconds)
        self.started_at = self.clock()

    @property
    def ready(self) -> bool:
        return self.readiness.state in ("ready", "degraded")

    @property
    def startup_error(self) -> str | None:
        return self.readiness.detail if self.readiness.state == "failed" else None

    def start(self) -> None:
        """Load the default model, warm it up and time its speed (runs on the worker thread).
        An engine already serving (started before its app, as the bench's) stays as it is."""
        if self.ready:
            return
        if self.settings.require_cuda:
            problem = self.cuda_probe()
            if problem:
                # /ping stays 503 with this detail: SageMaker fails the endpoint, never a CPU run
                self.readiness.move("failed", problem)
                log.error("startup failed: %s", problem)
                return
        try:
            model = self.manager.get(None)
            cache = self.compile_cache(model) if self.compile_cache is not None else None
            if cache is not None:
                cache.load()  # before the warm-up, whose compile then reads the artifacts
            if self.settings.warmup:
                self.readiness.move("warming", f"warming up {model.name}")
                graphs = self.serves_graphs(model)
                self.warm_up(model.name, model.pipe, other_size=not graphs)
                if self.warms_sizes(model):
                    self.warm_sizes(model.name, model.pipe)
                if graphs:
                    self.time_warmed_size(model.name, model.pipe)
                # from now on a shape the warm-up missed runs eagerly, not a minute's compile
                # inside a request's deadline (EASEL_FAST_COMPILE_ON_REQUEST=1 compiles it)
                model.fast_path.compile_new_shapes = self.settings.fast_compile_on_request
            if cache is not None:
                cache.save()  # the first instance: its compile, for the next ones
            self.readiness.move("ready")
            log.info("ready: %s", model.name)
        except ApiError as exc:
            self.readiness.move("failed", exc.message)
            log.error("startup failed: %s", exc.message)
        except Exception as exc:  # keep the process up; /ping reports the failure
            self.readiness.move("failed", f"{type(exc).__name__}: {exc}")
            log.exception("startup failed")

    def warm_up(self, name: str, pipe: Any, *, other_size: bool = True) -> None:
        """A first-use run at the model's native size, then timed runs for its speed: two at
        that size and, with ``other_size``, one at another (half the side, or twice a small one)
        for how the cost of a step grows with the pixels. Serving CUDA graphs, that other size
        would be a compile of its own (30-60 s for SD1.5) for a shape the form never offers, so
        ``start`` leaves it out here and times a size the sizes warm-up compiled instead
        (``time_warmed_size``)."""
        warm = warmup_request(pipe, name, max_pixels=self.settings.max_pixels)
        if self.manager.device == "cpu":
            self.warm_up_cpu(name, pipe, warm)
            return
        seconds = self.timed_run(warm, warm.steps)
        self.warmed_up = WarmUp(model=name, width=warm.width, height=warm.height,
                                steps=warm.steps, seconds=round(seconds, 3))
        few, many = SPEED_RUNS
        self.native_runs = (few, self.timed_run(warm, few)), (many, self.timed_run(warm, many))
        side = warm.width // 2 if warm.width // 2 >= SPEED_MIN_HALF_SIDE else warm.width * 2
        other = None
        if other_size and side * side <= self.settings.max_pixels:
            other = (side, side, many, self.timed_run(warm, many, side, side))
        self.set_speed(name, warm, self.native_runs, other)

    def time_warmed_size(self, name: str, pipe: Any) -> None:
        """The speed's second size when serving CUDA graphs: the first size the form offers
        (within the pixel budget) other than the native one that ``warm_sizes`` compiled, timed
        with the native long run's steps; its compile is paid already, so the run times the
        replayed graph, as requests will.

        With no such size (EASEL_WARMUP_SIZES=off, or the size was left for the start-up
        budget) the speed stays as ``warm_up`` set it from the native size alone:
        ``speed_from_runs`` without another size has no squared term, so a step's cost grows
        linearly with the pixels from the native size's. That under-counts attention above the
        native size (SD1.5's 512x768 is 1.5 times its pixels), and such a size, not warmed,
        runs eagerly, slower than the graphs timed: the cap errs towards admitting there."""
        warm = warmup_request(pipe, name, max_pixels=self.settings.max_pixels)
        native = (warm.width, warm.height)
        size = next((size for size in self.warmed_sizes if size != native), None)
        if size is None or self.native_runs is None:
            log.info("speed of %s: no other warmed size to time; linear in the pixels", name)
            return
        width, height = size
        many = SPEED_RUNS[1]
        seconds = self.timed_run(warm, many, width, height)
        self.set_speed(name, warm, self.native_runs, (width, height, many, seconds))

    def timed_run(self, warm: Txt2ImgRequest, steps: int, width: int | None = None,
                  height: int | None = None) -> float:
        """Seconds of one warm-up generation of ``steps`` (at another size when given)."""
        update: dict[str, int] = {"steps": steps}
        if width is not None and height is not None:
            update.update(width=width, height=height)
        started = self.clock()
        generate(warm.model_copy(update=update), task="txt2img", manager=self.manager,
                 library=self.library, settings=self.settings, step_hook=self.step_hook)
        return self.clock() - started

    def set_speed(self, name: str, warm: Txt2ImgRequest,
                  runs: tuple[tuple[int, float], tuple[int, float]],
                  other: tuple[int, int, int, float] | None) -> None:
        short, long = runs
        self.speed = speed_from_runs(model=name, device=str(self.manager.device),
                                     width=warm.width, height=warm.height, short=short,
                                     long=long, other=other)
        log.info("speed of %s on %s: %.3g s a %dx%d step (second size: %s)", name,
                 self.manager.device, self.speed.step_seconds(warm.width * warm.height),
                 warm.width, warm.height, f"{other[0]}x{other[1]}" if other else "none")

    def serves_graphs(self, model: Any) -> bool:
        """Whether the model is served with the fast path's CUDA graphs on a GPU, where each new
        latent shape is an Inductor compile."""
        return self.manager.device != "cpu" and "cuda_graphs" in model.fast_path.applied

    def warms_sizes(self, model: Any) -> bool:
        """Whether the warm-up covers every size the form offers: with the fast path's CUDA
        graphs (each size its own compile), or when EASEL_WARMUP_SIZES=on."""
        mode = self.settings.warmup_sizes
        return mode == "on" or (mode == "auto" and "cuda_graphs" in model.fast_path.applied)

    def warm_sizes(self, name: str, pipe: Any) -> None:
        """A short run at each size the portal's form offers for the model's family (in its
        order), while /ping says warming; a size whose estimated time would end past the start-up
        budget (EASEL_STARTUP_BUDGET_SECONDS, SageMaker's health-check timeout) is left for its
        first request, so the endpoint still turns healthy in time."""
        warm = warmup_request(pipe, name, max_pixels=self.settings.max_pixels)
        first = self.warmed_up.seconds if self.warmed_up else 0.0
        native = warm.width * warm.height
        ends = self.started_at + self.settings.startup_budget_seconds - STARTUP_MARGIN_S
        for width, height in offered_sizes(served_family(pipe)):
            if width * height > self.settings.max_pixels or (width, height) in self.warmed_sizes:
                continue
            if (width, height) == (warm.width, warm.height):
                self.warmed_sizes.append((width, height))  # the first-use run covered it
                continue
            estimate = first * width * height / native
            now = self.clock()
            if now + estimate > ends:
                log.warning("warm-up: %dx%d skipped: about %.0f s of work would end past the "
                            "start-up budget (%d s, EASEL_STARTUP_BUDGET_SECONDS)", width, height,
                            estimate, self.settings.startup_budget_seconds)
                continue
            self.readiness.move("warming", f"warming up {name} at {width}x{height}")
            generate(warm.model_copy(update={"width": width, "height": height,
                                             "steps": SIZE_WARMUP_STEPS}),
                     task="txt2img", manager=self.manager, library=self.library,
                     settings=self.settings, step_hook=self.step_hook)
            self.warmed_sizes.append((width, height))
            log.info("warm-up: %dx%d in %.1f s", width, height, self.clock() - now)

    def with_model_defaults(self, request: GenerationRequest) -> GenerationRequest:
        """The request with its model family's defaults (SD3.5/FLUX.1 size, steps, guidance)
        when that model is loaded, so the work cap counts what will run."""
        model = self.manager.peek(request.override_settings.sd_model_checkpoint)
        return request if model is None else model_request(request, model)[0]

    def warm_up_cpu(self, name: str, pipe: Any, native: Txt2ImgRequest) -> None:
        """On a CPU a step at the native size takes minutes (SD1.5 at 512x512 on 2 cores), and
        so would the GPU's warm-up: here the runs are of 1 step at the smallest size, their
        whole seconds counted as step work.

        A big model (SD1.5 and up) runs once: its step's fixed cost (reading every weight)
        dominates the small sizes, so scaling with the pixels over-estimates larger ones, and
        another size would show nothing and cost as much again. A small model runs once for its
        first use, then is timed at that size and at twice its side, where a cost growing
        faster than the pixels (attention) shows. Beyond the native size (or the one size
        timed) the estimate grows with the square of the pixels too: the work cap errs towards
        refusing."""

        def timed(side: int) -> float:
            started = self.clock()
            generate(native.model_copy(update={"steps": 1, "width": side, "height": side}),
                     task="txt2img", manager=self.manager, library=self.library,
                     settings=self.settings, step_hook=self.step_hook)
            return self.clock() - started

        first = timed(MIN_SIDE)
        self.warmed_up = WarmUp(model=name, width=MIN_SIDE, height=MIN_SIDE, steps=1,
                                seconds=round(first, 3))
        seconds, side, other = [first], 2 * MIN_SIDE, None
        denoiser = getattr(pipe, "unet", None) or pipe.transformer  # SD3.5/FLUX.1: a transformer
        big = sum(p.numel() for p in denoiser.parameters()) >= CPU_BIG_UNET_PARAMETERS
        if not big and side * side <= self.settings.max_pixels:
            seconds = [timed(MIN_SIDE), timed(side)]
            other = (side, side, 1, seconds[1])
        speed = speed_from_runs(model=name, device="cpu", width=MIN_SIDE, height=MIN_SIDE,
                                short=(1, seconds[0]), other=other)
        timed_pixels = side * side if other else MIN_SIDE * MIN_SIDE
        native_pixels = native.width * native.height
        if native_pixels > timed_pixels or other is None:
            # Attention over the latent's tokens grows with the square of the pixels, which
            # the small sizes do not show in a big model (SD1.5 on 2 cores: a step costs 18 s
            # at 64x64, 23 s at 256x256, 240 s at 512x512): from the native size on (or the one
            # size timed), the estimate grows so too.
            speed = speed.model_copy(update={
                "seconds_per_squared_pixel_step": speed.seconds_per_squared_pixel_step
                + speed.seconds_per_pixel_step / max(native_pixels, timed_pixels)})
        self.speed = speed
        log.info("speed of %s on the cpu: at most %.3g s a %dx%d step (%s)", name,
                 self.speed.step_seconds(native_pixels), native.width, native.height,
                 ", ".join(f"{run:.1f} s" for run in seconds))

    def admit(self, request: GenerationRequest) -> Job:
        return self.admission.admit(request, now=self.clock(), clock=self.clock,
                                    speed=self.speed)

    def health(self) -> Health:
        return Health(status=self.readiness.state, detail=self.readiness.detail,
                      since=self.readiness.since, model=self.manager.current,
                      deadline_seconds=self.settings.deadline_seconds,
                      queue=self.admission.record(self.clock(), timed=self.speed is not None),
                      speed=self.speed)

    def handlers(self) -> dict[str, Handler]:
        """Each task the server serves -> what answers it, given the validated request and the
        time it arrived; the answer is the task's registry response model."""
        return {
            "txt2img": self.generation("txt2img"),
            "img2img": self.generation("img2img"),
            "sd-models": lambda _request, _arrived: self.sd_models(),
            "sd-vae": lambda _request, _arrived: SdVaes([
                SdVae(model_name=name, filename=self.relative(path))
                for name, path in self.manager.vae_files().items()
            ]),
            "loras": lambda _request, _arrived: Loras(self.library.listing()),
            "controlnet-models": lambda _request, _arrived: ControlNetModels(
                model_list=list(self.manager.controlnet_files())
            ),
            "samplers": lambda request, _arrived: self.samplers(request),
            "schedulers": lambda _request, _arrived: Schedulers(
                [Scheduler(name=s.lower(), label=s) for s in SCHEDULE_TYPES]
            ),
            "options": lambda _request, _arrived: self.options(),
            "upscalers": lambda _request, _arrived: self.manager.upscalers.listing(),
            "extra-single-image": self.extras,
        }

    def extras(self, request: BaseModel, arrived: float, job: Job | None = None
               ) -> ExtrasSingleImageResponse:
        """Upscale one image (on the worker thread); ``job`` carries its deadline."""
        if not isinstance(request, ExtrasSingleImageRequest):
            raise TypeError("extra-single-image takes an ExtrasSingleImageRequest")
        job = job or self.image_job()
        return self.manager.upscalers.extras(request, job.check)

    def samplers(self, request: BaseModel) -> Samplers:
        """The samplers the endpoint's checkpoints take together, or, for a ``checkpoint``, the
        ones its family takes (flow-matching for SD3.5 / FLUX.1, every A1111 sampler for the
        others); a checkpoint the endpoint lacks is a 400 naming those it has."""
        if not isinstance(request, ListingRequest):
            raise TypeError("samplers takes a ListingRequest")
        found = self.manager.checkpoints()
        if request.checkpoint is None:
            return sampler_listing([flow_family_of(path) for path in found.values()])
        name = self.manager.lookup_name(request.checkpoint, found)
        if name is None:
            raise BadRequest(f"checkpoint {request.checkpoint!r} is not on this endpoint; it has: "
                             f"{', '.join(found) or 'none'}", field="checkpoint")
        return sampler_listing([flow_family_of(found[name])])

    def image_job(self) -> Job:
        return Job(arrived=self.clock(), deadline_s=self.settings.deadline_seconds,
                   clock=self.clock)

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
                filename=self.relative(path),
                config=self.relative(config) if config and config.is_file() else None,
            ))
        return SdModels(models)

    def relative(self, path: Path) -> str:
        """A listed file as a path under the model folder: no server path leaves the server."""
        return path.relative_to(self.settings.model_dir).as_posix()

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
            speed=self.speed,
            deadline_seconds=self.settings.deadline_seconds,
        )

    def generation(self, task: str) -> Handler:
        def run(request: BaseModel, arrived: float, job: Job | None = None,
                report: StepReport | None = None) -> GenerationResponse:
            """Run ``request`` (on the worker thread); ``job``, from ``admit``, carries its
            deadline and leaves the queue when this returns; ``report`` hears of each step (a
            streamed request)."""
            if not isinstance(request, GenerationRequest):
                raise TypeError(f"{task} takes a GenerationRequest")
            job = job or Job(arrived=self.clock(), deadline_s=self.settings.deadline_seconds,
                             clock=self.clock)
            self.admission.started(job, self.clock())
            try:
                answer = generate(request, task=task, manager=self.manager,
                                  library=self.library, settings=self.settings,
                                  step_hook=self.step_hook, stop=job.check, queued_at=arrived,
                                  report=report)
            except Unavailable as exc:  # out of GPU memory: serving goes on, with the reason
                self.readiness.move("degraded", exc.message)
                raise
            finally:
                self.admission.done(job)
            self.readiness.recover()
            return answer

        return run


def served_family(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline, as far as the sizes it is offered at go."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return ModelFamily.SDXL
    side = int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))
    return ModelFamily.SD2 if side >= 768 else ModelFamily.SD1


def warmup_request(pipe: Any, model_name: str, *, max_pixels: int) -> Txt2ImgRequest:
    """A 2-step generation at the model's native size (512 for SD1.5, 768 for SD2-v, 1024 for
    SDXL), so the first real request does not pay for first-use work at that size (kernel
    selection, allocator growth); smaller when the pixel budget is smaller."""
    side = native_side(pipe)
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
    return Engine(settings=settings, manager=manager, library=library,
                  compile_cache=compile_cache_for(settings, manager))


def compile_cache_for(settings: Settings,
                      manager: PipelineManager) -> Callable[[Any], CompileCache | None] | None:
    """How the engine finds its compile cache: only where the fast path compiles (CUDA graphs
    on) and the portal gave a prefix, unless EASEL_COMPILE_CACHE=0."""
    options = manager.fast_options
    if not (settings.compile_cache and settings.compile_cache_s3_uri and options.enabled
            and options.cuda_graphs):
        return None
    prefix = S3Uri.parse(settings.compile_cache_s3_uri)

    def cache(model: Any) -> CompileCache | None:
        if "cuda_graphs" not in model.fast_path.applied:
            return None
        return CompileCache(prefix=prefix, key=runtime_key(model.path, str(manager.device)))

    return cache


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
            engine.listing_executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="Easel inference", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(
            InternalError("internal error while handling the request").body(), status_code=500
        )

    @app.get("/ping")
    async def ping() -> JSONResponse:
        state = engine.readiness.state
        body = Ping(status=state, detail=engine.readiness.detail)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=ping_status(state))

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(engine.health().model_dump(mode="json"))

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        arrived = time.perf_counter()
        invocation, task_request = await _read_invocation(request)
        handler = engine.handlers()[invocation.task]
        loop = asyncio.get_running_loop()
        if invocation.task in GENERATION_TASKS:
            if not engine.ready:
                raise NotReady(engine.readiness.detail
                               or f"the server is {engine.readiness.state}; retry shortly")
            assert isinstance(task_request, GenerationRequest)
            task_request = engine.with_model_defaults(task_request)
            job = engine.admit(task_request)  # refused here when it cannot finish in time
            try:
                work = loop.run_in_executor(engine.executor, handler, task_request, arrived, job)
            except BaseException:
                engine.admission.done(job)
                raise
            try:
                result = await _answer_or_cancel(work, request, job)
            except ApiError:
                raise
            except Exception as exc:
                log.exception("generation failed")
                raise InternalError(
                    f"internal error during {invocation.task} ({type(exc).__name__}); "
                    "see the endpoint logs"
                ) from exc
        elif invocation.task in IMAGE_TASKS:  # on the GPU's worker thread, with a deadline
            job = engine.image_job()
            work = loop.run_in_executor(engine.executor, handler, task_request, arrived, job)
            result = await _answer_or_cancel(work, request, job)
        else:
            result = await loop.run_in_executor(engine.listing_executor, handler, task_request,
                                                arrived)
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

    @app.post(STREAM_PATH)
    async def invocations_stream(request: Request) -> Response:
        """SageMaker's InvokeEndpointWithResponseStream: a generation's step events, then its
        result, as JSON lines (``easel_contracts.streaming``). Refusals before the work starts
        are answered as ``/invocations`` answers them; closing the stream stops the work at its
        next step."""
        arrived = time.perf_counter()
        invocation, task_request = await _read_invocation(request)
        if not isinstance(task_request, GenerationRequest):
            raise BadRequest(f"task {invocation.task!r} does not stream; only "
                             f"{', '.join(GENERATION_TASKS)} do (call /invocations for it)",
                             field="task")
        if not engine.ready:
            raise NotReady(engine.readiness.detail
                           or f"the server is {engine.readiness.state}; retry shortly")
        job = engine.admit(task_request)
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        reporter = StepReporter(lambda line: loop.call_soon_threadsafe(lines.put_nowait, line))
        try:
            work = loop.run_in_executor(engine.executor, engine.handlers()[invocation.task],
                                        task_request, arrived, job, reporter)
        except BaseException:
            engine.admission.done(job)
            raise
        # the work's end is queued after its last step event (both reach the loop in order)
        work.add_done_callback(lambda _: lines.put_nowait(None))

        def closed() -> None:
            if not work.done():
                log.info("stream closed by its client; stopping its generation")
                job.cancel("the client closed the stream")

        return EventStream(_stream_events(work, lines, invocation.task), on_close=closed)

    app.add_middleware(BodyLimit, limit_for=lambda _scope: request_body_limit(engine.settings),
                       body=_too_large)
    return app


async def _read_invocation(request: Request) -> tuple[Invocation, BaseModel]:
    """The envelope and its task's validated request; a ``BadRequest`` that names the field."""
    raw = await request.body()  # bounded while streaming: BodyLimit
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
    return invocation, task_request


def request_body_limit(settings: Settings) -> int:
    """The largest /invocations body read: 4 input images of EASEL_MAX_IMAGE_BYTES (as base64)
    plus 1 MiB of JSON; the read stops there, chunked or not."""
    return settings.max_image_bytes * 4 + 1024 * 1024


def _too_large(limit: int) -> bytes:
    error = ResponseTooLarge(
        f"request body larger than {limit} bytes (4 images of EASEL_MAX_IMAGE_BYTES + 1 MiB); "
        "send smaller images", field="body")
    return json.dumps(error.body()).encode("utf-8")


async def _answer_or_cancel(work: asyncio.Future[Any], request: Request, job: Job) -> Any:
    """The worker's answer; if the client closes the connection first, the job is told to stop
    at its next check (the worker then frees itself for the next request)."""
    while True:
        done, _ = await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
        if done:
            return work.result()
        if job.reason is None and await request.is_disconnected():
            log.info("client left; stopping its generation")
            job.cancel("the client closed the connection")


async def _stream_events(work: asyncio.Future[Any], lines: asyncio.Queue[bytes | None],
                         task: str) -> AsyncIterator[bytes]:
    """The step lines as the worker sends them, then one ``result`` or ``error`` line."""
    while (line := await lines.get()) is not None:
        yield line
    final: ResultEvent | ErrorEvent
    try:
        result = work.result()
        if not isinstance(result, GenerationResponse):
            raise InternalError(f"internal error: the {task} answer does not match the "
                                "invocation contract; see the endpoint logs")
        final = ResultEvent(answer=result)
    except ApiError as exc:
        final = ErrorEvent(status=exc.status, error=type(exc).__name__,
                           detail=exc.message[:4000], field=exc.field)
    except Exception as exc:  # the client gets a line, the log the traceback
        log.exception("streamed generation failed")
        final = ErrorEvent(status=500, error="InternalError",
                           detail=f"internal error during {task} ({type(exc).__name__}); see "
                                  "the endpoint logs")
    yield encode_event(final)


class EventStream(Response):
    """A chunked ``200`` whose body is ``events``; ``on_close`` runs when it ends, whether the
    events ran out or the client left (a disconnect or a failed write) first."""

    def __init__(self, events: AsyncIterator[bytes], *, on_close: Callable[[], None]) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", STREAM_CONTENT_TYPE.encode()),
                            (b"cache-control", b"no-store")]
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def write() -> None:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async for chunk in self._events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        writer, listener = asyncio.ensure_future(write()), asyncio.ensure_future(listen())
        try:
            await asyncio.wait({writer, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._on_close()
            for task in (writer, listener):
                task.cancel()
            results = await asyncio.gather(writer, listener, return_exceptions=True)
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()
        failure = results[0]
        if isinstance(failure, Exception) and not isinstance(failure, OSError):
            log.error("writing the stream failed: %s", type(failure).__name__)


class NotReady(ApiError):
    status = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


__all__ = ["Engine", "NotFound", "build_engine", "create_app"]
