"""The errors pitrkit reports to a person: one line each, with the exit code it maps to.

Anything expected (bad input, a refused segment, an unreachable archive) is raised as a
`PitrkitError`; the CLI prints its message as a single `pitrkit: ...` line and exits with
its code. Anything else is a bug and is reported as such. `outcome` is that mapping, for
the in-process CLI and the agent alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("pitrkit")

# wal-fetch must not exit 1 or 2 for a fault: PostgreSQL reads 1 as "not archived" and
# ends recovery. Faults exit above 125 so that recovery aborts instead (see wal/fetch.py).
FETCH_FAULT = 126
INTERNAL_ERROR = 70


class PitrkitError(Exception):
    """An expected failure with a message meant for the operator."""

    exit_code = 2


class UsageError(PitrkitError):
    """The command line or an argument value is wrong."""


class ConfigError(PitrkitError):
    """The configuration file is missing, unreadable or invalid."""


class PluginError(PitrkitError):
    """A plugin the configuration asks for is missing or broken."""


class NotInArchive(PitrkitError):
    """The archive answered that it does not hold the requested file."""

    exit_code = 1


class RefusedError(PitrkitError):
    """pitrkit refuses to do what was asked because it would be unsafe (wrong cluster,
    conflicting content, invalid WAL)."""

    exit_code = 1


class ParentRefused(RefusedError):
    """backup-push cannot take the incremental backup asked for, and has stored nothing:
    the parent asked for, or every backup, cannot be its parent (gone or unreadable, a
    broken chain, off the server's timeline path, another cluster, or another major: the
    first backup after an upgrade is full). Its own exit code, so that `pitrkit daemon`
    can tell it from a failed backup and take a full one at once instead."""

    exit_code = 3


def outcome(work: Callable[[], str], fetching: bool) -> tuple[int, str]:
    """Run `work` and map its result to (exit code, message for stderr). Shared by the
    in-process path (cli.py) and the agent (wal/agent.py), so that both answer
    PostgreSQL identically."""
    try:
        log.info(work())
        return 0, ""
    except PitrkitError as exc:
        # For wal-fetch only a definite "not in the archive" may exit 1.
        code = FETCH_FAULT if fetching and not isinstance(exc, NotInArchive) else exc.exit_code
        return code, f"pitrkit: {exc}"
    except Exception as exc:  # a bug: still one line, and never "not archived" for fetch
        log.debug("internal error", exc_info=True)
        return (
            FETCH_FAULT if fetching else INTERNAL_ERROR,
            f"pitrkit: internal error: {type(exc).__name__}: {exc} (rerun with -v for details)",
        )
