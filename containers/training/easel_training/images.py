"""Finding, opening and checking the images of a channel (concepts or class)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from easel_training.errors import TrainingInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIX = ".txt"
_MAX_LISTED = 5


@dataclass(frozen=True)
class ImageRecord:
    """One usable image: where it is, its size after EXIF rotation, and its caption."""

    path: Path
    width: int
    height: int
    caption: str | None


def open_rgb(path: Path) -> Image.Image:
    """Open an image upright (EXIF orientation applied) as RGB; transparency becomes white."""
    with Image.open(path) as raw:
        raw.load()
        image = ImageOps.exif_transpose(raw)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _read_caption(image_path: Path) -> str | None:
    caption_path = image_path.with_suffix(CAPTION_SUFFIX)
    if not caption_path.is_file():
        return None
    text = caption_path.read_text(encoding="utf-8", errors="replace")
    caption = " ".join(text.split())
    return caption or None


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _too_small_problem(too_small: list[str], *, channel: str, min_side: int) -> str:
    return (f"{len(too_small)} image(s) in channel '{channel}' are smaller than {min_side} px "
            f"on the shorter side: {_listing(too_small)}; use larger images or lower "
            "'resolution'/'min_image_side'")


def reject_small_images(records: list[ImageRecord], *, folder: Path, channel: str,
                        min_side: int) -> None:
    """Raise if any already-opened image is below ``min_side`` (once the resolution is known)."""
    too_small = [f"{r.path.relative_to(folder)} ({r.width}x{r.height})"
                 for r in records if min(r.width, r.height) < min_side]
    if too_small:
        raise TrainingInputError(_too_small_problem(too_small, channel=channel,
                                                    min_side=min_side))


def load_image_records(folder: Path, *, channel: str, min_side: int = 1,
                       use_captions: bool = True, required: bool = True) -> list[ImageRecord]:
    """Check every image of a channel folder; raise one clear error naming the bad files.

    ``min_side``: the smallest accepted shorter side in pixels.
    """
    if not folder.is_dir():
        if not required:
            return []
        raise TrainingInputError(
            f"input channel '{channel}' is missing: expected images under {folder}. "
            f"Pass an S3 prefix with images as the '{channel}' channel of the training job.")
    files = _image_files(folder)
    if not files:
        if not required:
            return []
        raise TrainingInputError(
            f"input channel '{channel}' has no images: found no {', '.join(IMAGE_SUFFIXES)} "
            f"files under {folder}. Upload 5-50 photos of the concept to its S3 prefix.")
    unreadable: list[str] = []
    too_small: list[str] = []
    records: list[ImageRecord] = []
    for path in files:
        name = str(path.relative_to(folder))
        try:
            image = open_rgb(path)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            unreadable.append(f"{name} ({type(exc).__name__})")
            continue
        width, height = image.size
        if min(width, height) < min_side:
            too_small.append(f"{name} ({width}x{height})")
            continue
        caption = _read_caption(path) if use_captions else None
        records.append(ImageRecord(path=path, width=width, height=height, caption=caption))
    problems = []
    if unreadable:
        problems.append(f"{len(unreadable)} unreadable image(s) in channel '{channel}': "
                        f"{_listing(unreadable)}; remove them or re-export as PNG/JPEG")
    if too_small:
        problems.append(_too_small_problem(too_small, channel=channel, min_side=min_side))
    if problems:
        raise TrainingInputError("; ".join(problems))
    return records
