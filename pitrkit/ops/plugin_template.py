"""`pitrkit plugin-template NAME`: a new storage plugin distribution for the URL scheme
NAME, from the template shipped as package data (pitrkit/conf/plugin-template/): the
`pitrkit.plugins` entry point, a backend whose every method raises NotImplementedError,
and the conformance suite wired up, so that the first `pytest` run lists what is left
to write.
"""

from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template

from pitrkit.errors import PitrkitError, UsageError

# A URL scheme that is also a Python identifier once "-" becomes "_".
_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
_BUILT_IN = {"file", "zstd", "none"}
_SUFFIX = ".tmpl"


def _names(scheme: str) -> dict[str, str]:
    module = "pitrkit_" + scheme.replace("-", "_")
    return {
        "scheme": scheme,
        "distribution": f"pitrkit-{scheme}",
        "module": module,
        "cls": "".join(part.capitalize() for part in scheme.split("-")) + "Storage",
    }


def _files(folder: Traversable, relative: Path) -> list[tuple[Path, str]]:
    """(path in the new distribution, template text) of every file under `folder`."""
    found = []
    for entry in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if entry.is_dir():
            found += _files(entry, relative / entry.name)
        elif entry.name.endswith(_SUFFIX):
            found.append((relative / entry.name.removesuffix(_SUFFIX), entry.read_text()))
    return found


def write(scheme: str, directory: Path | None) -> str:
    """Write the distribution for `scheme` into `directory` (default ./pitrkit-<scheme>),
    which must not exist or be empty; print what to do next."""
    if not _NAME.fullmatch(scheme) or scheme.endswith("-"):
        raise UsageError(f"plugin-template: {scheme!r} is not a URL scheme for a plugin (lower-case letters, digits "
                         "and '-', starting with a letter)")
    if scheme in _BUILT_IN:
        raise UsageError(f"plugin-template: {scheme!r} is pitrkit's own: a plugin cannot replace it")
    names = _names(scheme)
    target = directory or Path(names["distribution"])
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"plugin-template: {target} already exists and is not an empty directory")
    module = Path(names["module"])
    placed = {Path("__init__.py"): module / "__init__.py", Path("storage.py"): module / "storage.py"}
    try:
        for relative, text in _files(files("pitrkit").joinpath("conf", "plugin-template"), Path()):
            path = target / placed.get(relative, relative)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Template(text).substitute(names))
    except OSError as exc:
        raise PitrkitError(f"plugin-template: cannot write {target}: {exc.strerror or exc}") from None
    print(f"{target}: the distribution {names['distribution']}, entry point {scheme!r} -> {names['module']}\n"
          f"next: cd {target} && pip install -e '.[test]' && python -m pytest")
    return f"wrote the plugin template {target}"
