"""Prompt templates with captions, in the style of A1111's DreamBooth extension.

``[filewords]`` in a prompt is replaced by the image's caption (its same-name ``.txt`` file).
A prompt without ``[filewords]`` gets the caption appended after a comma when there is one.
"""

from __future__ import annotations

import re

FILEWORDS = "[filewords]"
_SPACES = re.compile(r"\s+")
_EMPTY_COMMAS = re.compile(r"(\s*,\s*)+")


def _tidy(text: str) -> str:
    text = _SPACES.sub(" ", text)
    text = _EMPTY_COMMAS.sub(", ", text)
    return text.strip(" ,")


def build_prompt(template: str, caption: str | None) -> str:
    """The training prompt for one image."""
    caption = (caption or "").strip()
    if FILEWORDS in template:
        return _tidy(template.replace(FILEWORDS, caption))
    if caption:
        return _tidy(f"{template}, {caption}")
    return _tidy(template)


def strip_filewords(template: str) -> str:
    """A template with no caption, e.g. for previews."""
    return _tidy(template.replace(FILEWORDS, ""))
