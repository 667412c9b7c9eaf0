"""Several repositories at once: each opened as its own `Archive`, written to together,
read from in order.

`[[repository]]` lists them in the order they are read; a single `[repository]` is a
list of one, and then nothing here costs a thread or an import more than `Archive`
alone. The two rules every command that stores or reads through them follows:

- A write succeeds only when every required repository holds the object durably.
  An optional one (`required = false`) that fails is returned to the caller, which
  spools or logs it, never fails for it; it is never a reason to answer PostgreSQL late.
- A read takes the first repository that has the object. "Not found" moves on to the
  next; so does a fault (a repository that cannot answer, a corrupt or tampered
  object), remembered. Only when every repository answered "not found" is the object
  absent (`NotInArchive`: wal-fetch's exit 1); when any could not answer and none had
  it, the result is a fault (wal-fetch's 126), since the one that could not answer may
  hold it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

from pitrkit.config import Config, RepositoryConfig
from pitrkit.errors import NotInArchive, PitrkitError, UsageError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.storage.archive import Archive, ArchiveUnavailable
from pitrkit.storage.plugins import Plugins

log = logging.getLogger(__name__)

Result = TypeVar("Result")


class Repository(NamedTuple):
    """One configured repository, opened."""

    settings: RepositoryConfig
    archive: Archive

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def required(self) -> bool:
        return self.settings.required


def open_all(config: Config, plugins: Plugins | None = None) -> list[Repository]:
    """Every configured repository in reading order, each with its own encryption and
    retention (`Config.for_repository`); one plugin manager serves them all."""
    plugins = plugins or Plugins()
    return [Repository(entry, Archive(config.for_repository(entry), plugins)) for entry in config.repositories]


def first_answer(repositories: Sequence[Repository], read: Callable[[Archive], Result]) -> Result:
    """`read` from the first repository that answers with the object (module docstring).
    `read` raises `NotInArchive` (or `ObjectNotFound`) for "not there"; any other
    `PitrkitError` is that repository's fault."""
    faults: list[str] = []
    absent: list[str] = []
    for repository in repositories:
        try:
            return read(repository.archive)
        except (NotInArchive, ObjectNotFound) as exc:
            absent.append(_named(repositories, repository, exc))
        except PitrkitError as exc:
            fault = _named(repositories, repository, exc)
            if repository is not repositories[-1]:
                log.warning("%s; reading from the next repository", fault)
            faults.append(fault)
    if faults:
        raise ArchiveUnavailable("; ".join(faults + absent))
    raise NotInArchive("; ".join(absent))


class Written(NamedTuple, Generic[Result]):
    """What `to_every` did: each repository's result, and the optional repositories it
    could not write to, with why."""

    results: dict[str, Result]
    missed: list[tuple[Repository, PitrkitError]]


def to_every(repositories: Sequence[Repository], write: Callable[[Archive], Result]) -> Written[Result]:
    """`write` to every repository, concurrently when there are several, and wait for
    all of them. Raises the first required repository's failure (after every write has
    ended: none is left running behind the caller's back); an optional repository's
    failure is returned in `missed`."""
    if len(repositories) == 1:
        # The common case, and wal-push's hot path: no thread.
        only = repositories[0]
        try:
            return Written({only.name: write(only.archive)}, [])
        except PitrkitError as exc:
            if only.required:
                raise
            return Written({}, [(only, exc)])
    outcomes: dict[str, Result | PitrkitError] = {}

    def run(repository: Repository) -> None:
        try:
            outcomes[repository.name] = write(repository.archive)
        except PitrkitError as exc:
            outcomes[repository.name] = exc

    threads = [threading.Thread(target=run, args=(each,), name=f"pitrkit-{each.name}") for each in repositories[1:]]
    for thread in threads:
        thread.start()
    try:
        run(repositories[0])
    finally:
        for thread in threads:
            thread.join()
    results: dict[str, Result] = {}
    missed: list[tuple[Repository, PitrkitError]] = []
    for repository in repositories:
        outcome = outcomes[repository.name]
        if not isinstance(outcome, PitrkitError):
            results[repository.name] = outcome
        elif repository.required:
            # Its own type and exit code, its message naming the repository.
            outcome.args = (_named(repositories, repository, outcome),)
            raise outcome
        else:
            log.warning("%s; it is optional, carrying on without it", _named(repositories, repository, outcome))
            missed.append((repository, outcome))
    return Written(results, missed)


def _named(repositories: Sequence[Repository], repository: Repository, exc: Exception) -> str:
    return str(exc) if len(repositories) == 1 else f"repository {repository.name!r}: {exc}"



def chosen(repositories: list[Repository], name: str | None) -> list[Repository]:
    """All of them, or only the one `--repo NAME` names (refusing a name not configured)."""
    if name is None:
        return repositories
    for repository in repositories:
        if repository.name == name:
            return [repository]
    raise UsageError(f"--repo {name}: no repository of that name is configured "
                     f"(configured: {', '.join(each.name for each in repositories)})")
