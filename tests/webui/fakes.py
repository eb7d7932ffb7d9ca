"""Recording stand-ins for the SageMaker, SageMaker-runtime, Application Auto Scaling and
CloudWatch clients (moto covers S3, DynamoDB, Secrets Manager and CloudWatch Logs)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

from botocore.exceptions import ClientError
from PIL import Image

from easel_contracts import invocations as inv
from easel_contracts.s3uri import S3Uri


def client_error(code: str, message: str, operation: str, **extra: Any) -> ClientError:
    response: dict[str, Any] = {"Error": {"Code": code, "Message": message}, **extra}
    return ClientError(response, operation)


def png_b64(color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def record(self, name: str, kwargs: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append((name, kwargs))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for call, kwargs in self.calls if call == name]


class FakeSageMaker(Recorder):
    """Endpoints and training jobs kept in memory; status set by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}

    def create_model(self, **kwargs: Any) -> dict[str, Any]:
        self.record("create_model", kwargs)
        return {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{kwargs['ModelName']}"}

    def create_endpoint_config(self, **kwargs: Any) -> dict[str, Any]:
        self.record("create_endpoint_config", kwargs)
        return {"EndpointConfigArn": "arn:config"}

    def create_endpoint(self, **kwargs: Any) -> dict[str, Any]:
        self.record("create_endpoint", kwargs)
        self.endpoints[kwargs["EndpointName"]] = {
            "EndpointName": kwargs["EndpointName"], "EndpointStatus": "Creating",
            "ProductionVariants": [],
        }
        return {"EndpointArn": "arn:endpoint"}

    def set_status(self, name: str, status: str, *, instances: int = 1,
                   failure: str = "") -> None:
        self.endpoints[name] = {
            "EndpointName": name, "EndpointStatus": status,
            "ProductionVariants": [{"VariantName": "AllTraffic",
                                    "CurrentInstanceCount": instances}],
            **({"FailureReason": failure} if failure else {}),
        }

    def describe_endpoint(self, **kwargs: Any) -> dict[str, Any]:
        self.record("describe_endpoint", kwargs)
        name = kwargs["EndpointName"]
        if name not in self.endpoints:
            raise client_error("ValidationException", f"Could not find endpoint {name}",
                               "DescribeEndpoint")
        return dict(self.endpoints[name])

    def delete_endpoint(self, **kwargs: Any) -> dict[str, Any]:
        self.record("delete_endpoint", kwargs)
        self.endpoints.pop(kwargs["EndpointName"], None)
        return {}

    def delete_endpoint_config(self, **kwargs: Any) -> dict[str, Any]:
        self.record("delete_endpoint_config", kwargs)
        return {}

    def delete_model(self, **kwargs: Any) -> dict[str, Any]:
        self.record("delete_model", kwargs)
        return {}

    def create_training_job(self, **kwargs: Any) -> dict[str, Any]:
        self.record("create_training_job", kwargs)
        name = kwargs["TrainingJobName"]
        if name in self.jobs:
            raise client_error("ResourceInUse", "exists", "CreateTrainingJob")
        self.jobs[name] = {"TrainingJobName": name, "TrainingJobStatus": "InProgress",
                           "SecondaryStatus": "Training",
                           # DescribeTrainingJob answers what the job was created with
                           "HyperParameters": dict(kwargs.get("HyperParameters") or {}),
                           "EnableManagedSpotTraining":
                               bool(kwargs.get("EnableManagedSpotTraining"))}
        return {"TrainingJobArn": f"arn:job/{name}"}

    def stop_training_job(self, **kwargs: Any) -> dict[str, Any]:
        self.record("stop_training_job", kwargs)
        name = kwargs["TrainingJobName"]
        if name not in self.jobs:
            raise client_error("ValidationException", "no such job", "StopTrainingJob")
        self.jobs[name]["TrainingJobStatus"] = "Stopping"
        return {}

    def describe_training_job(self, **kwargs: Any) -> dict[str, Any]:
        name = kwargs["TrainingJobName"]
        if name not in self.jobs:
            raise client_error("ValidationException", "no such job", "DescribeTrainingJob")
        return dict(self.jobs[name])


class FakeStream:
    """A response stream's ``Body``: PayloadPart events of the streaming contract's lines, one
    step ``step_delay`` seconds apart; notes how many steps it sent before it was closed."""

    def __init__(self, runtime: FakeRuntime, request: inv.Invocation) -> None:
        self.runtime = runtime
        self.request = request
        self.sent = 0
        self.closed = False

    def __iter__(self) -> Any:
        from easel_contracts.streaming import ErrorEvent, ResultEvent, StepEvent, encode_event

        payload = self.request.request()
        assert isinstance(payload, inv.GenerationRequest)
        refusal = self.runtime.refusal(payload)
        if refusal is not None:  # found by the worker once the stream has begun
            yield {"PayloadPart": {"Bytes": encode_event(ErrorEvent(status=400, **refusal))}}
            return
        for step in range(1, payload.steps + 1):
            if self.closed:
                return
            time.sleep(self.runtime.step_delay)
            self.sent = step
            event = StepEvent(step=step, steps=payload.steps,
                              eta_seconds=round(self.runtime.step_delay * (payload.steps - step),
                                                3) if step > 1 else None,
                              preview=png_b64((step * 10 % 256, 0, 0)))
            line = encode_event(event)
            # parts need not end at line ends: split each line in two
            yield {"PayloadPart": {"Bytes": line[:7]}}
            yield {"PayloadPart": {"Bytes": line[7:]}}
        answer = self.runtime._answer(self.request.model_dump(mode="json"))
        if self.request.task in self.runtime.raw_answers:  # off the contract: sent as it is
            yield {"PayloadPart": {"Bytes": json.dumps({"event": "result",
                                                        "answer": answer}).encode() + b"\n"}}
            return
        result = ResultEvent(answer=inv.GenerationResponse.model_validate(answer))
        yield {"PayloadPart": {"Bytes": encode_event(result)}}

    def close(self) -> None:
        self.closed = True


class FakeRuntime(Recorder):
    """invoke_endpoint answering A1111 shapes; generations also through
    invoke_endpoint_with_response_stream (`step_delay` apart; the streams it opened in
    `streams`)."""

    def __init__(self) -> None:
        super().__init__()
        self.step_delay = 0.0
        self.streams: list[FakeStream] = []
        self.delay = 0.0
        self.fail_with: str | None = None
        # the model server's status and error body when fail_with is set
        self.fail_status = 400
        self.fail_body: dict[str, Any] = {}
        self.controlnet_listing = True  # False: an endpoint image from before that task
        self.raw_answers: dict[str, Any] = {}  # task -> an answer off the contract
        self.release = threading.Event()
        self.release.set()

    s3: Any = None  # set by tests that use async endpoints

    def invoke_endpoint_async(self, **kwargs: Any) -> dict[str, Any]:
        """Reads the input from S3 and writes the answer where SageMaker would."""
        self.record("invoke_endpoint_async", kwargs)
        location = S3Uri.parse(kwargs["InputLocation"])
        bucket = location.bucket
        body = self.s3.get_object(Bucket=bucket, Key=location.key)["Body"].read()
        answer = self._answer(json.loads(body))
        out_key = f"async/out/{kwargs['EndpointName']}/{len(self.calls)}.out"
        self.s3.put_object(Bucket=bucket, Key=out_key, Body=json.dumps(answer).encode())
        return {"OutputLocation": f"s3://{bucket}/{out_key}", "InferenceId": "fake"}

    def invoke_endpoint_with_response_stream(self, **kwargs: Any) -> dict[str, Any]:
        self.record("invoke_endpoint_with_response_stream", kwargs)
        invocation = inv.Invocation.model_validate(json.loads(kwargs["Body"]))
        if not isinstance(invocation.request(), inv.GenerationRequest):
            raise client_error("ModelError", "does not stream", "InvokeEndpointWithResponseStream",
                               OriginalStatusCode=400, OriginalMessage='{"detail": "no"}')
        self.release.wait(timeout=30)
        if self.fail_with:  # a refusal before the stream starts (admission)
            raise self._model_error(self.fail_status, {"detail": self.fail_with, **self.fail_body})
        stream = FakeStream(self, invocation)
        with self.lock:
            self.streams.append(stream)
        return {"Body": stream, "ContentType": "application/jsonlines",
                "InvokedProductionVariant": "AllTraffic"}

    def generations(self) -> list[dict[str, Any]]:
        """The generation calls, streamed or not, in order."""
        return [kwargs for name, kwargs in self.calls
                if name in ("invoke_endpoint", "invoke_endpoint_with_response_stream")
                and json.loads(kwargs["Body"]).get("task") in inv.GENERATION_TASKS]

    def invoke_endpoint(self, **kwargs: Any) -> dict[str, Any]:
        self.record("invoke_endpoint", kwargs)
        answer = self._answer(json.loads(kwargs["Body"]))
        return {"Body": io.BytesIO(json.dumps(answer).encode()),
                "ContentType": "application/json"}

    @staticmethod
    def refusal(payload: inv.GenerationRequest) -> dict[str, Any] | None:
        """The error body of what the server refuses only once it works on the request: it
        knows its samplers (easel_inference.samplers.resolve_sampler)."""
        upscalers = (*inv.HR_UPSCALERS, *FakeRuntime.esrgan_models)
        if isinstance(payload, inv.Txt2ImgRequest) and payload.enable_hr and \
                payload.hr_upscaler not in upscalers:
            return {"error": "NotFound", "field": "hr_upscaler",
                    "detail": f"upscaler {payload.hr_upscaler!r} not found; available: "
                              f"{', '.join(upscalers)}"}
        if payload.sampler_name in (None, "Euler a", "k_euler_a"):
            return None
        return {"error": "BadRequest", "field": "sampler_name",
                "detail": f"unknown sampler_name {payload.sampler_name!r}; valid: Euler a"}

    @staticmethod
    def _model_error(status: int, body: dict[str, Any]) -> ClientError:
        """SageMaker's ModelError for a container answer of `status` with `body`."""
        kind = "client" if 400 <= status < 500 else "server"
        return client_error("ModelError", f"Received {kind} error ({status}) from primary",
                            "InvokeEndpoint", OriginalStatusCode=status,
                            OriginalMessage=json.dumps(body))

    def _answer(self, request: dict[str, Any]) -> Any:
        """The answer a model server gives, built through the invocation contract's models
        (so a shape change there shows up here too)."""
        invocation = inv.Invocation.model_validate(request)
        task, payload = invocation.task, invocation.request()
        if task in self.raw_answers:
            return self.raw_answers[task]
        answer: Any
        if isinstance(payload, inv.GenerationRequest):
            self.release.wait(timeout=30)
            if self.fail_with:
                raise self._model_error(self.fail_status,
                                        {"detail": self.fail_with, **self.fail_body})
            refusal = self.refusal(payload)
            if refusal is not None:
                raise self._model_error(400, refusal)
            answer = inv.GenerationResponse(
                images=[png_b64() for _ in range(payload.batch_size * payload.n_iter)],
                parameters=payload.model_dump(mode="json", exclude={"init_images", "mask"}),
                info=json.dumps({"seed": 1234, "prompt": payload.prompt,
                                 "sd_model_name": "tiny"}))
        elif task == "sd-models":
            answer = inv.SdModels([inv.SdModel(title="tiny.safetensors", model_name="tiny",
                                               filename="Stable-diffusion/tiny.safetensors")])
        elif task == "loras":
            answer = inv.Loras([inv.Lora(name="style", alias="style",
                                         path="Lora/style.safetensors")])
        elif task == "controlnet-models" and self.controlnet_listing:
            answer = inv.ControlNetModels(model_list=["control_sd15_canny"])
        elif task == "samplers":
            answer = inv.Samplers([inv.Sampler(name="Euler a", aliases=["k_euler_a"],
                                               options={})])
        elif task == "schedulers":
            answer = inv.Schedulers([inv.Scheduler(name="automatic", label="Automatic")])
        elif task == "options":
            answer = inv.Options(
                sd_model_checkpoint="tiny.safetensors", sd_checkpoints_loaded=["tiny"],
                model_load_seconds={"tiny": 0.1}, CLIP_stop_at_last_layers=1, sd_vae="Automatic",
                samples_format="png", device="cpu", dtype="float32",
                max_response_bytes=6 * 1024 * 1024, pipeline_budget=2,
                warmed_up=inv.WarmUp(model="tiny", width=64, height=64, steps=2, seconds=0.1))
        elif isinstance(payload, inv.ExtrasSingleImageRequest):
            answer = self.extras(payload)
        elif task == "upscalers":
            answer = inv.Upscalers([
                *(inv.Upscaler(name=name, model_name=None, model_path=None, scale=None)
                  for name in inv.EXTRAS_RESAMPLERS),
                *(inv.Upscaler(name=name, model_name="ESRGAN", model_path=f"ESRGAN/{name}.pth",
                               scale=4) for name in self.esrgan_models)])
        else:
            raise client_error("ModelError", "unknown task", "InvokeEndpoint")
        return answer.model_dump(mode="json")

    esrgan_models = ("tiny-x4",)

    def extras(self, payload: inv.ExtrasSingleImageRequest) -> inv.ExtrasSingleImageResponse:
        """The server's extras: the image resized to the size asked (PIL stands in for every
        upscaler); an unknown upscaler is the server's 404 naming those it has."""
        names = (*inv.EXTRAS_RESAMPLERS, *self.esrgan_models)
        if payload.upscaler_1 not in names:
            raise self._model_error(404, {
                "error": "NotFound", "field": "upscaler_1",
                "detail": f"upscaler {payload.upscaler_1!r} not found; available: "
                          f"{', '.join(names)}"})
        source = Image.open(io.BytesIO(base64.b64decode(payload.image.split(",", 1)[-1])))
        result = source.resize(payload.target_size(*source.size))
        buffer = io.BytesIO()
        result.save(buffer, format="PNG")
        return inv.ExtrasSingleImageResponse(
            image=base64.b64encode(buffer.getvalue()).decode(),
            html_info=f"<p>Postprocess upscaler: {payload.upscaler_1}</p>")


class FakeAutoscaling(Recorder):
    def register_scalable_target(self, **kwargs: Any) -> dict[str, Any]:
        self.record("register_scalable_target", kwargs)
        return {}

    def put_scaling_policy(self, **kwargs: Any) -> dict[str, Any]:
        self.record("put_scaling_policy", kwargs)
        return {"PolicyARN": f"arn:policy/{kwargs['PolicyName']}"}

    def delete_scaling_policy(self, **kwargs: Any) -> dict[str, Any]:
        self.record("delete_scaling_policy", kwargs)
        return {}

    def deregister_scalable_target(self, **kwargs: Any) -> dict[str, Any]:
        self.record("deregister_scalable_target", kwargs)
        return {}


class FakeCloudWatch(Recorder):
    def put_metric_alarm(self, **kwargs: Any) -> dict[str, Any]:
        self.record("put_metric_alarm", kwargs)
        return {}

    def delete_alarms(self, **kwargs: Any) -> dict[str, Any]:
        self.record("delete_alarms", kwargs)
        return {}
