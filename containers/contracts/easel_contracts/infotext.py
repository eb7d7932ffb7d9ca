"""A generated image's settings as AUTOMATIC1111's "infotext": the text the inference server
writes into each PNG's ``parameters`` text chunk, and the portal's PNG Info page and
``POST /sdapi/v1/png-info`` read back (from Easel's PNGs and from A1111's alike).

The text has up to three parts: the prompt (any number of lines), an optional line starting
``Negative prompt:`` (continued on the following lines), and a last line of ``Key: value`` pairs
separated by ``, ``. A value holding a comma, a colon or a line break is written as a JSON string.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping

PNG_TEXT_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"
# `Key: value` in the settings line; a value is a JSON string or runs to the next comma
_PAIR = re.compile(r'\s*(\w[\w \-/]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
# fewer pairs than this on the last line: it is part of the prompt, not settings
_MIN_SETTINGS_PAIRS = 3


def _quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:\n"') else value


def format_infotext(prompt: str, negative_prompt: str, settings: Mapping[str, object]) -> str:
    """The infotext of one image; `settings` in the order they should appear (None is left out;
    floats without trailing zeros, as A1111 writes them)."""
    pairs = []
    for key, value in settings.items():
        if value is None or value == "":
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value)
        pairs.append(f"{key}: {_quoted(text)}")
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {negative_prompt}")
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def parse_infotext(text: str) -> dict[str, str]:
    """The infotext as A1111's ``parameters`` mapping: ``Prompt``, ``Negative prompt`` and each
    setting as text; ``Size`` also as ``Size-1`` (width) and ``Size-2`` (height)."""
    lines = text.strip().split("\n") if text.strip() else []
    settings_line = ""
    if lines and len(_PAIR.findall(lines[-1])) >= _MIN_SETTINGS_PAIRS:
        settings_line = lines.pop()
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX):
            target = negative
            line = line[len(NEGATIVE_PREFIX):].lstrip()
        target.append(line)
    result = {"Prompt": "\n".join(prompt).strip(), "Negative prompt": "\n".join(negative).strip()}
    for key, raw in _PAIR.findall(settings_line):
        value = raw.strip()
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            with contextlib.suppress(ValueError):
                value = str(json.loads(value))
        result[key.strip()] = value
        size = _SIZE.match(value) if key.strip() == "Size" else None
        if size:
            result["Size-1"], result["Size-2"] = size.group(1), size.group(2)
    return result
