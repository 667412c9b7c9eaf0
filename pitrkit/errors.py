"""The errors pitrkit reports to a person: one line each, with the exit code it maps to.

Anything expected (bad input, a refused segment, an unreachable archive) is raised as a
`PitrkitError`; the CLI prints its message as a single `pitrkit: ...` line and exits with
its code. Anything else is a bug and is reported as such.
"""


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
