"""Stand-ins several inference test modules share (imported by name: tests/inference is on
sys.path while its tests run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from easel_inference.lora import LoraLibrary
from easel_inference.lora_builder import random_diffusers_lora, random_kohya_lora


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def two_lora_library(pipe: Any, folder: Path) -> LoraLibrary:
    """``kohya`` and ``peft``: random LoRAs for ``pipe`` in both file formats, in ``folder``."""
    save_file(random_kohya_lora(pipe, seed=1), str(folder / "kohya.safetensors"))
    save_file(random_diffusers_lora(pipe, seed=2), str(folder / "peft.safetensors"))
    return LoraLibrary(folder)
