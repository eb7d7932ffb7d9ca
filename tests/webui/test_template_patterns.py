"""Every `pattern` attribute in the portal's templates compiles the way browsers compile it.

Browsers build `new RegExp("^(?:" + pattern + ")$", "v")` for an input's `pattern` (HTML standard,
"The pattern attribute": https://html.spec.whatwg.org/multipage/input.html#the-pattern-attribute);
a pattern that does not compile with the `v` flag is silently ignored, so the field's client-side
check is dead. The `v` flag is stricter than `u`: a class may not hold an unescaped `-` next to
another character (e.g. `[a-z_-]`). Node 20 implements the `v` flag, so node checks them here.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

TEMPLATES = Path(__file__).resolve().parents[2] / "containers/webui/easel_webui/templates"
NODE = shutil.which("node")
_PATTERN = re.compile(r'\bpattern="([^"]*)"')

_CHECK = """
const patterns = JSON.parse(require("fs").readFileSync(0, "utf8"));
const bad = [];
for (const p of patterns) {
  try { new RegExp("^(?:" + p + ")$", "v"); } catch (e) { bad.push(p + " -> " + e.message); }
}
process.stdout.write(JSON.stringify(bad));
"""


def template_patterns() -> list[str]:
    found = []
    for path in sorted(TEMPLATES.glob("*.html")):
        found += [html.unescape(p) for p in _PATTERN.findall(path.read_text())]
    return found


def test_templates_have_patterns_to_check() -> None:
    assert len(template_patterns()) >= 4


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_every_template_pattern_compiles_with_the_v_flag() -> None:
    result = subprocess.run([NODE, "-e", _CHECK], input=json.dumps(template_patterns()),
                            capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == []


SAMPLES = ["ab", "abc", "a-b_c", "a--b", "-ab", "ab-", "Abc", "a b", "9ab", "a" * 32, "a" * 33,
           "a" * 40, "a" * 41, "dog_", "x1"]


def _field_pattern(template: str, name: str) -> re.Pattern[str]:
    text = (TEMPLATES / template).read_text()
    found = re.search(rf'name="{name}" pattern="([^"]*)"', text)
    assert found, (template, name)
    return re.compile(rf"(?:{html.unescape(found.group(1))})")


def test_the_user_name_pattern_accepts_what_the_server_accepts():
    from easel_webui.auth import USERNAME_RE

    page = _field_pattern("users.html", "username")
    assert [bool(page.fullmatch(s)) for s in SAMPLES] == \
        [bool(USERNAME_RE.match(s)) for s in SAMPLES]


def test_the_concept_set_pattern_accepts_what_the_server_accepts():
    from easel_webui.storage import SET_NAME_RE

    page = _field_pattern("models.html", "set")
    assert [bool(page.fullmatch(s)) for s in SAMPLES] == \
        [bool(SET_NAME_RE.match(s)) for s in SAMPLES]
