"""The compile-cache key: one layout for the server (and the execution role's prefix)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from easel_contracts.compile_cache import COMPILE_CACHE_PREFIX, CompileCacheKey, key_part


def _key(**overrides) -> CompileCacheKey:
    values = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.13.0+cu130", "diffusers": "0.42.1",
              "model_hash": "0123456789abcdef"}
    values.update(overrides)
    return CompileCacheKey(**values)


def test_the_key_names_gpu_torch_diffusers_and_model_under_the_prefix() -> None:
    assert _key().key() == ("compile-cache/nvidia-h100-80gb-hbm3/torch-2.13.0+cu130/"
                            "diffusers-0.42.1/0123456789abcdef.bin")


def test_the_key_lives_under_the_compile_cache_prefix() -> None:
    assert _key().key().startswith(COMPILE_CACHE_PREFIX)


@pytest.mark.parametrize("field", ["gpu", "torch", "diffusers"])
def test_each_part_changes_the_key(field) -> None:
    assert _key(**{field: "other 1"}).key() != _key().key()


def test_another_model_has_another_key() -> None:
    assert _key(model_hash="fedcba9876543210").key() != _key().key()


def test_a_key_segment_cannot_climb_out_of_the_prefix() -> None:
    assert "/" not in key_part("../../models/x")
    assert ".." not in _key(gpu="../..x").key().split("/")


def test_a_model_hash_must_be_hex() -> None:
    with pytest.raises(ValidationError):
        _key(model_hash="../x")
