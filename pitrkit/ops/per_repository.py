"""A command run on each of several repositories: `verify`, `retention apply`,
`backup-list`, `wal-list` (and `catalog rebuild`, which prints lines) run on every
configured repository, or on the one `--repo NAME` names, each with its own keys and
policy (`Config.for_repository`).

With one repository, or with `--repo`, the command's report is that repository's alone,
exactly as it was before several existed (its text, its JSON). With several, it is a
`PerRepository`: one `Section` per repository in the configured order, each with its
report or why the command could not run there (the others still run: one repository
down never hides the state of the rest). Its JSON is `{"command": ..., "repositories":
[{"repository": NAME, "url": ..., "required": ..., "report": {...}, ...}, ...]}`; its
text one section per repository. It exits with the worst of its sections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

import msgspec

from pitrkit.config import Config
from pitrkit.errors import PitrkitError
from pitrkit.ops.status import MissingFromReference
from pitrkit.storage.repositories import Repository


class NothingToDo(PitrkitError):
    """Raised by a command's `run` for a repository where it has nothing to do (retention
    without a policy for it): said in its section, without failing the command."""

    exit_code = 0


class _Report(Protocol):
    @property
    def exit_code(self) -> int: ...


Report = TypeVar("Report", bound=_Report)


class Section(msgspec.Struct, Generic[Report], kw_only=True, frozen=True):
    """One repository's part of a command's result."""

    repository: str
    url: str
    required: bool
    report: Report | None = None
    problem: str | None = None  # why the command did not run here (report None)
    # What `problem` means for the command's exit: its error's code, or 0 when there was
    # nothing to do here (retention without a policy for this repository).
    problem_exit_code: int = 0
    # verify: the WAL files and backups the reference repository holds that this one lacks.
    missing: MissingFromReference | None = None

    @property
    def exit_code(self) -> int:
        return self.report.exit_code if self.report is not None else self.problem_exit_code


class PerRepository(msgspec.Struct, Generic[Report], kw_only=True, frozen=True):
    command: str  # "verify", "retention apply", "backup-list", "wal-list"
    repositories: list[Section[Report]]

    @property
    def exit_code(self) -> int:
        return max((section.exit_code for section in self.repositories), default=0)


def section(repository: Repository, report: Report | None = None, problem: PitrkitError | str | None = None
            ) -> Section[Report]:
    """`problem` as an error fails the command with its code; as text it only says why
    nothing was done."""
    return Section(repository=repository.name, url=repository.archive.storage.url, required=repository.required,
                   report=report, problem=None if problem is None else str(problem),
                   problem_exit_code=problem.exit_code if isinstance(problem, PitrkitError) else 0)


def run_each(command: str, repositories: Sequence[Repository], config: Config,
             run: Callable[[Repository, Config], Report]) -> Report | PerRepository[Report]:
    """`run` on each repository, with the configuration as it sees it: one repository's
    report as it is, several as a `PerRepository` (its failures kept in their sections)."""
    if len(repositories) == 1:
        only = repositories[0]
        return run(only, config.for_repository(only.settings))
    sections: list[Section[Report]] = []
    for repository in repositories:
        try:
            sections.append(section(repository, run(repository, config.for_repository(repository.settings))))
        except PitrkitError as exc:
            sections.append(section(repository, problem=exc))
    return PerRepository(command=command, repositories=sections)
