"""The first hour on a stock server (issue 12): a test restore must not hijack "latest",
and the messages a DBA meets there say what to do. Real PostgreSQL 15 and 18, pitrkit run
as the server user through the installed executable (and as root where that is the
mistake being tested).
"""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

import pgharness
from pitr_workload import (
    archive_everything,
    branch_at,
    digests,
    note_point,
    primary_with_a_backup,
    refusal,
    restore_plan,
    restore_started,
    timeline,
    wait_until_promoted,
    write_round,
)

pytestmark = pytest.mark.integration


def test_a_promoted_test_restore_does_not_become_the_archives_head(cluster, pitrkit_setup):
    """A test restore promoted with the default --archive-mode preserve archives timeline 2
    into the production archive. status still judges the primary's timeline 1 and shows 2
    as a branch; --latest warns, naming both; --timeline server follows the primary. The
    copy restored with --archive-mode off runs no subscription, and its connect line works."""
    setup = pitrkit_setup
    primary, _ = primary_with_a_backup(cluster, setup)
    point = note_point(primary)
    write_round(primary, 3)
    archive_everything(primary)
    _, _, last_on_two = branch_at(cluster, setup, point)
    assert last_on_two.startswith("00000002") and timeline(primary) == 1
    final = digests(primary)
    archive_everything(primary)

    report = json.loads(setup.run("status", "--json").stdout)
    assert report["archiver"]["timeline"] == 1 and report["head_timeline"] == 1
    assert [(t["timeline"], t["branch"]) for t in report["timelines"]] == [(1, False), (2, True)]
    assert report["last_wal"]["timeline"] == 1
    judged = {check["name"]: check for check in report["checks"]}
    assert judged["timeline"]["message"].startswith("the server is on timeline 1; timeline 2 is a branch off its "
                                                    "history (restore --latest would follow timeline 2")
    assert judged["restorable"]["message"].startswith("timeline 1 restorable from ")

    planned = setup.run("restore-plan", "--latest", "--json")
    assert planned.returncode == 0 and json.loads(planned.stdout)["timeline"] == 2
    assert planned.stderr == ("pitrkit: warning: the newest timeline in the archive, 2, is not timeline 1 that the "
                              "server in [postgres] conninfo is on: --latest follows timeline 2 (a restored copy "
                              "promoted with archiving on?); to restore the server's own history, add --timeline "
                              "server\n")
    assert restore_plan(setup, "--latest", "--timeline", "server")["timeline"] == 1

    restored, report_text = restore_started(cluster, setup, "--latest", "--timeline", "server",
                                            "--archive-mode", "off")
    wait_until_promoted(restored)
    assert digests(restored) == final
    assert "timeline 2" not in report_text.split("timeline:", 1)[1].splitlines()[0]
    assert "max_logical_replication_workers 0" in report_text and "runs no subscription" in report_text
    assert restored.sql("SHOW max_logical_replication_workers")[0][0] == "0"
    assert restored.sql("SHOW archive_mode")[0][0] == "off"
    assert restored.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                        "'logical replication launcher'")[0][0] == 0

    # The connect line, run as written by the OS user it names.
    [line] = [line for line in report_text.splitlines() if line.strip().startswith("connect (as OS user ")]
    user, _, command = line.strip().removeprefix("connect (as OS user ").partition("): ")
    assert user == pgharness.server_user().name and " -U " in command
    connected = pgharness.run_as_server_user([*shlex.split(command), "-Atc", "SELECT 42"], check=False)
    assert (connected.returncode, connected.stdout.strip()) == (0, "42"), connected.stderr


def test_a_peer_authenticated_server_says_run_as_the_postgres_os_user(cluster, pitrkit_setup):
    """Debian's pg_hba.conf: peer on the unix socket. backup-push (and status) run as root
    cannot get in as role postgres, and must say whom to run as."""
    if not pgharness.server_user().switch:
        pytest.skip("needs root: the server user must differ from the one running pitrkit")
    setup = pitrkit_setup
    primary = cluster(archive_mode="on", archive_command=setup.archive_command)
    (primary.pgdata / "pg_hba.conf").write_text("local all all peer\n")
    primary.env.update(setup.env)
    primary.start()
    setup.init(primary)  # as the server user, as a DBA does

    as_root = subprocess.run([str(setup.pitrkit), "--config", str(setup.config), "backup-push"],
                             capture_output=True, text=True, timeout=120, env={**setup.env, "PATH": "/usr/bin:/bin"})
    error = refusal(as_root)
    assert error.startswith('pitrkit: cannot connect to PostgreSQL with [postgres] conninfo: the server uses peer '
                            'authentication for role "postgres" on this socket: it lets in only the OS user '
                            '"postgres", and this runs as "root"; run as the postgres OS user (sudo -u postgres '
                            'pitrkit ...)'), error
    assert error.endswith('Peer authentication failed for user "postgres")'), error

    status = subprocess.run([str(setup.pitrkit), "--config", str(setup.config), "status", "--json"],
                            capture_output=True, text=True, timeout=120, env={**setup.env, "PATH": "/usr/bin:/bin"})
    archiver = json.loads(status.stdout)["archiver"]
    assert not archiver["reachable"] and "run as the postgres OS user" in archiver["problem"]
