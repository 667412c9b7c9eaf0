"""The WAL archive path against real PostgreSQL servers: archive_command and
restore_command calling the installed `pitrkit`, as the server user, exactly as
PostgreSQL runs them (docs/architecture.md, guarantees 1-4)."""

from __future__ import annotations

import os
import shutil

import pytest

import pgharness

pytestmark = pytest.mark.integration


def table_digest(cluster, table: str = "t") -> tuple[int, str]:
    rows = cluster.sql(f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY id), '')) FROM {table} t")
    return rows[0][0], rows[0][1]


def archiving_cluster(cluster, setup, **settings):
    primary = cluster(archive_mode="on", archive_command=setup.archive_command,
                      wal_keep_size="1GB", **settings)
    primary.env.update(setup.env)
    setup.init(primary)
    return primary.start()


def fetch(cluster, setup, name: str, destination: str):
    return cluster.shell(setup.command("wal-fetch", name, destination), check=False)


def test_archived_segments_fetch_back_byte_for_byte(cluster, pitrkit_setup):
    primary = archiving_cluster(cluster, pitrkit_setup)
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, payload text)")
    switched = []
    for round_ in range(4):
        first = round_ * 5000
        primary.sql(f"INSERT INTO t SELECT g, md5(g::text) FROM generate_series({first}, {first + 4999}) g")
        switched.append(primary.switch_wal())
    primary.wait_for_archived(switched[-1])
    assert primary.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] == 0

    archived = sorted(p.name for p in (pitrkit_setup.archive / "wal").rglob("0*") if p.is_file())
    assert set(switched) <= set(archived)
    restore_dir = pgharness.make_server_dir(primary.directory / "fetched")
    for name in archived:
        result = fetch(primary, pitrkit_setup, name, str(restore_dir / name))
        assert result.returncode == 0, result.stderr
        original = (primary.pgdata / "pg_wal" / name).read_bytes()
        assert (restore_dir / name).read_bytes() == original, name
    # Compression happened: the archive is smaller than the WAL it holds.
    stored = sum(pitrkit_setup.stored(n).stat().st_size for n in archived)
    assert stored < len(archived) * 16 * 1024 * 1024 / 2
    # The first push started an agent, which served the rest.
    assert pitrkit_setup.agent_pids()


def test_recovery_replays_the_archive(cluster, pitrkit_setup):
    primary = archiving_cluster(cluster, pitrkit_setup)
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, payload text)")
    primary.sql("INSERT INTO t SELECT g, 'before backup ' || g FROM generate_series(1, 1000) g")

    replica = cluster(init=False)
    primary.pg_basebackup(replica.pgdata, "-X", "none")

    primary.sql("INSERT INTO t SELECT g, repeat('after backup', 20) FROM generate_series(1001, 60000) g")
    primary.sql("UPDATE t SET payload = payload || '!' WHERE id % 7 = 0")
    expected = table_digest(primary)
    primary.wait_for_archived(primary.switch_wal())

    # Only restore_command brings WAL: the copy has no pg_wal content of its own.
    replica.conf(restore_command=pitrkit_setup.restore_command, archive_mode="off",
                 recovery_target_action="promote")
    replica.env.update(pitrkit_setup.env)
    replica.signal("recovery")
    replica.start(timeout=120)
    pgharness.wait_for(lambda: replica.sql("SELECT NOT pg_is_in_recovery()")[0][0], 120,
                       what="recovery to finish")
    assert table_digest(replica) == expected


def test_corrupt_object_aborts_recovery_instead_of_promoting(cluster, pitrkit_setup):
    """docs/architecture.md, guarantee 4: a fault is never "end of WAL". PostgreSQL must
    stop, not promote."""
    primary = archiving_cluster(cluster, pitrkit_setup)
    primary.sql("CREATE TABLE t (id int PRIMARY KEY)")
    replica = cluster(init=False)
    primary.pg_basebackup(replica.pgdata, "-X", "none")
    primary.sql("INSERT INTO t SELECT generate_series(1, 50000)")
    needed = primary.switch_wal()
    primary.wait_for_archived(needed)

    stored = pitrkit_setup.stored(needed)
    blob = bytearray(stored.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    stored.write_bytes(bytes(blob))

    replica.conf(restore_command=pitrkit_setup.restore_command, archive_mode="off")
    replica.env.update(pitrkit_setup.env)
    replica.signal("recovery")
    with pytest.raises(RuntimeError):
        replica.start(timeout=60)
    log = replica.log()
    assert "corrupt" in log and needed in log
    assert "FATAL" in log
    # It never promoted: no new timeline was created.
    assert not (replica.pgdata / "pg_wal" / "00000002.history").exists()


def test_an_archive_unmounted_mid_recovery_stops_recovery_instead_of_promoting(cluster, pitrkit_setup):
    """The archive's file system goes away while a restore replays from it, leaving the
    empty mount point. Every name is "not found" there; answering "not archived" would
    end recovery at that point and promote a server that misses the rest of the WAL.
    Recovery must stop with an error instead, still in archive recovery."""
    primary = archiving_cluster(cluster, pitrkit_setup)
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, payload text)")
    replica = cluster(init=False)
    primary.pg_basebackup(replica.pgdata, "-X", "none")
    written = []
    for round_ in range(5):
        primary.sql(f"INSERT INTO t SELECT g, md5(g::text) FROM generate_series({round_ * 10000 + 1}, "
                    f"{(round_ + 1) * 10000}) g")
        written.append(primary.switch_wal())
    primary.wait_for_archived(written[-1])

    # restore_command is pitrkit's, held at one segment until the archive is gone, so
    # that the file system goes away at a known point in the middle of replay.
    gate = pgharness.make_server_dir(replica.directory / "gate") / "go"
    held = written[2]
    replica.conf(restore_command=f"if [ %f = {held} ]; then while [ ! -e {gate} ]; do sleep 0.1; done; fi; "
                                 + pitrkit_setup.restore_command,
                 archive_mode="off", recovery_target_action="promote")
    replica.env.update(pitrkit_setup.env)
    replica.signal("recovery")
    replica.start(wait=False)
    pgharness.wait_for(lambda: f'restored log file "{written[1]}" from archive' in replica.log(), 120,
                       what=f"recovery to replay {written[1]} from the archive")

    pitrkit_setup.unmount()
    gate.touch()
    pgharness.wait_for(lambda: not replica.is_running, 120, what="recovery to stop")
    log = replica.log()
    assert "FATAL" in log and "archive.json" in log, log
    # It never promoted: no new timeline, and the cluster is still in archive recovery.
    assert "selected new timeline ID" not in log
    assert not (replica.pgdata / "pg_wal" / "00000002.history").exists()
    assert replica.controldata()["Database cluster state"] == "in archive recovery"


# --- refusals, with real segments -------------------------------------------------------


@pytest.fixture
def primary_and_segment(cluster, pitrkit_setup):
    """A running archiving cluster and one of its archived segments (name, pg_wal path)."""
    primary = archiving_cluster(cluster, pitrkit_setup)
    primary.sql("CREATE TABLE t AS SELECT generate_series(1, 20000) AS id")
    name = primary.switch_wal()
    primary.wait_for_archived(name)
    return primary, name


def push(cluster, setup, path) -> pgharness.subprocess.CompletedProcess[str]:
    return cluster.shell(setup.command("wal-push", str(path)), check=False)


def one_line(stderr: str) -> str:
    """The error line; before it only retry warnings may stand (they are worth having in
    PostgreSQL's log)."""
    *warnings, error = stderr.strip().splitlines()
    assert error.startswith("pitrkit: ") and "WARNING" not in error, stderr
    assert all(line.startswith("pitrkit: WARNING: ") for line in warnings), stderr
    assert "Traceback" not in stderr
    return error


def test_segment_from_another_cluster_is_refused(cluster, pitrkit_setup, primary_and_segment):
    primary, _ = primary_and_segment
    other = cluster().start()
    other.sql("CREATE TABLE x AS SELECT generate_series(1, 1000) AS id")
    name = other.switch_wal()
    foreign = pgharness.make_server_dir(other.directory / "foreign") / name
    shutil.copy(other.pgdata / "pg_wal" / name, foreign)
    pgharness.give_to_server_user(foreign)
    before = sorted(pitrkit_setup.archive.rglob("*"))

    result = push(primary, pitrkit_setup, foreign)
    assert result.returncode == 1
    message = one_line(result.stderr)
    assert str(other.system_identifier) in message and str(primary.system_identifier) in message
    assert sorted(pitrkit_setup.archive.rglob("*")) == before


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong-name"])
def test_invalid_segment_is_refused(pitrkit_setup, primary_and_segment, damage):
    primary, name = primary_and_segment
    data = (primary.pgdata / "pg_wal" / name).read_bytes()
    next_name = name[:16] + f"{int(name[16:], 16) + 50:08X}"
    workdir = pgharness.make_server_dir(primary.directory / "bad")
    if damage == "truncated":
        target, content = workdir / next_name, data[: len(data) // 3]
    elif damage == "garbage":
        target, content = workdir / next_name, os.urandom(len(data))
    else:  # a valid segment under another segment's name
        target, content = workdir / next_name, data
    target.write_bytes(content)
    pgharness.give_to_server_user(target)

    result = push(primary, pitrkit_setup, target)
    assert result.returncode == 1
    assert next_name in one_line(result.stderr) and "refusing" in result.stderr
    assert not pitrkit_setup.stored(next_name).exists()


def test_repush_identical_succeeds_and_different_content_is_refused(pitrkit_setup, primary_and_segment):
    primary, name = primary_and_segment
    stored = pitrkit_setup.stored(name)
    before = stored.read_bytes()

    again = push(primary, pitrkit_setup, primary.pgdata / "pg_wal" / name)
    assert again.returncode == 0, again.stderr

    altered = bytearray((primary.pgdata / "pg_wal" / name).read_bytes())
    altered[-100] ^= 0x01  # past the page header: still a valid-looking segment
    target = pgharness.make_server_dir(primary.directory / "altered") / name
    target.write_bytes(bytes(altered))
    pgharness.give_to_server_user(target)
    result = push(primary, pitrkit_setup, target)
    assert result.returncode == 1
    assert "different content" in one_line(result.stderr)
    assert stored.read_bytes() == before


def test_fetch_exit_codes(pitrkit_setup, primary_and_segment):
    primary, name = primary_and_segment
    destination = pgharness.make_server_dir(primary.directory / "dest")

    missing = fetch(primary, pitrkit_setup, "0000000100000000000000F0", str(destination / "x"))
    assert missing.returncode == 1
    assert "not in the archive" in one_line(missing.stderr)

    stored = pitrkit_setup.stored(name)
    stored.write_bytes(stored.read_bytes()[:-10])  # truncated object
    corrupt = fetch(primary, pitrkit_setup, name, str(destination / name))
    assert corrupt.returncode >= 126
    assert "corrupt" in one_line(corrupt.stderr)
    assert not (destination / name).exists()


def test_malformed_config(pitrkit_setup, primary_and_segment):
    primary, name = primary_and_segment
    pitrkit_setup.config.write_text('[repository]\nurl = "file:///x"\nretires = 3\n')
    pgharness.give_to_server_user(pitrkit_setup.config)

    pushed = push(primary, pitrkit_setup, primary.pgdata / "pg_wal" / name)
    assert pushed.returncode == 2
    assert "repository.retires" in one_line(pushed.stderr)
    fetched = fetch(primary, pitrkit_setup, name, "/tmp/never-written")
    assert fetched.returncode >= 126  # never 1: that would end recovery early
    assert "repository.retires" in one_line(fetched.stderr)
