"""The `pitrkit` command line: parse arguments, load the configuration, run one
command, and turn every expected failure into one `pitrkit: ...` line on stderr and an
exit code.

Command modules are imported only when their command runs: `wal-push` and `wal-fetch`
start once per WAL segment, so what this module imports is paid on every segment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pitrkit import __version__
from pitrkit.errors import PitrkitError, UsageError

# wal-fetch must not exit 1 or 2 for a fault: PostgreSQL reads 1 as "not archived" and
# ends recovery. Faults exit above 125 so that recovery aborts instead (see fetch.py).
FETCH_FAULT = 126


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a `UsageError` (one line, our exit codes)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pitrkit", description="WAL archiving and point-in-time restore for PostgreSQL.")
    parser.add_argument("--config", metavar="PATH", help="configuration file (default: $PITRKIT_CONFIG, "
                        "else /etc/pitrkit/pitrkit.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("--version", action="version", version=f"pitrkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    push = commands.add_parser("wal-push", help="archive one WAL file (archive_command = '... wal-push %%p')")
    push.add_argument("path", type=Path, help="the WAL file, as PostgreSQL's %%p")

    fetch = commands.add_parser("wal-fetch", help="restore one WAL file (restore_command = '... wal-fetch %%f %%p')")
    fetch.add_argument("name", help="the WAL file name, as PostgreSQL's %%f")
    fetch.add_argument("destination", type=Path, help="where to write it, as PostgreSQL's %%p")
    return parser


def _run(args: argparse.Namespace) -> str:
    from pitrkit import config as configuration

    config = configuration.load(configuration.locate(args.config))
    if args.command == "wal-push":
        from pitrkit.push import push

        return push(config, args.path)
    from pitrkit.fetch import fetch

    return fetch(config, args.name, args.destination)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    fetching = "wal-fetch" in argv
    try:
        args = _parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            format="pitrkit: %(levelname)s: %(message)s",
        )
        summary = _run(args)
        logging.getLogger("pitrkit").info(summary)
        return 0
    except PitrkitError as exc:
        code = exc.exit_code
        if fetching and code != 1:
            code = FETCH_FAULT
        print(f"pitrkit: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("pitrkit: interrupted", file=sys.stderr)
        return FETCH_FAULT if fetching else 130
    except Exception as exc:  # a bug: still one line, and never "not archived" for fetch
        logging.getLogger("pitrkit").debug("internal error", exc_info=True)
        print(f"pitrkit: internal error: {type(exc).__name__}: {exc} (rerun with -v for details)", file=sys.stderr)
        return FETCH_FAULT if fetching else 70
