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
