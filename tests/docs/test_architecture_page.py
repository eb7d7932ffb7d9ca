"""docs/architecture.md stays the project's own, true map: the README links to it (not outside
the repository), its links resolve, and it names every contract module and stack construct file
that exists now."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _relative_links(path: Path) -> list[str]:
    return [link for link in _LINK.findall(path.read_text())
            if not link.startswith(("http://", "https://", "mailto:"))]


def test_the_readme_links_to_the_architecture_page():
    assert "](docs/architecture.md)" in (ROOT / "README.md").read_text()


def test_readme_and_architecture_links_resolve_inside_the_repository():
    for page in (ROOT / "README.md", PAGE):
        for link in _relative_links(page):
            target = (page.parent / link).resolve()
            assert target.is_relative_to(ROOT), f"{page.name}: {link} points outside the repository"
            assert target.exists(), f"{page.name}: {link} does not exist"


def test_every_contract_module_is_described():
    page = PAGE.read_text()
    modules = [p.stem for p in (ROOT / "containers/contracts/easel_contracts").glob("*.py")
               if p.stem != "__init__"]
    assert modules
    missing = [m for m in modules if f"`{m}`" not in page]
    assert missing == []


def test_every_stack_construct_file_is_described():
    page = PAGE.read_text()
    source = (ROOT / "stacks/easel_stack.py").read_text()
    modules = re.findall(r"^from stacks\.(\w+) import", source, re.M)
    files = {m for m in modules if m not in ("config",)}
    missing = sorted(m for m in files if f"`{m}.py`" not in page and f"`{m}/`" not in page)
    assert missing == []
