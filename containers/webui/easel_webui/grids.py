"""The grid image of a batch count: the images of one job tiled near-square, as AUTOMATIC1111
lays them out (rows = round(sqrt(n)), filled row by row), answered first and saved beside them;
and an X/Y plot's grid, its cells in their columns and rows with the axis values as labels."""

from __future__ import annotations

import base64
import io
import json
import math
import textwrap

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from easel_contracts.infotext import PNG_TEXT_KEY
from easel_contracts.invocations import GenerationResponse
from easel_contracts.xy_plot import FailedCell, XYPlot


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
    return _grid_first(answer, image_grid(pictures), pictures)


def with_plot_grid(answer: GenerationResponse, plot: XYPlot,
                   failed: list[FailedCell] | None = None) -> GenerationResponse:
    """An X/Y plot's answer (one image a cell, row by row, less the ``failed`` cells) with its
    labelled grid first, as ``with_grid`` puts a batch's; a failed cell is a marked tile with
    its reason."""
    pictures = [_decode(encoded) for encoded in answer.images]
    reasons = {cell.index: cell.error for cell in failed or []}
    made = iter(pictures)
    size = pictures[0].size
    tiles = [failed_tile(size, reasons[index]) if index in reasons else next(made)
             for index in range(plot.columns * plot.rows)]
    grid = labelled_grid(tiles, columns=plot.columns,
                         x_labels=[plot.x.label(value) for value in plot.x.values],
                         y_labels=[plot.y.label(value) for value in plot.y.values])
    return _grid_first(answer, grid, pictures)


def _grid_first(answer: GenerationResponse, grid: Image.Image,
                pictures: list[Image.Image]) -> GenerationResponse:
    try:
        info = json.loads(answer.info)
    except ValueError:
        info = {}
    infotexts = info.get("infotexts") or [] if isinstance(info, dict) else []
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


LABEL_COLOUR = (0, 0, 0)
LABEL_BACKGROUND = (255, 255, 255)
FAILED_BACKGROUND = (90, 90, 90)
FAILED_COLOUR = (255, 255, 255)


def failed_tile(size: tuple[int, int], reason: str) -> Image.Image:
    """A failed cell's tile: grey, with "Failed" and the start of the reason where it fits."""
    width, height = size
    tile = Image.new("RGB", size, FAILED_BACKGROUND)
    if height < 48:  # too small for words: the grey alone marks it
        return tile
    font = _font(height)
    draw = ImageDraw.Draw(tile)
    line_height = draw.textbbox((0, 0), "Ag", font=font)[3] + 4
    char_width = max(1, draw.textbbox((0, 0), "x" * 10, font=font)[2] // 10)
    lines = ["Failed:", *textwrap.wrap(reason, width=max(8, (width - 8) // char_width))]
    for number, text in enumerate(lines[:max(1, (height - 8) // line_height)]):
        draw.text((4, 4 + number * line_height), text, fill=FAILED_COLOUR, font=font)
    return tile


def _font(cell_height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's own font (no font file to ship), sized to the cells where FreeType is there."""
    try:
        return ImageFont.load_default(size=max(12, min(48, cell_height // 12)))
    except (TypeError, OSError, ImportError):  # a Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def labelled_grid(images: list[Image.Image], *, columns: int, x_labels: list[str],
                  y_labels: list[str]) -> Image.Image:
    """The images tiled ``columns`` a row in cells the size of the first, with each column's
    label above it and each row's label left of it (dark text on white margins)."""
    width, height = images[0].size
    rows = math.ceil(len(images) / columns)
    font = _font(height)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    line = max(text_size(label)[1] for label in [*x_labels, *y_labels, "Ag"])
    top_margin = line * 2
    left_margin = max(text_size(label)[0] for label in y_labels) + line * 2
    grid = Image.new("RGB", (left_margin + columns * width, top_margin + rows * height),
                     LABEL_BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for column, label in enumerate(x_labels):
        label_width = text_size(label)[0]
        draw.text((left_margin + column * width + (width - label_width) // 2, line // 2), label,
                  fill=LABEL_COLOUR, font=font)
    for row, label in enumerate(y_labels):
        draw.text((line, top_margin + row * height + (height - line) // 2), label,
                  fill=LABEL_COLOUR, font=font)
    for index, image in enumerate(images):
        grid.paste(image.convert("RGB"), (left_margin + (index % columns) * width,
                                          top_margin + (index // columns) * height))
    return grid
