"""The `pitrkit` command line: parse arguments, load the configuration, run one
command, and turn every expected failure into one `pitrkit: ...` line on stderr and an
exit code.

Command modules are imported only when their command runs: `wal-push` and `wal-fetch`
start once per WAL segment, so what this module imports is paid on every segment that
the agent (see entry.py) does not serve.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pitrkit import __version__
from pitrkit import config as configuration
from pitrkit.errors import FETCH_FAULT, PitrkitError, UsageError, outcome
from pitrkit.storage.repositories import open_all

if TYPE_CHECKING:
    from pitrkit.catalog.contents import BackupListing, WalListing
    from pitrkit.ops.per_repository import PerRepository
    from pitrkit.ops.retention import RetentionReport
    from pitrkit.ops.status import StatusReport
    from pitrkit.ops.verify import VerifyReport

log = logging.getLogger("pitrkit")

_COMMAND_MODULES = {
    "init": "pitrkit.ops.init",
    "upgrade": "pitrkit.ops.upgrade",
    "backup-push": "pitrkit.backup.push",
    "backup-consolidate": "pitrkit.ops.consolidate",
    "restore-point": "pitrkit.backup.restore_point",
    "catalog": "pitrkit.ops.listing",
    "repo": "pitrkit.ops.repo_sync",
    "restore-plan": "pitrkit.restore.plan",
    "restore": "pitrkit.restore.engine",
    "drill": "pitrkit.ops.drill",
    "wal-receive": "pitrkit.wal.receive",
    "daemon": "pitrkit.daemon.service",
}

# Commands whose result is a report: the module's `command_report(args, config,
# config_path)` collects it and prints nothing; `_print_report` prints it.
_REPORT_COMMANDS = {
    "backup-list": "pitrkit.ops.listing",
    "wal-list": "pitrkit.ops.listing",
    "retention": "pitrkit.ops.retention",
    "status": "pitrkit.ops.status",
    "verify": "pitrkit.ops.verify",
}

# Commands that print a file shipped in the package, and which.
_PRINTED = {"print-service": "pitrkit.service", "print-config": "pitrkit.toml",
            "print-dashboard": "grafana-dashboard.json"}


class ReportFailed(PitrkitError):
    """A printed report fails its command (status at FAIL, verify's findings): its
    summary is the line on stderr, and the report says the exit code."""

    def __init__(self, summary: str, exit_code: int) -> None:
        super().__init__(summary)
        self.exit_code = exit_code


def _print_report(report: StatusReport | VerifyReport | RetentionReport | BackupListing | WalListing
                  | PerRepository, as_json: bool) -> str:
    """Print a command's report, as JSON with --json, else as text, and end the command as
    the report says: its summary for the log, or ReportFailed with its exit code."""
    # Only when a report is printed: what this module imports at the top, every in-process
    # wal-push and wal-fetch (the hot path) pays.
    from pitrkit.views import json, text

    sys.stdout.write(json.render(report) if as_json else text.render(report))
    sys.stdout.flush()  # the report before a failure's line on stderr
    summary = text.summary(report)
    if report.exit_code:
        raise ReportFailed(summary, report.exit_code)
    return summary


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a `UsageError` (one line, our exit codes)."""

    def error(self, message: str):  # type: ignore[override]
        command = self.prog.partition(" ")[2]
        raise UsageError(f"{command}: {message}" if command else message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pitrkit", description="WAL archiving and point-in-time restore for PostgreSQL.")
    parser.add_argument("--config", metavar="PATH", help="configuration file (default: $PITRKIT_CONFIG, "
                        "else /etc/pitrkit/pitrkit.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("--version", action="version", version=f"pitrkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    commands.add_parser("init", help="create the archive (archive.json) for the cluster in [postgres], before "
                        "anything is archived; safe to run again")

    commands.add_parser("upgrade", help="after pg_upgrade: record the new cluster in [postgres] as the archive's "
                        "next era, in every repository (then take a full backup); safe to run again")

    push = commands.add_parser("wal-push", help="archive one WAL file (archive_command = '... wal-push %%p')")
    push.add_argument("path", type=Path, help="the WAL file, as PostgreSQL's %%p")

    fetch = commands.add_parser("wal-fetch", help="restore one WAL file (restore_command = '... wal-fetch %%f %%p')")
    fetch.add_argument("name", help="the WAL file name, as PostgreSQL's %%f")
    fetch.add_argument("destination", type=Path, help="where to write it, as PostgreSQL's %%p")
    fetch.add_argument("--until", metavar="SEGMENT", help="the restore plan's last segment: a later one is answered "
                       "as not archived, so recovery ends there (restore writes it)")
    fetch.add_argument("--era", type=int, default=1, metavar="N", help="the archive's era to read from (after "
                       "`pitrkit upgrade`; restore writes it for a backup of an era after the first)")

    commands.add_parser("wal-receive", help="stream WAL from a replication slot with pg_receivewal and archive it "
                        "as it arrives, until SIGTERM ([receive] in the configuration; see docs/streaming.md)")

    backup = commands.add_parser("backup-push", help="take a base backup of the cluster in [postgres] into the archive")
    backup.add_argument("--label", help="a label for the backup (default: pitrkit <backup id>)")
    backup.add_argument("--json", action="store_true", help="print the manifest summary as JSON instead of the id")
    backup.add_argument("--incremental", action="store_true",
                        help="store only the blocks changed since the newest backup on this timeline's path")
    backup.add_argument("--from", dest="parent", metavar="BACKUP_ID",
                        help="with --incremental (implied): the backup to store the changes against")

    consolidate = commands.add_parser("backup-consolidate", help="make a full backup of an incremental from the "
                                      "archive alone, so that retention can expire the chain under it")
    consolidate.add_argument("backup_id", metavar="BACKUP_ID", help="the incremental backup to consolidate")
    consolidate.add_argument("--json", action="store_true", help="print what was made as JSON instead of the id")
    _add_repo_argument(consolidate, "consolidate in this repository only (default: in each one holding the backup)")

    point = commands.add_parser("restore-point", help="make a named restore point on the server in [postgres] "
                                "(pg_create_restore_point) and record it in the archive, for restore --name")
    point.add_argument("name", metavar="NAME", help="its name, 1 to 63 bytes, not already in the archive")

    backup_list = commands.add_parser("backup-list", help="list the backups in the archive")
    backup_list.add_argument("--json", action="store_true", help="print JSON")
    _add_repo_argument(backup_list, "this repository only (default: every one, a section each)")

    wal_list = commands.add_parser("wal-list", help="list the archived WAL segments, one row each")
    wal_list.add_argument("--timeline", type=_timeline_id, metavar="N", help="only timeline N")
    wal_list.add_argument("--json", action="store_true", help="print JSON")
    _add_repo_argument(wal_list, "this repository only (default: every one, a section each)")

    catalog = commands.add_parser("catalog", help="maintain the archive's catalog")
    catalog_actions = catalog.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    rebuild = catalog_actions.add_parser("rebuild", help="recreate the catalog from the stored objects alone")
    _add_repo_argument(rebuild, "rebuild this repository's only (default: every one's)")

    repo = commands.add_parser("repo", help="work on the [[repository]] entries as a set")
    repo_actions = repo.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    repo_sync = repo_actions.add_parser("sync", help="copy into a repository every WAL file, backup, restore point "
                                        "and time index object another holds and it lacks (never overwriting or "
                                        "deleting; safe to run again)")
    repo_sync.add_argument("--from", dest="source", metavar="NAME", help="the repository to copy from (default: "
                           "the first configured one that is not the target)")
    repo_sync.add_argument("--to", dest="target", metavar="NAME", help="the repository to fill (default: every "
                           "one but the source)")
    repo_sync.add_argument("--dry-run", action="store_true", help="list what would be copied; copy nothing")

    plan = commands.add_parser("restore-plan", help="show what a restore to a target would use, or what is missing")
    _add_target_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    restore = commands.add_parser("restore", help="restore a fresh data directory to a point in time")
    _add_target_arguments(restore)
    restore.add_argument("--target-dir", type=Path, required=True, metavar="DIR",
                         help="the new data directory (absent or empty; with --delta, also a stopped cluster)")
    restore.add_argument("--delta", action="store_true",
                         help="DIR may be a stopped cluster (an old standby, an earlier restore): fetch only the "
                         "blocks and files that differ from the backup and remove what it lacks; refused if "
                         "postmaster.pid exists or DIR is not a data directory")
    restore.add_argument("--action", choices=["promote", "pause", "shutdown"], default="promote",
                         help="recovery_target_action (default: promote)")
    restore.add_argument("--tablespace-map", action="append", default=[], metavar="OLD=NEW",
                         help="restore the tablespace at OLD (its location or name) into NEW; repeatable")
    restore.add_argument("--archive-mode", choices=["preserve", "off"], default="preserve",
                         help="off: the restored server does not archive (a temporary copy); preserve (default): "
                         "it keeps the backed-up configuration's archiving, and once promoted archives its new "
                         "timeline into the same archive")
    restore.add_argument("--start", action="store_true",
                         help="start PostgreSQL on DIR and wait until recovery reaches the target")
    restore.add_argument("--bindir", metavar="DIR", help="with --start: the PostgreSQL binaries to start the "
                         "restored copy with (default: [postgres.bindirs] for the backup's major, else [postgres] "
                         "bindir, else /usr/lib/postgresql/<major>/bin)")
    restore.add_argument("--port", type=_port, help="the restored server's port, written into its configuration "
                         "(with --start, refused if in use; default: a free one with --start, else the "
                         "backed-up port)")
    restore.add_argument("--config-files", choices=["backup", "none"], default="backup",
                         help="backup (default): the backed-up configuration, also files from outside the data "
                         "directory (Debian's /etc/postgresql/...), rewritten so that nothing points outside "
                         "the new data directory; none: a minimal postgresql.conf and pg_hba.conf instead")

    drill = commands.add_parser("drill", help="a restore drill: restore into a scratch cluster on this host, "
                                "promote it, check every database (pg_amcheck, connections, [drill] checks), "
                                "store the report in the archive (drills/<id>.json), remove the cluster "
                                "(exit 1 when it fails)")
    drill_target = drill.add_mutually_exclusive_group()
    drill_target.add_argument("--backup", metavar="ID", help="restore this backup to the end of the WAL "
                              "(default: the newest usable backup)")
    drill_target.add_argument("--random", action="store_true", help="restore to a random point of the "
                              "restorable range (said in the report)")
    _add_repo_argument(drill, "drill from this repository only, and store the report there (default: the first "
                       "that can plan the drill)")

    retention = commands.add_parser("retention", help="remove the backups and WAL the [retention] policy "
                                    "no longer keeps")
    retention_actions = retention.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    apply = retention_actions.add_parser("apply", help="apply the [retention] policy to the archive")
    apply.add_argument("--dry-run", action="store_true", help="list what would be removed, by which rule, and the "
                       "space it would free; remove nothing")
    apply.add_argument("--json", action="store_true", help="print the decision as JSON")
    _add_repo_argument(apply, "apply this repository's policy to it only (default: each one's to each)")

    status = commands.add_parser("status", help="backups, WAL, archiver, archive size, restorable ranges and "
                                 "retention health, with an overall OK / WARN / FAIL (exit 2 on FAIL)")
    status.add_argument("--json", action="store_true", help="print JSON")

    verify = commands.add_parser("verify", help="check the catalog against storage: objects, sizes, checksums, "
                                 "WAL continuity, every backup restorable (exit 1 when anything is wrong)")
    verify.add_argument("--deep", action="store_true", help="read every object in full and check its content")
    verify.add_argument("--json", action="store_true", help="print JSON")
    _add_repo_argument(verify, "this repository only (default: every one, a section each)")

    commands.add_parser("daemon", help="run the service: the streaming sidecar, scheduled backups, retention "
                        "after each, and the status page and /metrics ([daemon] in the configuration)")

    keygen = commands.add_parser("keygen", help="write a new encryption key: a key file for [encryption] mode "
                                 "\"key\", or for mode \"recipient\" an X25519 pair or the Ed25519 pair that "
                                 "signs the archive's documents (never overwrites; see docs/encryption.md)")
    new_key = keygen.add_mutually_exclusive_group(required=True)
    new_key.add_argument("--key-file", type=Path, metavar="PATH", help="a 256-bit key file (mode 0600)")
    new_key.add_argument("--recipient", type=Path, nargs=2, metavar=("PRIVATE_PATH", "PUBLIC_PATH"),
                         help="a key pair: the private key (mode 0600) and the public key")
    new_key.add_argument("--signing", type=Path, nargs=2, metavar=("SIGNING_PATH", "VERIFY_PATH"),
                         help="a document signing pair: the signing key for writers (mode 0600) and the "
                              "verify key for readers")

    template = commands.add_parser("plugin-template", help="write a new storage plugin distribution for the URL "
                                   "scheme NAME: entry point, backend skeleton, conformance tests")
    template.add_argument("name", metavar="NAME", help="the URL scheme the plugin handles, e.g. s3")
    template.add_argument("--dir", type=Path, metavar="DIR", help="where to write it (default: ./pitrkit-NAME)")

    commands.add_parser("agent", help="serve wal-push and wal-fetch for this configuration until idle "
                        "(started automatically)")
    commands.add_parser("print-service", help="print the systemd unit for `pitrkit daemon` (conf/pitrkit.service), "
                        "e.g. pitrkit print-service | sudo tee /etc/systemd/system/pitrkit.service")
    commands.add_parser("print-config", help="print the example configuration with every key, its default and "
                        "why to change it (conf/pitrkit.toml)")
    commands.add_parser("print-dashboard", help="print the Grafana dashboard for the daemon's /metrics "
                        "(conf/grafana-dashboard.json), to import into Grafana")
    demo = commands.add_parser("demo", help="archive a throwaway PostgreSQL cluster through pitrkit and "
                               "recover a copy of it from the archive (needs no configuration)")
    demo.add_argument("--keep", action="store_true", help="keep the demo's directory and print its path")
    return parser


def _whole_number(text: str, low: int, high: int) -> int:
    """`text` as an integer from `low` to `high`; argparse turns the error into a usage
    error naming the option."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text} is out of range ({low} to {high})")
    return value


def _port(text: str) -> int:
    return _whole_number(text, 1, 65535)


def _timeline_id(text: str) -> int:
    return _whole_number(text, 1, 0xFFFFFFFF)


def _add_repo_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--repo", metavar="NAME", help=f"with several [[repository]] entries: {help_text}")


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", "--time", dest="time", metavar="TIME",
                        help="a time, e.g. '2026-11-23 14:41:37' (local time), with an offset, or as `date` "
                        "prints it ('Mon Nov 23 14:41:37 UTC 2026': UTC, GMT, Z or the local zone's abbreviations)")
    target.add_argument("--lsn", metavar="LSN", help="a WAL location, e.g. 0/16B3748")
    target.add_argument("--xid", metavar="XID", help="the commit (or abort) of a transaction, its id as "
                        "pg_current_xact_id() or txid_current() print it")
    target.add_argument("--name", metavar="RESTORE_POINT", help="a restore point (pitrkit restore-point, or "
                        "pg_create_restore_point()); recovery stops at the first point of that name")
    target.add_argument("--immediate", action="store_true", help="as soon as the backup is consistent: "
                        "the end of the newest backup, replaying only its own WAL")
    target.add_argument("--latest", action="store_true", help="the end of the archived WAL")
    _add_repo_argument(parser, "plan and restore from this repository only (default: the first that holds a "
                       "backup reaching the target, falling through one that cannot answer)")
    parser.add_argument("--exclusive", action="store_true", help="with --to, --lsn or --xid: stop just before "
                        "the target, not after it (recovery_target_inclusive = off)")
    parser.add_argument("--timeline", metavar="N|latest|current|server",
                        help="the timeline to recover along (default: the one the target is on; with --latest, "
                        "the archive's newest); current: the backup's; server: the one the server in [postgres] "
                        "conninfo is on, not a restored copy's branch")


def main(argv: list[str] | None = None, *, start_agent: bool = False) -> int:
    """Run one command. `start_agent`: the caller found no agent to hand this wal-push /
    wal-fetch to; start one afterwards if the configuration wants it."""
    argv = sys.argv[1:] if argv is None else argv
    fetching = "wal-fetch" in argv
    config = config_path = None

    def work() -> str:
        nonlocal config, config_path
        args = _parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            format="pitrkit: %(levelname)s: %(message)s",
        )
        if args.command == "demo":
            # Only when the demo runs: its throwaway-cluster rig (pitrkit/demo) is no part of
            # any other command.
            from pitrkit.demo.run import run

            return run(keep=args.keep)
        if args.command in _PRINTED:
            # Package data: an installed wheel has no conf/ directory.
            from importlib.resources import files

            sys.stdout.write(files("pitrkit").joinpath("conf", _PRINTED[args.command]).read_text())
            return f"printed {_PRINTED[args.command]}"
        if args.command == "keygen":
            # Only when keygen runs: wal-push and wal-fetch (the hot path) never load the key
            # code unless the archive is encrypted.
            from pitrkit.storage.keys import keygen

            return keygen(args.key_file, args.recipient, args.signing)
        if args.command == "plugin-template":
            # Only when a plugin author asks for it: no other command needs the template.
            from pitrkit.ops.plugin_template import write

            return write(args.name, args.dir)
        config_path = configuration.locate(args.config).absolute()
        if args.command == "agent":
            # Only when the agent is served (or started, below): an in-process wal-push or
            # wal-fetch with the agent disabled (the hot path) does without it.
            from pitrkit.wal.agent import serve

            return serve(config_path)
        config = configuration.load(config_path)
        if args.command in _REPORT_COMMANDS:
            module = importlib.import_module(_REPORT_COMMANDS[args.command])
            return _print_report(module.command_report(args, config, config_path), args.json)
        if args.command not in ("wal-push", "wal-fetch"):
            # Each command module has `command(args, config, config_path) -> str`: it
            # prints what the user asked for and returns a summary for the log.
            module = importlib.import_module(_COMMAND_MODULES[args.command])
            return module.command(args, config, config_path)
        if args.command == "wal-push":
            # Each only when its command runs: wal-push does not import wal-fetch's code nor
            # the reverse (the hot path).
            from pitrkit.wal.push import push_to_every

            return push_to_every(open_all(config), args.path)
        from pitrkit.wal.fetch import fetch_from_first  # only when wal-fetch runs, as above

        return fetch_from_first(open_all(config), args.name, args.destination, args.until, args.era)

    try:
        code, message = outcome(work, fetching)
    except KeyboardInterrupt:
        code, message = (FETCH_FAULT if fetching else 130), "pitrkit: interrupted"
    if message:
        print(message, file=sys.stderr)
    if start_agent and config is not None and config_path is not None and config.agent.enabled:
        from pitrkit.wal.agent import start  # only when starting one, as for `agent` above

        start(config_path)
    return code
