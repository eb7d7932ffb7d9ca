"""The SageMaker training layout under ``$EASEL_OPT_ML`` (default ``/opt/ml``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "/opt/ml"


@dataclass(frozen=True)
class JobPaths:
    root: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> JobPaths:
        env = os.environ if environ is None else environ
        return cls(Path(env.get("EASEL_OPT_ML") or DEFAULT_ROOT))

    @property
    def hyperparameters(self) -> Path:
        return self.root / "input" / "config" / "hyperparameters.json"

    @property
    def resource_config(self) -> Path:
        return self.root / "input" / "config" / "resourceconfig.json"

    def channel(self, name: str) -> Path:
        return self.root / "input" / "data" / name

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def progress(self) -> Path:
        return self.checkpoints / "progress.json"

    @property
    def previews(self) -> Path:
        return self.checkpoints / "preview"

    @property
    def generated_class_images(self) -> Path:
        """Class images made by the job; kept with the checkpoints so a restart reuses them."""
        return self.checkpoints / "class_images"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def failure(self) -> Path:
        return self.output / "failure"

    @property
    def scratch(self) -> Path:
        """Space for unpacking a model.tar.gz channel (not synced anywhere)."""
        return self.root / "input" / "scratch"
