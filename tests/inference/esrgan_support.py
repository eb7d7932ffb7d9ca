"""Random-weight ESRGAN (RRDBNet) upscaler files for tests, built with spandrel's own class.

spandrel imports torchvision at import time for two architectures these tests never load (LaMa,
RestoreFormer). The test venv's torch is the CPU build, and PyPI's torchvision wheel is built
against the CUDA one and cannot be imported beside it, so when torchvision is absent a stand-in
module offering just those names is registered first; the images install the real torchvision
(containers/inference/requirements.lock).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path


def _stand_in_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        def absent(*_args, **_kwargs):
            raise RuntimeError("torchvision is not installed in the test venv")

        functional = types.ModuleType("torchvision.transforms.functional")
        functional.InterpolationMode = types.SimpleNamespace(NEAREST=0, BILINEAR=2)
        functional.rotate = absent
        functional.normalize = absent
        transforms = types.ModuleType("torchvision.transforms")
        transforms.functional = functional
        package = types.ModuleType("torchvision")
        package.transforms = transforms
        sys.modules.update({"torchvision": package, "torchvision.transforms": transforms,
                            "torchvision.transforms.functional": functional})


def write_rrdbnet(path: Path, *, scale: int, seed: int = 0) -> Path:
    """A tiny random RRDBNet (ESRGAN's key layout) saved as ``.safetensors`` or ``.pth``."""
    _stand_in_torchvision()
    import torch
    from spandrel.architectures.ESRGAN import ESRGAN as RRDBNet

    torch.manual_seed(seed)
    net = RRDBNet(num_filters=8, num_blocks=1, scale=scale)
    state = {key: value.contiguous() for key, value in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
