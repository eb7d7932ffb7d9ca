"""Class images for prior preservation: the ``class`` channel, topped up by generation."""

from __future__ import annotations

from typing import Any

from easel_contracts.hyperparameters import HyperParameters

from easel_training.images import ImageRecord, load_image_records
from easel_training.paths import JobPaths
from easel_training.sampling import CLASS_IMAGE_PATTERN, generate_class_images
from easel_training.stopping import StopRequest


def prepare_class_records(*, hp: HyperParameters, paths: JobPaths, pipe: Any, resolution: int,
                          min_side: int, accelerator: Any, stop: StopRequest,
                          ) -> list[ImageRecord] | None:
    """Up to ``num_class_images`` class images; ``None`` if a stop came during generation."""
    provided = load_image_records(paths.channel("class"), channel="class", min_side=min_side,
                                  use_captions=hp.use_captions, required=False)
    provided = provided[:hp.num_class_images]
    missing = hp.num_class_images - len(provided)
    if missing <= 0:
        return provided
    folder = paths.generated_class_images
    names = [CLASS_IMAGE_PATTERN.format(index=i) for i in range(missing)]
    if accelerator.is_main_process:
        todo = [i for i, name in enumerate(names) if not (folder / name).is_file()]
        if todo:
            print(f"easel-train generating {len(todo)} class image(s) for prior preservation",
                  flush=True)
            pipe.to(accelerator.device)
            generate_class_images(pipe, prompt=hp.class_prompt, indices=todo, folder=folder,
                                  resolution=resolution, steps=hp.class_inference_steps,
                                  seed=hp.seed, device=accelerator.device,
                                  autocast=accelerator.autocast(),
                                  should_stop=lambda: stop.requested)
    accelerator.wait_for_everyone()
    if stop.requested:
        return None
    generated = [
        record for record in load_image_records(folder, channel="class (generated)",
                                                use_captions=False)
        if record.path.name in set(names)
    ]
    return provided + sorted(generated, key=lambda r: r.path.name)
