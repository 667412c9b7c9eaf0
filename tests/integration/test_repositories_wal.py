"""The WAL path over two repositories against real PostgreSQL (issue 16): archive_command
through the agent to a required local repository and an optional one; the optional one
goes away (its directory renamed, as an unmount), WAL keeps flowing, its spool fills up
to its cap and the repository falls behind; it comes back and the agent catches it up
(the spool drained, the rest copied from the required repository); then a restore whose
WAL comes from the optional repository alone replays to the exact digest."""

from __future__ import annotations

import os

import pytest

from tests.integration.test_wal_archive import archiving_cluster, table_digest

import pgharness

pytestmark = pytest.mark.integration

SEGMENT = 16 << 20


def two_repositories(setup, dr, spool) -> None:
    """The setup's configuration with its repository first (required) and `dr` second,
    optional, its spool holding at most two segments."""
    text = setup.config.read_text()
    single = f'[repository]\nurl = "{setup.url}"\n'
    assert text.startswith(single)
    text = (f'[[repository]]\nname = "local"\nurl = "{setup.url}"\nretries = 1\ntimeout = 10\n'
            f'[[repository]]\nname = "dr"\nurl = "file://{dr}"\nrequired = false\nspool = "{spool}"\n'
            f'spool_max = {2 * SEGMENT + 4096}\n' + text.removeprefix(single))
    written = setup.config.with_name(".two.toml")
    written.write_text(text)
    pgharness.give_to_server_user(written)
    os.replace(written, setup.config)


def wal_names(root) -> set[str]:
    return {path.name for path in (root / "wal").rglob("0*") if path.is_file()}


def test_an_optional_repository_that_goes_away_is_caught_up_and_serves_a_restore_alone(
        cluster, pitrkit_setup, server_tmp):
    # The agent stays up between the test's steps; it would anyway while a spool holds WAL.
    pitrkit_setup.write_config(idle_timeout=120)
    primary = archiving_cluster(cluster, pitrkit_setup)
    # dr gets its archive.json from `pitrkit init` run on a configuration naming it alone.
    dr = pgharness.make_server_dir(server_tmp / "dr", mode=0o700)
    local = pitrkit_setup.archive
    pitrkit_setup.archive = dr
    pitrkit_setup.write_config()
    assert pitrkit_setup.run("init").returncode == 0
    pitrkit_setup.archive = local
    pitrkit_setup.write_config()
    spool = server_tmp / "spool"
    two_repositories(pitrkit_setup, dr, spool)

    primary.sql("CREATE TABLE t (id int PRIMARY KEY, payload text)")
    replica = cluster(init=False)
    primary.pg_basebackup(replica.pgdata, "-X", "none")
    primary.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 10000) g")
    before = primary.switch_wal()
    primary.wait_for_archived(before)
    assert before in wal_names(dr) and before in wal_names(local)

    dr.rename(dr.with_name("dr.away"))
    for round_ in range(5):
        primary.sql(f"INSERT INTO t SELECT g, md5(g::text) FROM generate_series({round_ * 10000 + 10001}, "
                    f"{round_ * 10000 + 20000}) g")
        last = primary.switch_wal()
    primary.wait_for_archived(last)
    # Archiving never stopped for the optional repository.
    assert primary.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] == 0
    spooled = sorted(os.listdir(spool / "dr"))
    assert ".behind" in spooled, spooled
    assert len([name for name in spooled if not name.startswith(".")]) <= 2

    dr.with_name("dr.away").rename(dr)
    primary.sql("UPDATE t SET payload = payload || '!' WHERE id % 7 = 0")
    expected = table_digest(primary)
    primary.wait_for_archived(primary.switch_wal())
    pgharness.wait_for(lambda: not os.listdir(spool / "dr") or os.listdir(spool / "dr") == [".lock"], 120,
                       what="the agent to catch dr up")
    assert wal_names(local) <= wal_names(dr)

    # The WAL gone from the first repository: every segment is served by the second.
    (local / "wal").rename(local / "wal.away")
    replica.conf(restore_command=pitrkit_setup.restore_command, archive_mode="off",
                 recovery_target_action="promote")
    replica.env.update(pitrkit_setup.env)
    replica.signal("recovery")
    replica.start(timeout=120)
    pgharness.wait_for(lambda: replica.sql("SELECT NOT pg_is_in_recovery()")[0][0], 120,
                       what="recovery to finish")
    assert table_digest(replica) == expected
    assert f'restored log file "{last}" from archive' in replica.log()
