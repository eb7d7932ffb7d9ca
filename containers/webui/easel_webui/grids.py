"""The grid image of a batch count: the images of one job tiled near-square, as AUTOMATIC1111
lays them out (rows = round(sqrt(n)), filled row by row), answered first and saved beside them."""

from __future__ import annotations

import base64
import io
import json
import math

from PIL import Image, PngImagePlugin

from easel_contracts.infotext import PNG_TEXT_KEY
from easel_contracts.invocations import GenerationResponse


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of a grid of ``count`` images."""
    rows = min(count, max(1, round(math.sqrt(count))))
    return rows, math.ceil(count / rows)


def image_grid(images: list[Image.Image]) -> Image.Image:
    """The images tiled in cells the size of the first, row by row; empty cells stay black."""
    rows, cols = grid_shape(len(images))
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((index % cols) * width, (index // cols) * height))
    return grid


def _decode(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded.split(",", 1)[-1])))


def with_grid(answer: GenerationResponse) -> GenerationResponse:
    """The answer with its grid first in ``images`` (A1111's ``return_grid``): ``info`` says
    so with ``index_of_first_image`` 1 and the first image's infotext for the grid. An answer
    of one image is returned as it is."""
    if len(answer.images) < 2:
        return answer
    pictures = [_decode(encoded) for encoded in answer.images]
    grid = image_grid(pictures)
    try:
        info = json.loads(answer.info)
    except ValueError:
        info = {}
    infotexts = info.get("infotexts") or []
    chunk = PngImagePlugin.PngInfo()
    text = infotexts[0] if infotexts else pictures[0].info.get(PNG_TEXT_KEY)
    if isinstance(text, str):
        chunk.add_text(PNG_TEXT_KEY, text)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG", pnginfo=chunk)
    if isinstance(info, dict):
        info["index_of_first_image"] = 1
        if infotexts:
            info["infotexts"] = [infotexts[0], *infotexts]
    return answer.model_copy(update={
        "images": [base64.b64encode(buffer.getvalue()).decode("ascii"), *answer.images],
        "info": json.dumps(info)})
