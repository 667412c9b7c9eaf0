"""`pitrkit restore`: a fresh data directory at a point in time, from a base backup and
the WAL archive.

The order is the safety: first everything that can refuse without touching the disk
(running as root, a non-empty target, or with --delta one that is not a stopped cluster
or a backup without checksums (restore/delta.py), the plan, a corrupt manifest or one
the catalog disagrees with, an incremental's chain with a link missing or that does not
hold together (restore/chain.py), a tablespace mapping naming nothing or a tablespace
with nowhere to go, a WAL segment gone from the archive since the catalog was written);
then a lease on the backup and its WAL (catalog/lease.py), refused if retention is
removing the backup; only then the directory is created and the backup written into it
(see restore/unpack.py, restore/chain.py for an incremental, restore/delta.py over a
stopped cluster), its configuration made its own (restore/server_config.py), the
recovery settings added (restore/recovery_conf.py), and, with --start, the server
started and watched until it reaches the target (restore/pgstart.py). Exit 0 means the
directory is complete and durable, and with --start that the target was reached.

The lease is renewed while the restore runs. It is released once --start has seen the
server promote (recovery reads no more WAL), and when the server --start started has
exited without reaching the target (nothing replays now; a DBA who fixes the cause and
starts it by hand is like one who restores without --start and starts later). In every
other case recovery goes on after this process (started later by the operator, resumed
after a pause or shutdown at the target, still running after an interrupt), so the
lease stays for `[retention] restore_lease`.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from pitrkit import __version__
from pitrkit.catalog import documents, lease
from pitrkit.catalog.backups import manifest_present, read_backup_catalog, retention_state
from pitrkit.catalog.documents import BackupManifest, shown
from pitrkit.config import Config, RetentionConfig
from pitrkit.errors import PitrkitError, RefusedError, UsageError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.postgres.wal import Lsn, WalFileKind, WalFileName
from pitrkit.progress import Progress, human_bytes, human_seconds, show_time
from pitrkit.restore import chain, chain_writes, delta, pgconf, pgstart, recovery_conf, server_config, unpack
from pitrkit.restore.plan import RestorePlan, describe, latest_warning, plan_eras, planned_in, server_choice
from pitrkit.restore.targets import target_from_args, timeline_from_args
from pitrkit.storage.archive import BACKUP_CATALOG_KEY, Archive, ArchiveUnavailable, manifest_key, wal_key
from pitrkit.storage.repositories import chosen, open_all
from pitrkit.wal import agent, agent_client

log = logging.getLogger(__name__)

# Stat calls in flight during the pre-flight check: they are tiny and latency-bound.
_STAT_THREADS = 16


class RestoreIncomplete(PitrkitError):
    """Writing the data directory failed part-way; says so, with the cause's exit code."""

    def __init__(self, cause: PitrkitError, target_dir: Path, over_cluster: bool = False) -> None:
        again = ("run restore --delta again to finish it (it has no global/pg_control until a delta ends, so "
                 "PostgreSQL will not start it)" if over_cluster else
                 "empty it (and any tablespace directories) before restoring again")
        super().__init__(f"{cause}; {target_dir} is incomplete: {again}")
        self.exit_code = cause.exit_code


def command(args: argparse.Namespace, config: Config, config_path: Path) -> str:
    refuse_root()
    target = target_from_args(args)
    if target.kind == "latest" and args.action != "promote":
        raise UsageError(f"--action {args.action} needs a target (--to, --lsn, --xid, --name or --immediate): with "
                         "--latest, recovery replays all archived WAL and PostgreSQL promotes at its end")
    mappings = unpack.parse_tablespace_mappings(args.tablespace_map)
    target_dir = Path(os.path.abspath(args.target_dir))
    # --delta: a stopped cluster to write over (restore/delta.py), or nothing yet.
    existing = delta.check_target(target_dir) if args.delta else False
    if not args.delta:
        unpack.check_absent_or_empty(target_dir, "--target-dir")
    timeline, server = server_choice(target, timeline_from_args(args), config)
    # From the first repository that can restore to the target, or --repo's.
    repository, plan = planned_in(chosen(open_all(config), args.repo), lambda each: plan_eras(each, target, timeline))
    archive = repository.archive.era(plan.era)  # the backup's and its WAL's era
    config = config.for_repository(repository.settings)  # its own [retention] restore_lease
    say(describe(plan))
    if warning := latest_warning(plan, server):
        print(f"pitrkit: {warning}", file=sys.stderr, flush=True)
    manifest = fetch_manifest(archive, plan.backup)
    # The manifest's tablespaces, not the catalog's copy: see unpack.check_tablespace_directory.
    tablespaces = unpack.resolve_tablespaces(manifest.tablespaces, mappings, manifest.backup_id)
    for each in tablespaces:
        unpack.check_tablespace_directory(each, target_dir, delta=args.delta)
    existing = existing or (args.delta and any(delta.occupied(each.location) for each in tablespaces))
    if existing:
        delta.check_backup(manifest)
    workers = config.backup.workers or os.cpu_count() or 1
    links = None
    if manifest.parent is not None:
        say(f"restoring backup {manifest.backup_id}: incremental on {manifest.parent}, chain of "
            f"{len(manifest.chain) + 1} (full backup {manifest.chain[0]} first)")
        links = chain.plan_chain(archive, [*fetch_chain(archive, manifest), manifest], workers)
        say(f"  {links.describe()}")
    bindir = pgstart.find_bindir(config.postgres, plan.backup.pg_version, args.bindir) if args.start else None
    port = pgstart.choose_port(args.port) if args.start else args.port
    check_wal_present(archive, plan)
    reading_ahead = bindir is not None and config.agent.enabled and config.agent.lookahead > 0
    if reading_ahead:
        # Recovery's first wal-fetch would otherwise find no agent, do its work
        # in-process and start one (see wal/agent_client.py): started now, the agent is
        # up when the server starts, and has the first segments read (see below).
        agent.start(config_path)
    with lease.Renewal(archive, take_lease(archive, plan)) as held:
        started = time.monotonic()
        write_data_directory(archive, manifest, links, target_dir, tablespaces, workers, held, existing)
        sockets = pgstart.socket_dir(target_dir, port) if port is not None and bindir is not None else None
        say(f"the restored copy's configuration (--config-files {args.config_files}):")
        server_config.write(target_dir, manifest.configuration,
                            server_config.Choices(args.config_files == "backup", port, sockets), say)
        settings = recovery_settings(plan, args.action, config_path, archiving=args.archive_mode == "preserve")
        warn_about_code(target_dir, settings)  # before pitrkit's own restore_command joins the files
        leftovers = recovery_conf.leftovers(target_dir, settings)  # before write replaces the old auto.conf
        recovery_conf.write(target_dir, settings,
                            f"written by pitrkit {__version__} restore at {datetime.now(UTC):%Y-%m-%d %H:%M:%S} "
                            f"UTC, backup {manifest.backup_id}")
        quiet = f", archive_mode off, {recovery_conf.NO_SUBSCRIPTIONS} 0" if not settings.archiving else ""
        say(f"wrote {target_dir} in {human_seconds(time.monotonic() - started)}: recovery.signal and the "
            f"recovery settings in {recovery_conf.AUTO_CONF} (restore_command, target, timeline {plan.timeline}, "
            f"action {args.action}{quiet})")
        for leftover in leftovers:
            say(f"  overrode {leftover}")
        if settings.archiving:
            warn_about_archiving(target_dir)
        else:
            say(f"this copy archives nothing and runs no subscription ({recovery_conf.NO_SUBSCRIPTIONS} = 0): it "
                "cannot add a timeline to the archive or consume a publisher's changes; to make it a server of "
                "its own, see \"A restored copy becomes the server\" in docs/restore-runbook.md")
        summary = f"restored backup {manifest.backup_id} into {target_dir} for target {plan.target.text}"
        if bindir is None:
            # The operator starts it later, and recovery fetches the WAL then.
            hold_for_the_operator(held, config, manifest.backup_id)
            major = plan.backup.pg_version // 10000
            # [postgres] bindir is the newest era's major: a backup of an earlier era names its own.
            newest = plan.era == repository.archive.identity().current_era.era
            bindir_named = Path(args.bindir or config.postgres.bindirs.get(str(major))
                                or (config.postgres.bindir if newest else None) or f"/usr/lib/postgresql/{major}/bin")
            say(f"start it with: {bindir_named / 'pg_ctl'} start -D {target_dir}")
            return summary
        assert port is not None and sockets is not None  # chosen with --start
        if reading_ahead:
            read_ahead(config_path, target_dir, plan, config.agent.lookahead)
        try:
            recovered = start_and_report(plan, args, target_dir, bindir, port, sockets)
        except pgstart.RecoveryFailed as exc:
            if exc.running:
                hold_for_the_operator(held, config, manifest.backup_id)
            else:
                # Nothing replays from the archive now; a DBA who starts it again by
                # hand after a fix reads the WAL then, as after a restore without --start.
                held.release()
                say(f"released lease {held.lease.lease_id}" if held.lease is not None else "no lease to release")
            raise
        except BaseException:
            # The directory is complete: the operator may well start it again by hand. And
            # an interrupt (Ctrl-C while recovery is slow) leaves the server, in its own
            # session, replaying from the archive: the WAL must outlive this process.
            hold_for_the_operator(held, config, manifest.backup_id)
            raise
        if args.action == "promote":
            held.release()  # recovery is over: the server reads no more WAL from the archive
        else:
            # Paused or shut down at the target, recovery is not over: the operator may
            # move the target on and resume, and replay reads on from the archive.
            hold_for_the_operator(held, config, manifest.backup_id)
        return summary + "; " + recovered


def read_ahead(config_path: Path, target_dir: Path, plan: RestorePlan, lookahead: int) -> None:
    """Ask the agent to read the first segments recovery needs into the restored pg_wal's
    spool (wal/agent.py, `wal-prefetch`). Best effort: without an agent (not up yet, or
    disabled since), recovery's wal-fetch calls do the work as always. The directory is
    the one wal-fetch will name: the data directory's physical path (the server's working
    directory), then pg_wal."""
    directory = os.path.join(os.path.realpath(target_dir), "pg_wal")
    names = [name for name in plan.segments if not name.endswith(".partial")][:lookahead]
    if names and agent_client.ask_agent(agent_client.prefetch_request(str(config_path), directory, names, plan.era)):
        log.debug("the agent reads %s and %d more segments ahead into %s", names[0], len(names) - 1, directory)


def hold_for_the_operator(held: lease.Renewal, config: Config, backup_id: str) -> None:
    if held.lease is None:
        return
    expires_at = datetime.now(UTC) + restore_lease(config)
    held.hold_until(expires_at)
    say(f"lease {held.lease.lease_id} keeps backup {backup_id} and its WAL from retention until "
        f"{show_time(expires_at)}")


def take_lease(archive: Archive, plan: RestorePlan) -> documents.Lease | None:
    """Claim the planned backup and its WAL, then check that retention is not removing
    them: retention stores its intent before it lists leases, so either it sees this
    lease or this sees its intent (see catalog/lease.py). A run that decided and finished
    between the plan and now is seen by the manifest being gone (it goes first).

    None when the lease cannot be stored: a restore must work from an archive it may
    only read (a read-only credential or mount on the restore host), so it goes on,
    saying what it risks, rather than fail when it is needed most."""
    backup_id = plan.backup.backup_id
    try:
        taken: documents.Lease | None = lease.take(archive, backup_id, plan.timeline, plan.backup.first_segment)
    except ArchiveUnavailable as exc:
        say(f"warning: no lease taken ({exc}): a retention run elsewhere could remove backup {backup_id} or its WAL "
            "while this restore needs them")
        taken = None
    if backup_id in retention_state(archive).deleting or not manifest_present(archive, backup_id):
        if taken is not None:
            lease.release(archive, taken)
        raise RefusedError(f"backup {backup_id} is being removed by retention; plan again (restore-plan) to use "
                           "another backup")
    if taken is not None:
        say(f"took lease {taken.lease_id}: retention keeps backup {backup_id} and its WAL while this restore runs")
    return taken


def write_data_directory(archive: Archive, manifest: BackupManifest, links: chain.ChainPlan | None,
                         target_dir: Path, tablespaces: list[unpack.TablespaceTarget], workers: int,
                         held: lease.Renewal, existing: bool = False) -> None:
    """The backup's files, from its own stream or (an incremental, `links` planned) from
    its chain; over the `existing` cluster, only what differs from it (restore/delta.py)."""
    stored = f"{human_bytes(manifest.stored_size)} stored"
    if links is not None:
        stored += f" by it, {human_bytes(sum(link.stored_size for link in links.manifests))} by its chain"
    say(f"restoring backup {manifest.backup_id} into {target_dir}: {manifest.file_count} files, "
        f"{human_bytes(manifest.size)} ({stored})")
    for each in tablespaces:
        say(f"  tablespace {each.tablespace.name} -> {each.location}")
    try:
        with Progress("restoring", manifest.size) as progress:
            if existing:
                say(delta.restore(archive, manifest, links, target_dir, tablespaces, workers,
                                  progress.advance).describe())
            elif links is None:
                unpack.unpack(archive, manifest, target_dir, tablespaces, workers, progress.advance)
            else:
                chain_writes.unpack_chain(links, target_dir, tablespaces, workers, progress.advance)
    except PitrkitError as exc:
        held.release()  # nothing will replay from an incomplete directory
        raise RestoreIncomplete(exc, target_dir, existing) from None


def restore_lease(config: Config) -> timedelta:
    """How long a restore without --start keeps its lease: [retention] restore_lease,
    whose default applies without a [retention] section too."""
    return timedelta(seconds=(config.retention or RetentionConfig()).restore_lease_seconds)


def say(text: str) -> None:
    print(text, flush=True)


def refuse_root() -> None:
    if os.geteuid() == 0:
        raise RefusedError("restore must not run as root: PostgreSQL will not start a root-owned cluster; "
                           "run it as the OS user that will own the cluster, e.g. sudo -u postgres pitrkit restore ...")


def check_wal_present(archive: Archive, plan: RestorePlan) -> None:
    """Every WAL file the plan needs is still in the archive: a segment deleted after
    the catalog was written is found now, not hours into the copy or replay."""
    names = plan.segments + plan.history_files

    def present(name: str) -> bool:
        file = WalFileName.parse(name)
        # A planned `.partial` may have been replaced by its full segment since: better.
        keys = [wal_key(file)]
        if file.kind == WalFileKind.PARTIAL:
            keys.append(wal_key(WalFileName.parse(file.segment)))
        for key in keys:
            try:
                archive.stat(key)
                return True
            except ObjectNotFound:
                continue
        return False

    with ThreadPoolExecutor(_STAT_THREADS, thread_name_prefix="preflight") as pool:
        found = list(pool.map(present, names))
    missing = [name for name, here in zip(names, found, strict=True) if not here]
    if missing:
        raise RefusedError(f"WAL file {missing[0]} that the restore needs is no longer in the archive "
                           f"{archive.storage.url}" + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
    say(f"checked the archive: all {len(names)} WAL files the restore needs are there")


def fetch_manifest(archive: Archive, backup: documents.BackupSummary) -> BackupManifest:
    """The manifest of `backup` (a catalog entry a plan or a command chose), checked
    against that entry, this archive's system and itself."""
    key = manifest_key(backup.backup_id)
    try:
        manifest = archive.get_document(key, BackupManifest)
    except ObjectNotFound:
        raise RefusedError(f"the manifest {key} of backup {backup.backup_id} is gone from the archive") from None
    except ValueError as exc:
        raise RefusedError(f"corrupt manifest: {exc}") from None
    system_identifier = archive.era_record.system_identifier
    if manifest.system_identifier != system_identifier or manifest.backup_id != backup.backup_id:
        raise RefusedError(f"manifest {key} belongs to backup {manifest.backup_id} of system "
                           f"{manifest.system_identifier}, not to this archive's system {system_identifier}")
    # The choice was made from catalog/backups.json, a cache of the manifests: one that
    # says otherwise was altered (or is not this archive's), and the choice may rest on it.
    if differing := _differing(manifest, backup):
        raise RefusedError(f"{BACKUP_CATALOG_KEY} and {key} disagree about {', '.join(differing)}: one of "
                           "them was altered; if it is the catalog, 'pitrkit catalog rebuild' rewrites it from "
                           "the manifests")
    try:
        unpack.check_manifest(manifest)
    except unpack.CorruptManifest as exc:
        raise RefusedError(f"corrupt manifest: {exc}") from None
    return manifest


def fetch_chain(archive: Archive, manifest: BackupManifest) -> list[BackupManifest]:
    """The manifests of an incremental backup's ancestors, the full first: each stored,
    not being removed by retention, and the one the catalog lists (when it lists it: the
    catalog is a cache, and a backup it lacks is known by its manifest alone). Whether
    they make one chain is `chain.plan_chain`'s to check."""
    listed = {summary.backup_id: summary for summary in read_backup_catalog(archive)}
    deleting = set(retention_state(archive).deleting)
    needing = f"backup {manifest.backup_id} is incremental on a chain of {len(manifest.chain) + 1}"

    def fetch(backup_id: str) -> BackupManifest:
        key = manifest_key(backup_id)
        if backup_id in deleting:
            raise RefusedError(f"{needing}, and retention is removing its link {backup_id}: it cannot be "
                               "restored; plan again (restore-plan) to use another backup")
        try:
            link = archive.get_document(key, BackupManifest)
        except ObjectNotFound:
            raise RefusedError(f"{needing}, and its link {backup_id} is missing from the archive ({key} is gone): it "
                               "cannot be restored; plan again (restore-plan) to use another backup") from None
        except ValueError as exc:
            raise RefusedError(f"{needing}: corrupt manifest of its link {backup_id}: {exc}") from None
        if link.backup_id != backup_id:
            raise RefusedError(f"{needing}: {key} belongs to backup {link.backup_id}, not to its link {backup_id}")
        if backup_id in listed and (differing := _differing(link, listed[backup_id])):
            raise RefusedError(f"{needing}: its link {backup_id}'s manifest is not the one {BACKUP_CATALOG_KEY} "
                               f"lists (they disagree about {', '.join(differing)}): one of them was altered; if it "
                               "is the catalog, 'pitrkit catalog rebuild' rewrites it from the manifests")
        return link

    with ThreadPoolExecutor(_STAT_THREADS, thread_name_prefix="chain") as pool:
        return list(pool.map(fetch, manifest.chain))


def _differing(manifest: documents.BackupSummary, summary: documents.BackupSummary) -> list[str]:
    """The summary fields on which a manifest and the catalog's entry for it disagree."""
    return [field for field in documents.BackupSummary.__struct_fields__
            if getattr(manifest, field) != getattr(summary, field)]


def recovery_settings(plan: RestorePlan, action: str, config_path: Path,
                      archiving: bool) -> recovery_conf.RecoverySettings:
    return recovery_conf.RecoverySettings(
        archiving=archiving,
        restore_command=recovery_conf.restore_command(config_path, plan.fetch_until, plan.era),
        target_time=plan.target.time,
        target_lsn=plan.target.lsn if plan.target.kind == "lsn" else None,  # a --name's LSN is only the plan's
        target_xid=plan.target.xid,
        target_name=plan.target.name,
        immediate=plan.target.kind == "immediate",
        inclusive=plan.target.inclusive,
        timeline=plan.timeline,
        action=None if plan.target.kind == "latest" else action,
    )


def warn_about_archiving(target_dir: Path) -> None:
    archiving = recovery_conf.archiving_setting(target_dir)
    if archiving is not None:
        mode, archive_command = archiving
        print(f"pitrkit: warning: the restored configuration has archive_mode = {mode} and archive_command = "
              f"{archive_command!r}: once promoted, the restored cluster archives there too (on a new "
              "timeline); restore with --archive-mode off if that is not what you want",
              file=sys.stderr)


def warn_about_code(target_dir: Path, settings: recovery_conf.RecoverySettings) -> None:
    """The code-running settings of the restored configuration that will take effect:
    those pitrkit's block sets itself (archive_cleanup_command, recovery_end_command) never
    run, and with archiving off neither do archive_command and archive_library."""
    inert = {name for name, _ in settings.settings()}
    if not settings.archiving:
        inert |= {"archive_command", "archive_library"}
    found = pgconf.code_settings(pgconf.restored(target_dir))
    found = msgspec.structs.replace(found, settings=[each for each in found.settings if each.name not in inert])
    # One warning line each, as every warning: log readers and wrappers take lines.
    for setting in found.settings:
        log.warning("the restored configuration runs code as the server's OS user (anyone who can write to an "
                    "unencrypted archive can set it; check it before starting the server, see "
                    "docs/encryption.md): %s: %s = %s", shown(setting.file), setting.name, pgconf.quoted(setting.value))
    for note in found.notes:
        log.warning("the restored configuration's code-running settings were not checked: %s", note)


def timeline_at(plan: RestorePlan, lsn: Lsn) -> int:
    """The timeline replay is on at `lsn`, along the plan's path."""
    for step in plan.path:
        if step.end is None or lsn < step.end:
            return step.timeline
    return plan.timeline


def start_and_report(plan: RestorePlan, args: argparse.Namespace, target_dir: Path, bindir: Path, port: int,
                     sockets: Path) -> str:
    server = pgstart.start(target_dir, bindir, port, sockets)
    say(f"started PostgreSQL from {bindir} on port {server.port} (socket directory {server.socket_dir}); "
        f"log: {server.log}")
    replay_to = plan.replay_end
    result = pgstart.wait_for_target(server, args.action, plan.backup.start_lsn, replay_to,
                                     lambda lsn: timeline_at(plan, lsn))
    say(f"recovery {result.state} after {human_seconds(result.seconds)}")
    if result.stop_line:
        say(f"  {result.stop_line}")
    say(f"  last replayed WAL location: {result.lsn if result.lsn is not None else 'unknown'}")
    say(f"  last replayed transaction: {result.last_transaction or 'none'}")
    say(f"  now on timeline: {result.timeline if result.timeline is not None else 'unknown'}")
    if result.locked:
        say("  replay holds these relations locked (a transaction still open at the target, such as a DROP "
            "TABLE committed after it); a query on them waits until recovery moves on:")
        for each in result.locked:
            say(f"    {each.relation} in database {each.database} ({each.mode})")
        say("  to read them: promote (SELECT pg_promote(), or pg_ctl promote), which rolls that transaction "
            "back; or restore again to a target before the transaction began (e.g. --lsn of its first record); "
            "query with SET lock_timeout = '5s' so that a check fails instead of waiting")
    if result.state != "shut down":
        say(f"  connect {connect_line(server)}")
    return f"recovery {result.state} at {result.lsn} on timeline {result.timeline}"


def connect_line(server: pgstart.Server) -> str:
    """psql as restore's own watch connected (it got in, so the line works): this OS
    user, the role libpq chose for it, the server's socket and port."""
    import psycopg

    role = next((option.val.decode() for option in psycopg.pq.Conninfo.get_defaults()
                 if option.keyword == b"user" and option.val), None)
    user = pwd.getpwuid(os.geteuid()).pw_name
    psql = f"{server.bindir / 'psql'} -h {server.socket_dir} -p {server.port}" + (f" -U {role}" if role else "")
    return f"(as OS user {user}): {psql} -d postgres"
