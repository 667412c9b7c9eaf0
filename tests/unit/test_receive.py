"""The sidecar's pure parts, without a server: the `.partial` replace rule in push, the
[receive] section, the lag clock, the pg_receivewal command line (no secret in argv), the
retained-WAL warning and the event log's format. The sidecar itself, with PostgreSQL, is
tested in tests/integration/test_receive.py."""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path

import pytest

from pitrkit import config
from pitrkit.errors import ConfigError, RefusedError
from pitrkit.events import LogfmtFormatter
from pitrkit.postgres.wal import Lsn
from pitrkit.storage import objects
from pitrkit.storage.archive import Archive
from pitrkit.storage.repositories import open_all
from pitrkit.wal.push import push
from pitrkit.wal.receive import Receiver, _lock_spool, _receiver_command
from pitrkit.wal.receiver_health import LagClock, SlotState
from tests.unit.segments import init_archive, segment

PARTIAL = "000000010000000000000003.partial"
STORED = Path("wal") / "0000000100000000" / PARTIAL


@pytest.fixture
def archive(tmp_path) -> Archive:
    root = tmp_path / "archive"
    root.mkdir()
    archive = Archive(config.parse({"repository": {"url": f"file://{root}", "retries": 0}}, "test"))
    init_archive(archive)
    return archive


def partial(tmp_path: Path, wal: bytes) -> Path:
    """The open segment 3 as pg_receivewal leaves it: `wal` after the page header, then
    zeros to the full segment size."""
    path = tmp_path / "spool" / PARTIAL
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(segment(3, filler=wal))
    return path


def stored(archive: Archive) -> bytes:
    key = STORED.as_posix()
    return objects.decode(key, archive.get(key), archive.plugins.compressor)


# --- the .partial replace rule --------------------------------------------------------------


def test_a_partial_that_extends_the_stored_one_replaces_it(tmp_path, archive):
    push(archive, partial(tmp_path, b"first records"))
    longer = partial(tmp_path, b"first records, then more")
    assert push(archive, longer).startswith(f"extended {PARTIAL}: ")
    assert stored(archive) == longer.read_bytes()


def test_an_identical_or_older_partial_is_success_and_writes_nothing(tmp_path, archive):
    newest = partial(tmp_path, b"first records, then more").read_bytes()
    push(archive, partial(tmp_path, b"first records, then more"))
    assert "identical content" in push(archive, partial(tmp_path, b"first records, then more"))
    # A restarted pg_receivewal re-streams the segment from its start: an older view.
    assert "and more" in push(archive, partial(tmp_path, b"first records"))
    assert stored(archive) == newest


def test_a_diverging_partial_is_refused_and_the_stored_one_kept(tmp_path, archive):
    push(archive, partial(tmp_path, b"first records"))
    with pytest.raises(RefusedError, match="diverges"):
        push(archive, partial(tmp_path, b"other records, and longer"))
    assert stored(archive) == segment(3, filler=b"first records")


def test_a_full_segment_is_never_replaced(tmp_path, archive):
    path = tmp_path / "000000010000000000000003"
    path.write_bytes(segment(3, filler=b"first records"))
    push(archive, path)
    path.write_bytes(segment(3, filler=b"first records, then more"))
    with pytest.raises(RefusedError, match="different content"):
        push(archive, path)


# --- [receive] ----------------------------------------------------------------------------


def parse(text: str) -> config.Config:
    return config.parse(tomllib.loads('[repository]\nurl = "file:///a"\n' + text), "test.toml")


def test_receive_defaults_and_sizes():
    defaults = parse("").receive
    assert (defaults.slot, defaults.spool, defaults.partial_interval, defaults.synchronous) == (
        "pitrkit", None, 10.0, False)
    assert defaults.max_slot_retained_bytes == 4 << 30
    assert parse("[receive]\nmax_slot_retained = \"512MB\"").receive.max_slot_retained_bytes == 512 << 20
    assert parse("[receive]\nmax_slot_retained = 1000").receive.max_slot_retained_bytes == 1000


@pytest.mark.parametrize(("text", "message"), [
    ('slot = "My-Slot"', "receive.slot must be"),
    ("partial_interval = 0", "receive.partial_interval must be a number of seconds above 0"),
    ('max_slot_retained = "4 GiB"', "receive.max_slot_retained must be"),
    ("max_slot_retained = -1", "receive.max_slot_retained must be"),
    ('synchronous = "yes"', "key 'receive.synchronous': expected bool"),
    ('spol = "/x"', "unknown key 'receive.spol'"),
])
def test_receive_mistakes_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        parse(f"[receive]\n{text}")


# --- the command line -----------------------------------------------------------------------


def test_secrets_never_reach_argv(tmp_path):
    """password and sslpassword go into the service file's text, argv names the service."""
    argv, service = _receiver_command(Path("/bin/pg_receivewal"),
                                      "host=db user=u password=s3cret sslpassword='k3y pass' dbname=x",
                                      tmp_path, "pitrkit", synchronous=True)
    assert not any("s3cret" in arg or "k3y" in arg for arg in argv)
    assert service == "[pitrkit-receive]\npassword=s3cret\nsslpassword=k3y pass\n"
    dbname = argv[argv.index("--dbname") + 1]
    assert "application_name=pitrkit" in dbname and "host=db" in dbname and "service=pitrkit-receive" in dbname
    assert "--synchronous" in argv and "--no-loop" in argv and argv[argv.index("--slot") + 1] == "pitrkit"


def test_no_secret_no_service_file(tmp_path):
    argv, service = _receiver_command(Path("/bin/pg_receivewal"), "host=db", tmp_path, "pitrkit", synchronous=False)
    assert service is None and "service=" not in argv[argv.index("--dbname") + 1]


@pytest.mark.parametrize("conninfo", ["service=prod sslpassword=k3y", "password='k3y '", "sslpassword='a\nk3y'"])
def test_a_secret_a_service_file_cannot_carry_is_refused_without_showing_it(tmp_path, conninfo):
    with pytest.raises(ConfigError) as raised:
        _receiver_command(Path("/bin/pg_receivewal"), conninfo, tmp_path, "pitrkit", synchronous=False)
    assert "k3y" not in str(raised.value) and "\n" not in str(raised.value)


def test_an_application_name_in_conninfo_wins(tmp_path):
    argv, _ = _receiver_command(Path("/bin/pg_receivewal"), "application_name=walsync", tmp_path, "pitrkit",
                                synchronous=False)
    assert "application_name=walsync" in argv[argv.index("--dbname") + 1]
    assert "--synchronous" not in argv


def test_a_bad_conninfo_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\[postgres\] conninfo is not a valid connection string"):
        _receiver_command(Path("/bin/pg_receivewal"), "host", tmp_path, "pitrkit", synchronous=False)


def test_one_sidecar_per_spool(tmp_path):
    held = _lock_spool(tmp_path)
    try:
        with pytest.raises(RefusedError, match=r"another pitrkit wal-receive \(pid \d+\) is using the spool"):
            _lock_spool(tmp_path)
    finally:
        os.close(held)
    os.close(_lock_spool(tmp_path))  # free again


# --- health ---------------------------------------------------------------------------------


def test_lag_seconds_is_the_time_since_the_archive_last_covered_the_server():
    clock = LagClock()
    assert clock.lag_seconds(Lsn(0)) is None
    for second, lsn in enumerate([100, 200, 300, 400]):
        clock.sample(Lsn(lsn), now=1000.0 + second)
    assert clock.lag_seconds(Lsn(400), now=1010.0) == 0.0
    assert clock.lag_seconds(Lsn(250), now=1010.0) == 9.0  # 200 was current at 1001
    assert clock.lag_seconds(None, now=1010.0) == 10.0
    assert clock.lag_seconds(Lsn(50), now=1010.0) == 10.0  # behind every sample: at least since the first


def slot(retained: int, wal_status: str = "reserved") -> SlotState:
    return SlotState(name="pitrkit", active=True, restart_lsn=Lsn(0), wal_status=wal_status,
                     retained_bytes=retained, safe_wal_size=None)


def test_a_slot_retaining_too_much_is_warned_about_once_in_a_while(tmp_path, caplog):
    settings = parse(f'[receive]\nspool = "{tmp_path}"\nmax_slot_retained = "1MB"')
    receiver = Receiver(settings, open_all(settings), tmp_path, Path("/bin/pg_receivewal"))
    with caplog.at_level(logging.WARNING, logger="pitrkit.wal.receive"):
        receiver._check_slot(slot(1 << 20))
        assert not caplog.records
        receiver._check_slot(slot(3 << 20))
        receiver._check_slot(slot(4 << 20))  # still above: not again right away
        assert [record.getMessage() for record in caplog.records] == ["slot-retains-too-much"]
        receiver._check_slot(slot(0))
        receiver._check_slot(slot(0, "unreserved"))  # past max_slot_wal_keep_size: warned whatever the size
    assert len(caplog.records) == 2
    assert caplog.records[0].fields["retained"] == "3.0 MiB"  # type: ignore[attr-defined]


def test_events_are_one_logfmt_line_each():
    record = logging.LogRecord("pitrkit.wal.receive", logging.INFO, __file__, 1, "archived", None, None)
    record.fields = {"file": "000000010000000000000003", "detail": 'said "so"\nand more', "code": None,
                     "synchronous": True}
    line = LogfmtFormatter().format(record)
    assert "\n" not in line
    assert line.split(" ", 1)[1] == ('level=info event=archived file=000000010000000000000003 '
                                     'detail="said \\"so\\"\\nand more" synchronous=true')
