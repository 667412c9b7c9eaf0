"""The package's architecture, as its imports show it: read from the source with `ast`
(every import statement, at module level, inside functions and under TYPE_CHECKING
alike), never by importing it, so that a lazy import cannot hide a cycle.

What holds: no import cycles, between modules or between subpackages; the test rig
(pitrkit/demo) reached only by the `demo` command; storage/ below catalog/ and catalog/
below the commands; postgres/ on errors and config alone; and every import inside a
function saying why it is there: only the wal-push / wal-fetch hot path and heavy
optional dependencies (psycopg, the key code) justify one, so its comment must say
"hot path" or "only when".

Imports by name (cli's `importlib.import_module` of a command's module, the plugin
manager's built-ins) are not statements and are not in the graph: they point from the
front door and the plugin manager down, never up.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

import pitrkit

PACKAGE = Path(pitrkit.__file__).parent
# Whoever may import the demo (pitrkit/demo/): cli's `demo` command, inside the function.
DEMO_COMMAND = ("pitrkit.cli", "pitrkit.demo.run")
# A function-level import must have one of these in a comment on its line, or in the
# comment lines right above it (or above the group of imports it belongs to).
WHY_LAZY = re.compile(r"hot path|only when", re.IGNORECASE)


class Import(NamedTuple):
    """One module of pitrkit importing another, as one statement says."""

    importer: str
    imported: str
    path: Path
    line: int
    in_function: bool

    def where(self) -> str:
        return f"{self.path.relative_to(PACKAGE.parent)}:{self.line}"


def module_names(package: Path) -> dict[str, Path]:
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


MODULES = module_names(PACKAGE)


def imports_of(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), str(path))
    in_functions = {id(node) for function in ast.walk(tree)
                    if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for node in ast.walk(function)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package, `level - 1` up
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from P import n`: the module P.n if there is one, else P (n is a name in it).
            named = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in dict.fromkeys(named):
            if name in MODULES and name != module:
                yield Import(module, name, path, node.lineno, id(node) in in_functions)


IMPORTS = [edge for module, path in MODULES.items() for edge in imports_of(module, path)]


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# --- cycles ------------------------------------------------------------------------------


class Tangle(NamedTuple):
    """Modules that import each other (a strongly connected component of the graph),
    and the cycles through them: for each module the shortest one through it, each
    cycle once, the shortest first."""

    modules: list[str]
    cycles: list[list[Import]]


def tangles(imports: list[Import]) -> list[Tangle]:
    graph: dict[str, dict[str, Import]] = {}
    for edge in imports:
        graph.setdefault(edge.importer, {}).setdefault(edge.imported, edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def strong(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.get(module, {}):
            if imported not in index:
                strong(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            strong(module)
    found = []
    for component in components:
        cycles: dict[frozenset[Import], list[Import]] = {}
        for start in component:
            cycle = _shortest_cycle(graph, component, start)
            cycles.setdefault(frozenset(cycle), cycle)  # as met first, from its first module
        found.append(Tangle(component, sorted(cycles.values(), key=lambda cycle: (len(cycle), cycle))))
    return found


def _shortest_cycle(graph: dict[str, dict[str, Import]], component: list[str], start: str) -> list[Import]:
    """The shortest way from `start` back to itself within its component."""
    came_by: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for imported, edge in graph.get(module, {}).items():
            if imported == start:
                path = [edge]
                while path[0].importer != start:
                    path.insert(0, came_by[path[0].importer])
                return path
            if imported in component and imported not in came_by:
                came_by[imported] = edge
                queue.append(imported)
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def show(tangle: Tangle, most: int = 5) -> str:
    lines = [f"  {len(tangle.modules)} modules import each other: {', '.join(tangle.modules)}"]
    for cycle in tangle.cycles[:most]:
        lines.append("    " + " -> ".join([cycle[0].importer] + [
            f"{edge.imported} ({edge.where()}{', in a function' if edge.in_function else ''})" for edge in cycle]))
    if len(tangle.cycles) > most:
        lines.append(f"    and {len(tangle.cycles) - most} more cycles through them")
    return "\n".join(lines)


def test_the_graph_sees_module_and_function_level_imports():
    # Guards the rest: a reader that found no imports would find no cycle either.
    found = {(edge.importer, edge.imported, edge.in_function) for edge in IMPORTS}
    assert ("pitrkit.wal.agent", "pitrkit.wal.agent_client", False) in found
    assert ("pitrkit.entry", "pitrkit.cli", True) in found
    assert ("pitrkit.restore.plan", "pitrkit.restore.targets", False) in found


def test_no_import_cycles():
    if found := tangles(IMPORTS):
        pytest.fail("import cycles in pitrkit: imports point one way (commands -> catalog -> storage -> postgres "
                    "and the foundation), and an import inside a function does not break a cycle, it hides it. "
                    "Move what both sides need to the lower one.\n" + "\n".join(map(show, found)), pytrace=False)


def test_cycles_are_found_and_named():
    # The detector itself, on a made-up graph: a -> b -> c -> a with d -> a beside it, and e <-> f.
    def edge(importer: str, imported: str) -> Import:
        return Import(f"pitrkit.{importer}", f"pitrkit.{imported}", PACKAGE / f"{importer}.py", 1, False)

    found = tangles([edge("a", "b"), edge("b", "c"), edge("c", "a"), edge("d", "a"), edge("e", "f"),
                     edge("f", "e")])
    assert [(tangle.modules, [[step.imported for step in cycle] for cycle in tangle.cycles]) for tangle in found] \
        == [(["pitrkit.a", "pitrkit.b", "pitrkit.c"], [["pitrkit.b", "pitrkit.c", "pitrkit.a"]]),
            (["pitrkit.e", "pitrkit.f"], [["pitrkit.f", "pitrkit.e"]])]
    assert show(found[1]) == ("  2 modules import each other: pitrkit.e, pitrkit.f\n"
                              "    pitrkit.e -> pitrkit.f (pitrkit/e.py:1) -> pitrkit.e (pitrkit/f.py:1)")


def fail_listing(headline: str, imports: list[Import]) -> None:
    if imports:
        pytest.fail(f"{headline}:\n" + "\n".join(
            f"  {edge.where()}: {edge.importer} -> {edge.imported}" for edge in imports), pytrace=False)


# --- layers ------------------------------------------------------------------------------


def test_only_the_demo_command_imports_the_demo():
    # pitrkit/demo is the throwaway-cluster rig of `pitrkit demo` and the tests: product
    # code that imported it would run test-rig code in production.
    offending = [edge for edge in IMPORTS if under(edge.imported, "pitrkit.demo")
                 and not under(edge.importer, "pitrkit.demo")
                 and not ((edge.importer, edge.imported) == DEMO_COMMAND and edge.in_function)]
    fail_listing("imports of pitrkit.demo outside it (only cli's demo command may, in its function)", offending)


COMMANDS = ["pitrkit.restore", "pitrkit.wal", "pitrkit.backup", "pitrkit.ops", "pitrkit.daemon", "pitrkit.views"]
ABOVE_STORAGE = ["pitrkit.catalog", *COMMANDS]


@pytest.mark.parametrize("above", ABOVE_STORAGE)
def test_storage_does_not_import_what_is_built_on_it(above):
    offending = [edge for edge in IMPORTS if under(edge.importer, "pitrkit.storage") and under(edge.imported, above)]
    fail_listing(f"storage/ imports {above}, which is built on storage", offending)


def subpackage(module: str) -> str | None:
    """`pitrkit.<package>` for a module in a subpackage; None for a top-level module
    (cli, config, errors, ...) or the package itself: the front door or the foundation,
not a stage."""
    parts = module.split(".")
    if len(parts) == 1:  # pitrkit itself (its __version__)
        return None
    return ".".join(parts[:2]) if len(parts) > 2 or (PACKAGE / parts[1]).is_dir() else None


def test_the_subpackages_depend_on_each_other_one_way():
    # The stages as a whole, not just their modules: restore may use the catalog, but
    # nothing in the catalog may then use anything of restore's, even through other
    # modules than those the first import joined.
    between = [edge._replace(importer=importer, imported=imported) for edge in IMPORTS
               if (importer := subpackage(edge.importer)) and (imported := subpackage(edge.imported))
               and importer != imported]
    if found := tangles(between):
        pytest.fail("subpackages of pitrkit that import each other (one import each way shown):\n"
                    + "\n".join(map(show, found)), pytrace=False)


FOUNDATION = ["pitrkit.config", "pitrkit.errors", "pitrkit.hookspecs", "pitrkit.cron", "pitrkit.progress",
              "pitrkit.events"]


@pytest.mark.parametrize("module", FOUNDATION)
def test_the_foundation_imports_no_stage(module):
    # The top-level modules every stage builds on (the front door, entry and cli, is the
    # other kind of top-level module) may import each other and postgres/, nothing above.
    offending = [edge for edge in IMPORTS if edge.importer == module
                 and not (edge.imported in FOUNDATION or under(edge.imported, "pitrkit.postgres")
                          or edge.imported == "pitrkit")]
    fail_listing(f"{module}, part of the foundation, imports a stage built on it", offending)


def test_postgres_imports_only_errors_and_config():
    allowed = ("pitrkit.postgres", "pitrkit.errors", "pitrkit.config")
    offending = [edge for edge in IMPORTS if under(edge.importer, "pitrkit.postgres")
                 and not any(under(edge.imported, each) for each in allowed)]
    fail_listing("postgres/ imports pitrkit modules other than errors and config", offending)


# --- function-level imports --------------------------------------------------------------


def reason_given(edge: Import, lines: list[str], import_lines: set[int]) -> bool:
    """Whether a comment on the import's line, or in the comment lines right above it
    (above blank lines and the other imports of its group), says "hot path" or "only when"."""
    comments = [line.partition("#")[2] for line in lines[edge.line - 1: edge.line] if "#" in line]
    above = edge.line - 1  # 1-based number of the line above
    while above >= 1 and (not lines[above - 1].strip() or above in import_lines):
        above -= 1
    while above >= 1 and lines[above - 1].lstrip().startswith("#"):
        comments.append(lines[above - 1])
        above -= 1
    return any(WHY_LAZY.search(comment) for comment in comments)


def test_every_function_level_import_says_why():
    unexplained = []
    for path in sorted({edge.path for edge in IMPORTS if edge.in_function}):
        lines = path.read_text().splitlines()
        import_lines = {number for node in ast.walk(ast.parse("\n".join(lines)))
                        if isinstance(node, (ast.Import, ast.ImportFrom))
                        for number in range(node.lineno, (node.end_lineno or node.lineno) + 1)}
        unexplained += [edge for edge in IMPORTS if edge.path == path and edge.in_function
                        and not reason_given(edge, lines, import_lines)]
    fail_listing("imports inside functions without a comment saying why (on the line or right above it, with "
                 "'hot path' or 'only when'); one is allowed only to keep the wal-push/wal-fetch hot path lean "
                 "or a heavy optional dependency off commands that do not use it, never to dodge a cycle",
                 unexplained)


@pytest.mark.parametrize("above", COMMANDS)
def test_the_catalog_does_not_import_the_commands_built_on_it(above):
    offending = [edge for edge in IMPORTS if under(edge.importer, "pitrkit.catalog") and under(edge.imported, above)]
    fail_listing(f"catalog/ imports {above}, which is built on the catalog", offending)
