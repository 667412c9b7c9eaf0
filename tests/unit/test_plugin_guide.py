"""docs/plugins.md shows the worked example's files as they are in
docs/examples/pitrkit-sqlite (which CI installs and tests: tests/integration/
test_plugin_example.py), so that a plugin author who copies the guide gets what is
tested."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "plugins.md").read_text()
EXAMPLE = ROOT / "docs" / "examples" / "pitrkit-sqlite"


@pytest.mark.parametrize("name", ["pyproject.toml", "pitrkit_sqlite.py", "tests/test_conformance.py"])
def test_the_guide_shows_the_example_file(name):
    shown = re.search(rf"^`{re.escape(name)}`[^\n]*:\n\n```[a-z]+\n(.*?)^```$", GUIDE, re.MULTILINE | re.DOTALL)
    assert shown is not None, f"docs/plugins.md has no listing of {name}"
    assert shown.group(1) == (EXAMPLE / name).read_text()


def test_every_example_file_is_shown():
    # What a build of it leaves behind (pip install from the directory) is not a file of it.
    files = sorted(str(path.relative_to(EXAMPLE)) for path in EXAMPLE.rglob("*")
                   if path.is_file() and not any(part in ("__pycache__", "build") or part.endswith(".egg-info")
                                                 for part in path.relative_to(EXAMPLE).parts))
    assert files == ["pitrkit_sqlite.py", "pyproject.toml", "tests/test_conformance.py"]
