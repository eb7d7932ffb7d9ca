"""The file name a generated image is downloaded under."""

from __future__ import annotations

import re
import time
from typing import Any


def download_name(*, prompt: str, created_at: str, params: dict[str, Any]) -> str:
    """A file name a person can tell apart in a downloads folder:
    `easel-<date>-<time>-<seed>-<the prompt's first words>.png` (ASCII, no path characters)."""
    stamp = re.sub(r"[^0-9]", "", created_at)[:14] or time.strftime("%Y%m%d%H%M%S")
    words = re.sub(r"<[^>]*>", " ", prompt)  # LoRA tags say little in a file name
    slug = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-")[:60].rstrip("-")
    seed = params.get("seed")
    parts = ["easel", stamp[:8], stamp[8:14]]
    if isinstance(seed, int) and seed >= 0:
        parts.append(str(seed))
    if slug:
        parts.append(slug)
    return "-".join(part for part in parts if part) + ".png"
