"""docs/architecture.md is where the next engineer starts: it must name the modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "line_markread"

_LISTED = re.compile(r"^- \*\*`([^`]+)`\*\*", re.MULTILINE)


def _listed() -> list[str]:
    return _LISTED.findall(ARCHITECTURE.read_text(encoding="utf-8"))


def _resolve(name: str) -> Path:
    """Entries name package modules relative to the package, anything else from the root."""
    inside = PACKAGE / name
    return inside if inside.exists() else ROOT / name


def test_every_module_listed_in_the_architecture_exists() -> None:
    listed = _listed()
    assert len(listed) >= 20
    missing = [name for name in listed if not _resolve(name).exists()]
    assert missing == []


def test_every_module_of_the_package_is_described() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    modules = sorted(
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" or path.parent == PACKAGE
    )
    undescribed = [m for m in modules if f"`{m}`" not in text and f"`{Path(m).name}`" not in text]
    assert undescribed == []
