"""The compile cache in S3 (moto): the first instance saves torch's compile artifacts under the
key, a later instance loads the same bytes before its warm-up; settings turn it off."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from easel_contracts.compile_cache import CompileCacheKey
from easel_contracts.s3uri import S3Uri
from easel_inference.app import build_engine, compile_cache_for
from easel_inference.compile_cache import CompileCache, model_hash
from easel_inference.fastpath import FastPathReport
from easel_inference.pipelines import PipelineManager
from easel_inference.settings import Settings

BUCKET = "data"
PREFIX = S3Uri.parse(f"s3://{BUCKET}/compile-cache/")
KEY = CompileCacheKey(gpu="NVIDIA L4", torch="2.13.0+cu130", diffusers="0.42.1",
                      model_hash="00112233aabbccdd")


class FakeArtifacts:
    """Stands in for torch.compiler's save/load_cache_artifacts (no compile on the CPU)."""

    def __init__(self, produced: bytes | None = None) -> None:
        self.produced = produced
        self.loaded: list[bytes] = []

    def save(self) -> bytes | None:
        return self.produced

    def load(self, data: bytes) -> None:
        self.loaded.append(data)


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_artifacts_saved_by_one_instance_load_in_the_next(s3) -> None:
    payload = bytes(range(256)) * 64
    first = CompileCache(prefix=PREFIX, key=KEY, artifacts=FakeArtifacts(produced=payload))
    assert first.load() is False  # nothing there yet: this instance compiles
    assert first.save() is True
    later_artifacts = FakeArtifacts()
    later = CompileCache(prefix=PREFIX, key=KEY, client=boto3.client("s3"),
                         artifacts=later_artifacts)
    assert later.load() is True
    assert later_artifacts.loaded == [payload]


def test_artifacts_are_stored_at_the_contract_key(s3) -> None:
    CompileCache(prefix=PREFIX, key=KEY, artifacts=FakeArtifacts(produced=b"kernels")).save()
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == [KEY.key()]


def test_an_instance_that_loaded_the_cache_does_not_upload_it_again(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key=KEY.key(), Body=b"kernels")
    cache = CompileCache(prefix=PREFIX, key=KEY, artifacts=FakeArtifacts(produced=b"new"))
    assert cache.load() is True
    assert cache.save() is False
    assert s3.get_object(Bucket=BUCKET, Key=KEY.key())["Body"].read() == b"kernels"


def test_unusable_artifacts_are_skipped_and_the_server_compiles(s3) -> None:
    s3.put_object(Bucket=BUCKET, Key=KEY.key(), Body=b"garbage")

    class Broken(FakeArtifacts):
        def load(self, data: bytes) -> None:
            raise RuntimeError("bad cache")

    assert CompileCache(prefix=PREFIX, key=KEY, artifacts=Broken()).load() is False


def test_no_artifacts_means_nothing_uploaded(s3) -> None:
    assert CompileCache(prefix=PREFIX, key=KEY, artifacts=FakeArtifacts(None)).save() is False
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_the_model_hash_follows_the_checkpoint(tmp_path: Path) -> None:
    one, two = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    one.write_bytes(b"a" * 2_000_000)
    two.write_bytes(b"a" * 1_999_999 + b"b")
    assert model_hash(one) != model_hash(two)
    assert model_hash(one) == model_hash(one)


class Recorded:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def load(self) -> bool:
        self.events.append("load")
        return False

    def save(self) -> bool:
        self.events.append("save")
        return True


def test_the_server_loads_the_cache_before_warm_up_and_saves_it_after(tiny_model_dir,
                                                                         tmp_path) -> None:
    events: list[str] = []
    engine = build_engine(Settings(model_dir=tiny_model_dir, default_model="tiny",
                                   lora_cache_dir=tmp_path / "cache"))
    engine.compile_cache = lambda model: Recorded(events)
    engine.warm_up = lambda name, pipe, **_: events.append("warm-up")  # type: ignore[method-assign]
    engine.start()
    assert engine.readiness.state == "ready"
    assert events == ["load", "warm-up", "save"]


def _manager(**settings) -> PipelineManager:
    return PipelineManager(Settings(device="cpu", **settings))


CACHED = {"fast_path": "on", "compile_cache_s3_uri": "s3://data/compile-cache/"}


def test_the_cache_is_used_where_the_fast_path_compiles_and_a_prefix_is_given() -> None:
    settings = Settings(device="cpu", **CACHED)
    assert compile_cache_for(settings, _manager(**CACHED)) is not None


@pytest.mark.parametrize("override", [
    {"compile_cache": False}, {"compile_cache_s3_uri": None}, {"fast_path": "off"},
    {"fast_graphs": False},
])
def test_the_cache_is_off_when_a_setting_says_so(override) -> None:
    values = {**CACHED, **override}
    assert compile_cache_for(Settings(device="cpu", **values), _manager(**values)) is None


def test_a_model_whose_compile_fell_back_gets_no_cache(tiny_model_dir) -> None:
    settings = Settings(device="cpu", model_dir=tiny_model_dir, **CACHED)
    finder = compile_cache_for(settings, _manager(**CACHED))

    class Model:
        path = tiny_model_dir
        fast_path = FastPathReport(applied=["fuse_qkv"], fallbacks={"cuda_graphs": "no"})

    assert finder(Model()) is None


def test_settings_read_the_cache_switch_and_prefix() -> None:
    settings = Settings.from_env({"EASEL_COMPILE_CACHE": "0",
                                  "EASEL_COMPILE_CACHE_S3_URI": "s3://data/compile-cache/"})
    assert settings.compile_cache is False
    assert settings.compile_cache_s3_uri == "s3://data/compile-cache/"


@pytest.mark.parametrize("on_request", [False, True])
def test_after_the_warm_up_new_shapes_compile_only_when_requests_may(tiny_model_dir, tmp_path,
                                                                      on_request) -> None:
    engine = build_engine(Settings(model_dir=tiny_model_dir, default_model="tiny",
                                   lora_cache_dir=tmp_path / "cache", fast_path="on",
                                   fast_graphs=False, fast_vae=False, warmup_sizes="off",
                                   fast_compile_on_request=on_request))  # no real compile on CPU
    engine.warm_up = lambda name, pipe, **_: None  # type: ignore[method-assign]
    engine.start()
    assert engine.readiness.state == "ready"
    assert engine.manager.get(None).fast_path.compile_new_shapes is on_request


def test_starting_an_engine_that_already_serves_changes_nothing(tiny_model_dir, tmp_path) -> None:
    """An app built around a started engine (the bench's HTTP row) starts it again: a no-op,
    not a failed start that would leave /ping at 503."""
    engine = build_engine(Settings(model_dir=tiny_model_dir, default_model="tiny",
                                   lora_cache_dir=tmp_path / "cache"))
    warmed: list[str] = []
    engine.warm_up = lambda name, pipe, **_: warmed.append(name)  # type: ignore[method-assign]
    engine.start()
    engine.start()
    assert engine.readiness.state == "ready" and warmed == ["tiny"]
