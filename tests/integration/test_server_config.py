"""Clusters whose configuration lives outside the data directory, and what `restore
--start` says when the server does not come up or pauses with relations locked.

Debian's layout is the common case: a cluster made with `pg_createcluster` keeps
postgresql.conf, pg_hba.conf and pg_ident.conf in /etc/postgresql/<major>/<cluster>/,
and its postgresql.conf names the data directory, an external pid file, the socket
directory /var/run/postgresql and the snakeoil certificate. Here the cluster is made with
a unique name and a private PG_CLUSTER_CONF_ROOT, started with pg_ctlcluster and dropped
with pg_dropcluster; 15/main is never touched. A plain cluster started with
`-c config_file=...` covers the same on PostgreSQL 18.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pitrkit.catalog.documents import CAPTURED_DIR
from pitrkit.restore import server_config

import pgharness
from debian_cluster import DEBIAN_MAJOR, DEBIAN_SOCKETS, DebianCluster, debian_install
from pitr_workload import (
    archive_everything,
    archiving_primary,
    attach,
    backup_push,
    create_tables,
    digests,
    drop_doomed,
    note_point,
    refusal,
    restore_into,
    succeeded,
    write_round,
)
from pitrkit_setup import PitrkitSetup

pytestmark = pytest.mark.integration



def config_lines(pgdata: Path) -> dict[str, list[str]]:
    """The lines of every configuration file the restored server reads, comments cut off."""
    files = [pgdata / name for name in ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")]
    files += sorted((pgdata / server_config.INCLUDE_DIR).glob("*")) if (pgdata / server_config.INCLUDE_DIR).is_dir() \
        else []
    return {str(path.relative_to(pgdata)): [line.partition("#")[0] for line in path.read_text().splitlines()
                                             if line.partition("#")[0].strip()]
            for path in files if path.exists()}


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A server certificate and key, as the snakeoil pair is on Debian: files of this host."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "ssl-cert.pem", directory / "ssl-cert.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    pgharness.give_to_server_user(directory)
    key_file.chmod(0o600)
    return cert_file, key_file


@pytest.fixture
def debian_cluster(pg_installs, harness_tmp: Path) -> Iterator[DebianCluster]:
    root = pgharness.make_server_dir(Path(tempfile.mkdtemp(prefix="deb", dir=harness_tmp)))
    made = DebianCluster(debian_install(pg_installs), root)
    made.create("--auth-local=trust")  # the test connects as root to the postgres role
    yield made
    print(f"===== {made.name} server log =====\n{made.cluster.log()}")
    made.drop()
    shutil.rmtree(made.root, ignore_errors=True)


@pytest.fixture
def restored_clusters(pg_installs, harness_tmp: Path) -> Iterator:
    """A factory of pgharness.Cluster for restores of the Debian cluster (PostgreSQL 15),
    each stopped and removed afterwards."""
    made: list[pgharness.Cluster] = []
    install = next(each for each in pg_installs if each.major == DEBIAN_MAJOR)

    def make(init: bool = False) -> pgharness.Cluster:
        assert not init
        new = pgharness.Cluster(install, Path(tempfile.mkdtemp(prefix="r", dir=harness_tmp)))
        made.append(new)
        return new

    yield make
    for each in made:
        print(f"===== {each} restore.log =====")
        log = each.pgdata / "log" / "restore.log"
        print(log.read_text() if log.exists() else "(none)")
        each.cleanup()


def test_a_debian_cluster_is_restored_with_its_configuration_and_nothing_of_the_primarys(
        debian_cluster, restored_clusters, runnable_install, server_tmp):
    primary = debian_cluster.cluster
    setup = PitrkitSetup.create(runnable_install, server_tmp, agent=False)
    cert_file, key_file = self_signed_certificate(pgharness.make_server_dir(debian_cluster.root / "ssl"))
    # As Debian ships it, in postgresql.conf itself; archiving through conf.d (include_dir).
    with open(debian_cluster.etc / "postgresql.conf", "a") as conf:
        conf.write(f"ssl = on\nssl_cert_file = '{cert_file}'\nssl_key_file = '{key_file}'\n")
    (debian_cluster.etc / "conf.d" / "pitrkit.conf").write_text(
        f"archive_mode = on\narchive_command = '{setup.archive_command}'\ncheckpoint_timeout = '30s'\n")
    pgharness.give_to_server_user(debian_cluster.etc)
    debian_cluster.start()
    setup.write_config(agent=False)
    setup.init(primary)
    create_tables(primary)
    write_round(primary, 1)
    backup = backup_push(setup)
    write_round(primary, 2)
    target = note_point(primary)
    write_round(primary, 3)
    drop_doomed(primary)
    archive_everything(primary)

    # The manifest and backup-list say what came from outside the data directory.
    listed = json.loads(succeeded(setup.run("backup-list", "--json")))["backups"]
    configuration = listed[0]["configuration"]
    assert configuration["data_directory"] == str(primary.pgdata)
    assert configuration["config_file"] == str(debian_cluster.etc / "postgresql.conf")
    roles = {each["path"]: each["role"] for each in configuration["files"]}
    assert roles == {str(debian_cluster.etc / "postgresql.conf"): "config_file",
                     str(debian_cluster.etc / "pg_hba.conf"): "hba_file",
                     str(debian_cluster.etc / "pg_ident.conf"): "ident_file",
                     str(debian_cluster.etc / "conf.d" / "pitrkit.conf"): "include"}
    assert "4 outside" in succeeded(setup.run("backup-list")).splitlines()[1]

    # The primary's port is busy: refused before anything is written.
    refused, result = restore_into(restored_clusters, setup, "--to", target.time, "--start",
                                   "--port", str(primary.port))
    assert f"--port {primary.port} is in use" in refusal(result)
    assert not refused.pgdata.exists()

    # Another host: the certificate files are not there.
    shutil.move(debian_cluster.root / "ssl", debian_cluster.root / "ssl.elsewhere")
    pid_file = DEBIAN_SOCKETS / f"{DEBIAN_MAJOR}-{debian_cluster.name}.pid"
    primary_pid = pid_file.read_text()
    restored, result = restore_into(restored_clusters, setup, "--to", target.time, "--archive-mode", "off",
                                    start=True)
    out = succeeded(result)
    print(out)
    assert f"restoring backup {backup['backup_id']}" in out and "recovery promoted" in out
    assert "external_pid_file = '/var/run/postgresql" in out and "commented out" in out
    assert "ssl = 'off'" in out and str(cert_file) in out
    attach(restored)
    assert digests(restored) == target.digests

    # The restored server uses its own files only, and says so itself.
    shown = dict(restored.sql("SELECT name, setting FROM pg_settings WHERE name IN ('data_directory', "
                              "'config_file', 'hba_file', 'ident_file', 'external_pid_file', 'cluster_name', "
                              "'ssl', 'unix_socket_directories', 'port', 'archive_mode')"))
    pgdata = str(restored.pgdata)
    assert shown["data_directory"] == pgdata
    assert shown["config_file"] == f"{pgdata}/postgresql.conf"
    assert shown["hba_file"] == f"{pgdata}/pg_hba.conf" and shown["ident_file"] == f"{pgdata}/pg_ident.conf"
    assert shown["external_pid_file"] == ""
    assert shown["cluster_name"] == f"{DEBIAN_MAJOR}/{debian_cluster.name}-restored"
    assert shown["ssl"] == "off" and shown["archive_mode"] == "off"
    assert shown["unix_socket_directories"] == str(restored.socket_dir) and shown["port"] == str(restored.port)
    assert restored.sql("SHOW checkpoint_timeout")[0][0] == "30s"  # conf.d's file, restored and included
    # ... and its configuration names nothing of the primary's.
    primary_paths = [str(debian_cluster.etc), str(primary.pgdata), str(DEBIAN_SOCKETS), str(debian_cluster.root)]
    for name, lines in config_lines(restored.pgdata).items():
        for line in lines:
            assert not any(path in line for path in primary_paths), f"{name}: {line}"
    assert not (restored.pgdata / CAPTURED_DIR).exists()
    assert pid_file.read_text() == primary_pid
    assert primary.sql("SELECT count(*) FROM accounts")[0][0] > 0  # the primary is untouched and running


def start_with_config_outside(primary: pgharness.Cluster) -> None:
    """Start `primary` as Debian's pg_ctlcluster does: -c config_file=<outside>."""
    etc = primary.directory / "etc"
    primary.run("pg_ctl", "start", "-D", primary.pgdata, "-l", primary.logfile, "-w", "-t", "60", "-o",
                f"-p {primary.port} -k {primary.socket_dir} -c config_file={etc}/postgresql.conf", timeout=70)


def move_config_outside(primary: pgharness.Cluster) -> Path:
    """postgresql.conf and pg_hba.conf into <cluster>/etc, with an include_dir, an external
    pid file and a work_mem that tells the two postgresql.conf apart; pg_ident.conf stays."""
    etc = pgharness.make_server_dir(primary.directory / "etc")
    pgharness.make_server_dir(etc / "conf.d")
    shutil.copy(primary.pgdata / "postgresql.conf", etc / "postgresql.conf")
    shutil.move(primary.pgdata / "pg_hba.conf", etc / "pg_hba.conf")
    with open(etc / "postgresql.conf", "a") as conf:
        conf.write(f"data_directory = '{primary.pgdata}'\nhba_file = '{etc}/pg_hba.conf'\n"
                   f"ident_file = '{primary.pgdata}/pg_ident.conf'\nexternal_pid_file = '{etc}/primary.pid'\n"
                   "include_dir = 'conf.d'\n")
    (etc / "conf.d" / "10-memory.conf").write_text("work_mem = '7MB'\n")
    primary.conf(work_mem="3MB")  # the data directory's own postgresql.conf, which the server does not read
    pgharness.give_to_server_user(etc)
    return etc


def test_config_file_outside_the_data_directory_and_a_broken_one(cluster, pitrkit_setup):
    primary = cluster(archive_mode="on", archive_command=pitrkit_setup.archive_command, checkpoint_timeout="30s")
    primary.env.update(pitrkit_setup.env)
    etc = move_config_outside(primary)
    start_with_config_outside(primary)
    pitrkit_setup.init(primary)
    create_tables(primary)
    backup_push(pitrkit_setup)
    write_round(primary, 1)
    target = note_point(primary)
    write_round(primary, 2)
    archive_everything(primary)

    restored, result = restore_into(cluster, pitrkit_setup, "--lsn", target.lsn, "--archive-mode", "off", start=True)
    out = succeeded(result)
    assert "postgresql.conf: replaced the data directory's own" in out
    attach(restored)
    assert digests(restored) == target.digests
    pgdata = str(restored.pgdata)
    shown = dict(restored.sql("SELECT name, setting FROM pg_settings WHERE name IN ('config_file', 'hba_file', "
                              "'ident_file', 'external_pid_file', 'work_mem')"))
    assert shown == {"config_file": f"{pgdata}/postgresql.conf", "hba_file": f"{pgdata}/pg_hba.conf",
                     "ident_file": f"{pgdata}/pg_ident.conf", "external_pid_file": "", "work_mem": "7168"}
    for name, lines in config_lines(restored.pgdata).items():
        for line in lines:
            assert str(etc) not in line and str(primary.pgdata) not in line, f"{name}: {line}"
    assert (etc / "primary.pid").read_text().split()[0] == (primary.pgdata / "postmaster.pid").read_text().split()[0]

    # --config-files none: the backed-up configuration left out.
    bare, result = restore_into(cluster, pitrkit_setup, "--lsn", target.lsn, "--config-files", "none")
    assert "--config-files none: wrote a minimal postgresql.conf" in succeeded(result)
    assert "work_mem" not in (bare.pgdata / "postgresql.conf").read_text()
    assert not (bare.pgdata / server_config.INCLUDE_DIR).exists()
    assert not (bare.pgdata / CAPTURED_DIR).exists()

    # A configuration the server cannot start with (changed after the primary started):
    # --start fails in seconds with the server's own FATAL line, and lets go of its lease.
    (etc / "conf.d" / "20-broken.conf").write_text("shared_preload_libraries = 'pitrkit_no_such_library'\n")
    pgharness.give_to_server_user(etc)
    backup_push(pitrkit_setup)
    write_round(primary, 3)
    later = note_point(primary)
    archive_everything(primary)
    began = time.monotonic()
    broken, result = restore_into(cluster, pitrkit_setup, "--lsn", later.lsn, "--archive-mode", "off", start=True)
    took = time.monotonic() - began
    error = refusal(result)
    assert 'could not access file "pitrkit_no_such_library"' in error and "PostgreSQL did not start" in error
    assert took < 30, f"took {took:.0f} s"
    lease = re.search(r"^took lease (\S+):", result.stdout, re.MULTILINE)
    assert lease and f"released lease {lease[1]}" in result.stdout
    assert not (pitrkit_setup.archive / "leases" / f"{lease[1]}.json").exists()
    assert not (broken.pgdata / "postmaster.pid").exists()


def test_an_include_in_postgresql_auto_conf_of_a_file_outside_the_restore_is_commented_out(
        cluster, pitrkit_setup, server_tmp):
    # postgresql.auto.conf is restored as it was, and a hand edit can include any file of
    # the restore host: the restored server must not read it, nor restore rewrite it (the
    # block that sets the port comments out every other port setting it finds).
    elsewhere = pgharness.make_server_dir(server_tmp / "elsewhere")
    primary = archiving_primary(cluster, pitrkit_setup)
    with open(primary.pgdata / "postgresql.auto.conf", "a") as auto_conf:  # appending keeps the owner
        auto_conf.write(f"include_if_exists = '{elsewhere}/tuning.conf'\n")
    primary.sql("SELECT pg_reload_conf()")
    backup_push(pitrkit_setup)
    write_round(primary, 1)
    target = note_point(primary)
    archive_everything(primary)
    # Only now is there such a file, so backup-push had nothing to copy.
    tuning = f"port = {primary.port}\nwork_mem = '5MB'\n"
    (elsewhere / "tuning.conf").write_text(tuning)
    pgharness.give_to_server_user(elsewhere)

    restored, result = restore_into(cluster, pitrkit_setup, "--lsn", target.lsn, "--archive-mode", "off", start=True)
    out = succeeded(result)
    assert (elsewhere / "tuning.conf").read_text() == tuning
    assert (f"postgresql.auto.conf: include_if_exists '{elsewhere}/tuning.conf' commented out: the file is not in "
            "the backup") in out
    attach(restored)
    assert digests(restored) == target.digests
    read = [source for (source,) in restored.sql("SELECT DISTINCT sourcefile FROM pg_file_settings")]
    assert read and all(source.startswith(f"{restored.pgdata}/") for source in read), read
    assert restored.sql("SHOW work_mem")[0][0] == "4MB"


def test_promote_trigger_file_of_the_backed_up_server_is_commented_out(cluster, pitrkit_setup, pg_major, server_tmp):
    # PostgreSQL 15 and older promote a server in recovery when this file appears: restored
    # as backed up, the copy would promote on a cue meant for the primary's standby.
    if pg_major > 15:
        pytest.skip("promote_trigger_file is gone since PostgreSQL 16 (the server refuses to start with it)")
    trigger = server_tmp / "promote-the-standby"
    primary = cluster(archive_mode="on", archive_command=pitrkit_setup.archive_command, checkpoint_timeout="30s")
    primary.env.update(pitrkit_setup.env)
    etc = move_config_outside(primary)  # so that it is also set in a file backup-push copies
    (etc / "conf.d" / "20-standby.conf").write_text(f"promote_trigger_file = '{trigger}'\n")
    pgharness.give_to_server_user(etc)
    start_with_config_outside(primary)
    pitrkit_setup.init(primary)
    create_tables(primary)
    primary.sql(f"ALTER SYSTEM SET promote_trigger_file = '{trigger}.auto'")
    backup_push(pitrkit_setup)
    write_round(primary, 1)
    target = note_point(primary)
    archive_everything(primary)

    restored, result = restore_into(cluster, pitrkit_setup, "--lsn", target.lsn, "--action", "pause",
                                    "--archive-mode", "off", start=True)
    out = succeeded(result)
    assert "recovery paused" in out
    attach(restored)
    # The files appearing leave the paused copy in recovery (PostgreSQL checks for them
    # every second while paused).
    for each in (trigger, Path(f"{trigger}.auto")):
        each.touch()
    time.sleep(3)
    assert restored.sql("SELECT pg_is_in_recovery()")[0][0] is True
    assert restored.sql("SHOW promote_trigger_file")[0][0] == ""
    assert restored.sql("SELECT sourcefile FROM pg_file_settings WHERE name = 'promote_trigger_file'") == []
    assert f"postgresql.auto.conf: promote_trigger_file = '{trigger}.auto' commented out" in out
    assert re.search(rf"pitrkit.conf.d/\S+-20-standby.conf: promote_trigger_file = '{trigger}' commented out", out), out


def test_a_pause_before_a_drop_reports_the_locked_table_and_the_documented_check_does_not_hang(
        cluster, pitrkit_setup):
    primary = archiving_primary(cluster, pitrkit_setup)
    backup_push(pitrkit_setup)
    write_round(primary, 1)
    # The DROP's lock is logged when it is taken, its commit after the target.
    with primary.connect() as dropping:
        dropping.autocommit = False
        dropping.execute("DROP TABLE doomed")
        (target,) = dropping.execute("SELECT clock_timestamp()::text").fetchone()
        dropping.commit()
    write_round(primary, 2)
    archive_everything(primary)

    restored, result = restore_into(cluster, pitrkit_setup, "--to", target, "--action", "pause",
                                    "--archive-mode", "off", start=True)
    out = succeeded(result)
    assert "recovery paused" in out
    assert "public.doomed in database postgres (AccessExclusiveLock)" in out
    assert "promote" in out and "lock_timeout" in out
    attach(restored)
    # The runbook's check: with lock_timeout it fails at once instead of waiting forever.
    began = time.monotonic()
    with pytest.raises(psycopg.errors.LockNotAvailable), restored.connect() as checking:
        checking.execute("SET lock_timeout = '2s'")
        checking.execute("SELECT count(*) FROM doomed")
    assert time.monotonic() - began < 30
    # Promoting rolls the unfinished DROP back: the table is there to read.
    restored.sql("SELECT pg_promote()")
    assert restored.sql("SELECT count(*) FROM doomed")[0][0] == 3000
