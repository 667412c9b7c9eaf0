"""The decisions of a backup of a standby that a real primary and standby do not easily
show (tests/integration/test_standby_backup.py runs the whole thing): which server must
archive, when the primary switches WAL segments after pg_backup_stop, and which timelines
fail the backup. The sessions here answer only the positions and timelines asked for."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pitrkit.backup import push, standby
from pitrkit.cli import main
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.postgres.server import BackupLabel, BackupStop, ServerFacts
from pitrkit.postgres.wal import Lsn

SYSTEM_IDENTIFIER = 7300000000000000001
SEGMENT = 16 << 20


def facts(pgdata: Path, in_recovery: bool, mode: str, command: str = "pitrkit wal-push %p") -> ServerFacts:
    return ServerFacts(180001, str(pgdata), SYSTEM_IDENTIFIER, SEGMENT, in_recovery, mode, command, "")


@pytest.fixture
def pgdata(tmp_path: Path) -> Path:
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes(struct.pack("=Q", SYSTEM_IDENTIFIER) + bytes(100))
    return tmp_path


@pytest.mark.parametrize(("primary_mode", "primary_command", "standby_mode"), [
    ("on", "pitrkit wal-push %p", "on"),  # the usual: the primary archives, the standby does not
    ("always", "pitrkit wal-push %p", "on"),
    ("off", "", "always"),  # the standby archives what it receives
])
def test_a_standby_is_backed_up_when_either_archives(pgdata, primary_mode, primary_command, standby_mode):
    push._check_server(facts(pgdata, True, standby_mode), str(pgdata), False,
                       facts(pgdata, False, primary_mode, primary_command))


@pytest.mark.parametrize(("primary_mode", "primary_command", "standby_mode", "standby_command"), [
    ("off", "", "on", "pitrkit wal-push %p"),  # "on" on a standby archives nothing
    ("on", "", "on", ""),
    ("off", "", "always", ""),
])
def test_a_standby_whose_wal_nobody_archives_is_refused(pgdata, primary_mode, primary_command, standby_mode,
                                                        standby_command):
    with pytest.raises(RefusedError, match="neither the primary archives WAL .* nor this standby"):
        push._check_server(facts(pgdata, True, standby_mode, standby_command), str(pgdata), False,
                           facts(pgdata, False, primary_mode, primary_command))
    # wal-receive streaming from the [receive] slot archives it.
    push._check_server(facts(pgdata, True, standby_mode, standby_command), str(pgdata), True,
                       facts(pgdata, False, primary_mode, primary_command))


class Server:
    """A session that answers the timeline, WAL position and switch questions."""

    def __init__(self, timeline: int, lsn: int = 0, recovery_timeline: int | None = None) -> None:
        self._timeline, self.lsn, self._recovery_timeline = timeline, Lsn(lsn), recovery_timeline
        self.switched = 0

    def timeline(self) -> int:
        return self._timeline

    def current_wal_lsn(self) -> Lsn:
        return self.lsn

    def recovery_timeline(self) -> int | None:
        return self._recovery_timeline

    def switch_wal(self) -> Lsn:
        self.switched += 1
        return self.lsn


def stop_at(stop_lsn: int, timeline: int = 1) -> BackupStop:
    label = BackupLabel(Lsn(0x3000028), "000000010000000000000003", timeline)
    return BackupStop(Lsn(stop_lsn), "START TIMELINE: 1\n", "", label, datetime.now(UTC))


def finish(primary: Server, stop: BackupStop, standby_server: Server | None = None) -> str:
    on_standby = standby_server or Server(1, recovery_timeline=1)
    return standby.finish_stop(on_standby, standby.Primary(primary, facts(Path("/"), False, "on")),  # type: ignore[arg-type]
                               stop).name


@pytest.mark.parametrize(("primary_at", "switches"), [
    (0x50A3230, 1),  # still writing the stop segment: it must be completed
    (0x5FFFFFF, 1),
    (0x6000000, 0),  # at the next segment's first byte: the stop segment is complete
    (0x7000120, 0),
])
def test_the_primary_switches_only_while_it_writes_the_stop_segment(primary_at, switches):
    primary = Server(1, primary_at)
    assert finish(primary, stop_at(0x50A3230)) == "000000010000000000000005"
    assert primary.switched == switches


def test_a_stop_at_a_segment_boundary_needs_the_segment_before_it():
    primary = Server(1, 0x6000000)
    assert finish(primary, stop_at(0x6000000)) == "000000010000000000000005"
    assert primary.switched == 0


def test_a_backup_whose_wal_crosses_a_timeline_switch_fails():
    with pytest.raises(PitrkitError, match="the backup started on timeline 1 .* but the primary is on timeline 2"):
        finish(Server(2, 0x50A3230), stop_at(0x50A3230))
    moved = Server(1, recovery_timeline=2)
    primary = Server(1, 0x50A3230)
    with pytest.raises(PitrkitError, match="the standby moved from timeline 1 to 2 during the backup"):
        finish(primary, stop_at(0x50A3230), moved)
    assert primary.switched == 0
    # A role that may not read pg_control_recovery() leaves the primary's timeline to decide.
    assert finish(primary, stop_at(0x50A3230), Server(1, recovery_timeline=None)) == "000000010000000000000005"


@pytest.mark.parametrize("conninfo", ["host=db1 password=s3cr3t h1dden", "postgresql://dba:s3cr3t%zz@db1/postgres"])
def test_a_primary_conninfo_libpq_cannot_parse_is_one_line_without_the_secret(tmp_path, capsys, conninfo):
    archive = tmp_path / "archive"
    archive.mkdir()
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{archive}"\n[postgres]\npgdata = "{tmp_path}"\n'
                      f"conninfo = 'host=/nonexistent port=1'\n[backup]\nprimary_conninfo = '{conninfo}'\n")
    # Refused before any server is asked: the one in [postgres] conninfo does not exist.
    assert main(["--config", str(config), "backup-push"]) == 2
    error = capsys.readouterr().err
    assert error == ("pitrkit: [backup] primary_conninfo is not a valid connection string (libpq's message is not "
                     "shown: it may quote a password)\n")
