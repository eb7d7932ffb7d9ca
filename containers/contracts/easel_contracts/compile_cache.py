"""The compile cache in S3: where an inference endpoint keeps torch's compile artifacts.

The first instance of an endpoint that compiles its fast path (``torch.compile``, Inductor
kernels and CUDA graphs) saves the artifacts (``torch.compiler.save_cache_artifacts``) under
``compile-cache/`` in the data bucket; a later instance with the same GPU, torch, diffusers and
model downloads them before its warm-up and skips the compile work. The portal hands the prefix
to the endpoint (``EASEL_COMPILE_CACHE_S3_URI``); the SageMaker execution role may read and write
that prefix and no other new one (stacks/sagemaker_access.py). ``EASEL_COMPILE_CACHE=0`` turns it
off.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

COMPILE_CACHE_PREFIX = "compile-cache/"
COMPILE_CACHE_URI_ENV = "EASEL_COMPILE_CACHE_S3_URI"
COMPILE_CACHE_ENV = "EASEL_COMPILE_CACHE"
_PART = re.compile(r"[^a-z0-9.+_-]+")


def key_part(value: str) -> str:
    """One path segment of a key: lower case, runs of other characters as ``-``."""
    part = _PART.sub("-", value.strip().lower()).strip("-.")
    if not part:
        raise ValueError(f"{value!r} gives an empty compile-cache key segment")
    return part[:80]


class CompileCacheKey(BaseModel):
    """What compiled kernels depend on: the GPU, torch, diffusers and the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str = Field(min_length=1, description="torch.cuda.get_device_name(), e.g. NVIDIA H100")
    torch: str = Field(min_length=1, description="torch.__version__")
    diffusers: str = Field(min_length=1, description="diffusers.__version__")
    model_hash: str = Field(pattern=r"^[0-9a-f]{8,64}$")

    def key(self, prefix: str = COMPILE_CACHE_PREFIX) -> str:
        """``compile-cache/<gpu>/torch-<v>/diffusers-<v>/<model hash>.bin`` under ``prefix``."""
        base = prefix if prefix.endswith("/") or not prefix else f"{prefix}/"
        return (f"{base}{key_part(self.gpu)}/torch-{key_part(self.torch)}/"
                f"diffusers-{key_part(self.diffusers)}/{self.model_hash}.bin")
