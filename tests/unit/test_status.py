"""`pitrkit status` on synthetic archives (synthetic_archive.py: 1 GiB segments, 4 per
folder, segment n stored at T0 + n minutes), and the daemon's renderers of its report:
the HTML page and the Prometheus text, parsed back with prometheus_client."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pitrkit.catalog import documents
from pitrkit.catalog.documents import RetentionRun, RetentionState
from pitrkit.cli import main
from pitrkit.config import (
    Config,
    DrillConfig,
    EncryptionConfig,
    PostgresConfig,
    ReceiveConfig,
    RepositoryConfig,
    RetentionConfig,
    StatusConfig,
)
from pitrkit.ops import status
from pitrkit.ops.daemon_facts import DaemonFacts, ScheduledRun
from pitrkit.ops.status import StatusReport
from pitrkit.storage import codec, keys
from pitrkit.storage.archive import RETENTION_STATE_KEY, TamperedDocument
from pitrkit.views.html import html_page
from pitrkit.views.metrics import metrics_text
from pitrkit.views.text import status_text
from pitrkit.wal.receiver_health import ReceiverHealth, write_state
from tests.unit.synthetic_archive import SEGMENT_SIZE, SyntheticArchive, lsn, name, stored_at

# A few minutes after the last segment (20) of the standard archive was stored.
NOW = stored_at(20) + timedelta(minutes=5)


@pytest.fixture
def store(tmp_path) -> SyntheticArchive:
    synthetic = SyntheticArchive(tmp_path / "archive")
    synthetic.segments(1, 1, 20)
    return synthetic


def config_of(store: SyntheticArchive, **sections) -> Config:
    return Config(repository=RepositoryConfig(url=f"file://{store.root}", retries=0), **sections)


def collect(store: SyntheticArchive, now: datetime = NOW, **sections) -> StatusReport:
    return status.collect(store.archive, config_of(store, **sections), now=now)


def levels(report: StatusReport) -> dict[str, str]:
    return {check.name: check.level for check in report.checks}


def message(report: StatusReport, name: str) -> str:
    return next(check.message for check in report.checks if check.name == name)


# --- the figures --------------------------------------------------------------------------


def test_a_healthy_archive_is_ok_with_its_figures(store):
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 10, 11)
    report = collect(store)
    assert report.overall == "OK", report.checks
    assert set(levels(report).values()) == {"OK"}
    assert report.backups == 2
    last = report.last_backup
    assert last is not None
    # Stored: the one part synthetic_archive.py stores, 1000 bytes in the stored-object format.
    assert (last.backup_id, last.size_bytes, last.stored_bytes, last.stop_lsn) == ("B", 1000, 1097, lsn(11, 0x100))
    assert last.age_seconds == (NOW - (stored_at(11) - timedelta(seconds=30))).total_seconds()
    assert last.duration_seconds == (stored_at(11) - stored_at(10)).total_seconds()
    assert report.last_wal is not None
    assert (report.last_wal.name, report.last_wal.end_lsn, report.last_wal.stored_at) == (
        name(1, 20), lsn(21), stored_at(20))
    assert report.last_wal.age_seconds == 300
    # Original size: the segments times the segment size; stored: what the objects hold.
    assert report.size.wal_segments == 20
    assert report.size.wal_original_bytes == 20 * SEGMENT_SIZE
    assert report.size.wal_stored_bytes == sum(len(b"segment %d" % n) for n in range(1, 21))
    assert (report.size.backups, report.size.backups_size_bytes, report.size.backups_stored_bytes) == (
        2, 2000, 2 * 1097)
    [timeline] = report.timelines
    assert timeline.oldest is not None and timeline.newest is not None
    assert (timeline.oldest.backup_id, timeline.oldest.lsn) == ("A", lsn(3, 0x100))
    assert timeline.oldest.time == stored_at(3) - timedelta(seconds=30)
    assert (timeline.newest.segment, timeline.newest.lsn, timeline.newest.stored_at) == (
        name(1, 20), lsn(21), stored_at(20))
    assert timeline.gaps == []


def test_no_backup_fails(store):
    report = collect(store)
    assert report.overall == "FAIL"
    assert levels(report)["backup"] == "FAIL" and levels(report)["restorable"] == "FAIL"
    assert report.last_backup is None
    assert report.timelines[0].oldest is None


def test_an_empty_archive_fails_without_a_traceback(tmp_path):
    store = SyntheticArchive(tmp_path / "archive")
    report = collect(store)
    assert report.overall == "FAIL"
    assert report.last_wal is None and report.size.wal_files == 0


# --- gaps -----------------------------------------------------------------------------


def test_a_gap_after_the_newest_backup_fails_naming_the_segment_and_where_wal_resumes(store):
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 10, 11)
    store.drop_segment(1, 15)
    store.drop_segment(1, 16)
    report = collect(store)
    assert report.overall == "FAIL"
    assert levels(report)["restorable"] == "FAIL"
    assert name(1, 15) in message(report, "restorable") and name(1, 17) in message(report, "restorable")
    [timeline] = report.timelines
    assert [(g.missing_segment, g.resumes_at, g.after_backup) for g in timeline.gaps] == [
        (name(1, 15), name(1, 17), "B")]
    # Restorable from A up to the hole.
    assert timeline.newest is not None and timeline.newest.segment == name(1, 14)


def test_a_gap_between_backups_is_reported_but_the_latest_is_restorable(store):
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 10, 11)
    store.drop_segment(1, 6)
    report = collect(store)
    assert levels(report)["restorable"] == "OK", report.checks
    [timeline] = report.timelines
    assert [(g.missing_segment, g.resumes_at, g.after_backup) for g in timeline.gaps] == [(name(1, 6), name(1, 7), "A")]
    assert timeline.oldest is not None and timeline.oldest.backup_id == "A"
    assert timeline.newest is not None and timeline.newest.segment == name(1, 20)


def test_a_backup_starting_in_a_gap_does_not_count_the_gap_twice(store):
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 10, 11)
    store.drop_segment(1, 10)  # the end of A's WAL and B's first segment
    report = collect(store)
    assert [(g.missing_segment, g.after_backup) for g in report.timelines[0].gaps] == [(name(1, 10), "A")]
    assert levels(report)["restorable"] == "FAIL"
    assert samples(metrics_text(report, None))[("pitrkit_wal_gaps", (("timeline", "1"),))] == 1


def test_the_newest_backup_missing_its_own_wal_fails(store):
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 19, 21)  # segment 21 was never archived
    report = collect(store)
    assert levels(report)["restorable"] == "FAIL"
    assert name(1, 21) in message(report, "restorable")


def test_timelines_each_get_their_range(store):
    store.backup("A", 1, 2, 3)
    # Timeline 2 branched in segment 12; its own WAL from there to 15.
    store.history(2, [(1, lsn(12, 0x500))], at=stored_at(12))
    store.segments(2, 12, 15, at=stored_at(21))
    report = collect(store, now=stored_at(25))
    assert [t.timeline for t in report.timelines] == [1, 2]
    first, second = report.timelines
    assert first.newest is not None and first.newest.segment == name(1, 20)
    assert second.oldest is not None and second.oldest.backup_id == "A"
    assert second.newest is not None and second.newest.segment == name(2, 15)
    assert report.last_wal is not None and report.last_wal.name == name(2, 15)
    assert report.overall == "OK", report.checks


# --- the server's timeline and branches -------------------------------------------------------


def on_timeline(timeline: int) -> status.Archiver:
    """The server as status found it: reachable, on `timeline`, archiving without failures."""
    return status.Archiver(reachable=True, archived_count=20, failed_count=0, last_archived_wal=name(1, 20),
                           last_archived_time=stored_at(20), timeline=timeline)


def with_a_test_restores_branch(store: SyntheticArchive, at: datetime) -> None:
    """What a test restore promoted with archiving on leaves: timeline 2 off segment 12,
    archiving into the same archive, its newest WAL stored at `at`."""
    store.history(2, [(1, lsn(12, 0x500))], at=stored_at(12))
    store.segments(2, 12, 15, at=at - timedelta(minutes=3))


def test_a_branch_is_not_the_head_when_the_server_is_on_its_parent(store):
    store.backup("A", 1, 2, 3)
    with_a_test_restores_branch(store, at=stored_at(25))
    report = status.collect(store.archive, config_of(store), now=stored_at(26), archiver=on_timeline(1))
    assert report.head_timeline == 1 and report.archiver.timeline == 1
    assert report.last_wal is not None and report.last_wal.name == name(1, 20)
    assert [(t.timeline, t.branch) for t in report.timelines] == [(1, False), (2, True)]
    assert message(report, "restorable").startswith("timeline 1 restorable from ")
    # Still receiving WAL: another server archives here.
    assert levels(report)["timeline"] == "WARN"
    assert message(report, "timeline") == (
        "the server is on timeline 1; timeline 2 is a branch off its history (restore --latest would follow "
        "timeline 2: use --timeline server for the server's); timeline 2 received WAL within wal_max_age 1h: "
        "another server archives into this archive (a restored copy promoted with archiving on? restore test "
        "copies with --archive-mode off)")
    text = status_text(report)
    assert "server:         on timeline 1" in text
    assert [line for line in text.splitlines() if line.startswith("timeline 2:")][0].endswith(
        "[branch: not the server's history]")
    assert [line for line in text.splitlines() if line.startswith("timeline 1:")][0].endswith(
        "[the server's: judged]")
    values = samples(metrics_text(report, None))
    assert values[("pitrkit_server_timeline", ())] == 1 and values[("pitrkit_head_timeline", ())] == 1
    assert values[("pitrkit_timeline_branch", (("timeline", "2"),))] == 1
    assert values[("pitrkit_timeline_branch", (("timeline", "1"),))] == 0
    assert values[("pitrkit_last_wal_archived_timeline", ())] == 1
    page = html_page(report, None, refresh_seconds=30)
    assert "<strong>branch</strong>: not the server&#x27;s history" in page
    assert "<th>timeline</th><td>1</td>" in page
    as_json = json.loads(codec.encode(report))
    assert as_json["head_timeline"] == 1 and as_json["archiver"]["timeline"] == 1
    assert [t["branch"] for t in as_json["timelines"]] == [False, True]


def test_wal_freshness_is_judged_on_the_servers_timeline(store):
    store.backup("A", 1, 2, 3)
    later = stored_at(20) + timedelta(hours=2)
    with_a_test_restores_branch(store, at=later)  # fresh WAL, but not the server's
    without_server = collect(store, now=later)
    assert without_server.head_timeline == 2 and levels(without_server)["wal"] == "OK"
    assert message(without_server, "timeline") == ("judged on timeline 2, the archive's newest (the server's "
                                                   "timeline is unknown: server not asked)")
    report = status.collect(store.archive, config_of(store), now=later, archiver=on_timeline(1))
    assert levels(report)["wal"] == "WARN"
    assert message(report, "wal").startswith(f"newest WAL {name(1, 20)} stored ")


def test_a_stale_branch_is_shown_but_not_a_warning(store):
    store.backup("A", 1, 2, 3)
    with_a_test_restores_branch(store, at=stored_at(16))  # 9 minutes before NOW; the server's WAL 5
    report = status.collect(store.archive, config_of(store, status=StatusConfig(wal_max_age="6m")), now=NOW,
                            archiver=on_timeline(1))
    assert levels(report)["timeline"] == "OK" and report.overall == "OK", report.checks
    assert message(report, "timeline") == ("the server is on timeline 1; timeline 2 is a branch off its history "
                                           "(restore --latest would follow timeline 2: use --timeline server for "
                                           "the server's)")


def test_the_server_on_the_newest_timeline_has_no_branch(store):
    store.backup("A", 1, 2, 3)
    with_a_test_restores_branch(store, at=stored_at(19))
    report = status.collect(store.archive, config_of(store), now=NOW, archiver=on_timeline(2))
    assert report.head_timeline == 2 and not any(t.branch for t in report.timelines)
    assert message(report, "timeline") == "the server is on timeline 2"
    # Promoted a moment ago: its history file and WAL not archived yet.
    report = status.collect(store.archive, config_of(store), now=NOW, archiver=on_timeline(3))
    assert report.head_timeline == 2 and not any(t.branch for t in report.timelines)
    assert message(report, "timeline") == ("the server is on timeline 3 (none of its WAL archived yet: judged on "
                                           "timeline 2, on its history)")


def test_a_gap_before_a_timeline_switch_resumes_on_the_new_timeline(store):
    store.backup("A", 1, 2, 3)
    store.history(2, [(1, lsn(12, 0x500))], at=stored_at(12))
    store.segments(2, 12, 15, at=stored_at(21))
    store.drop_segment(1, 11)
    report = collect(store, now=stored_at(25))
    second = report.timelines[1]
    assert [(g.missing_segment, g.resumes_at) for g in second.gaps] == [(name(1, 11), name(2, 12))]
    assert levels(report)["restorable"] == "FAIL"
    assert f"WAL resumes at {name(2, 12)}" in message(report, "restorable")


# --- ages -----------------------------------------------------------------------------


@pytest.mark.parametrize(("hours", "level"), [(30, "OK"), (40, "WARN"), (80, "FAIL")])
def test_backup_age_against_backup_max_age(store, hours, level):
    store.backup("A", 1, 2, 3)
    backup_stop = stored_at(3) - timedelta(seconds=30)
    now = backup_stop + timedelta(hours=hours)
    store.segments(1, 21, 21, at=now - timedelta(minutes=1))  # WAL is fresh: only the backup ages
    report = collect(store, now=now, status=StatusConfig(backup_max_age="36h"))
    assert levels(report)["backup"] == level
    assert report.overall == level


def test_old_wal_warns(store):
    store.backup("A", 1, 2, 3)
    report = collect(store, now=stored_at(20) + timedelta(minutes=90), status=StatusConfig(wal_max_age="1h"))
    assert levels(report)["wal"] == "WARN"
    assert "wal_max_age 1h" in message(report, "wal")
    assert report.overall == "WARN"


def test_a_fresh_partial_keeps_wal_fresh_and_is_the_last_received(store):
    store.backup("A", 1, 2, 3)
    late = stored_at(20) + timedelta(minutes=85)
    end = store.partial(1, 21, 3, at=late)
    report = collect(store, now=stored_at(20) + timedelta(minutes=90), status=StatusConfig(wal_max_age="1h"))
    assert levels(report)["wal"] == "OK"
    received = report.receiver.newest_partial
    assert received is not None and (received.name, received.stored_at) == (name(1, 21) + ".partial", late)
    assert report.timelines[0].newest is not None and report.timelines[0].newest.lsn == end


def test_the_newest_partial_is_read_once_and_its_lsn_is_where_its_wal_ends(store):
    # Both backups' runs and the restorable check end in the partial: one read serves
    # them all (reading it costs a segment's bytes, every status_interval in the daemon).
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 10, 11)
    end = store.partial(1, 21, 3, at=NOW)
    storage = store.archive.storage
    reads: list[str] = []
    read = storage.get

    def counted(key: str) -> bytes:
        reads.append(key)
        return read(key)

    storage.get = counted  # type: ignore[method-assign]
    report = collect(store)
    assert [key for key in reads if key.endswith(".partial")] == [f"wal/{name(1, 21)[:16]}/{name(1, 21)}.partial"]
    received = report.receiver.newest_partial
    assert received is not None and received.end_lsn == end  # what was received, not the segment's end
    assert report.timelines[0].newest is not None and report.timelines[0].newest.lsn == end


def health(observed_at: datetime, running: bool, last_error: str | None = None) -> ReceiverHealth:
    return ReceiverHealth(
        observed_at=observed_at, pid=4242, running=running, receiving=running, server_reachable=True,
        server_lsn=lsn(21, 0x9000), last_received_lsn=lsn(21, 0x8000), last_archived_lsn=lsn(21, 0x4000),
        last_archived_at=observed_at, lag_bytes=0x5000, lag_seconds=3.0, spool_bytes=0, spool_segments=0,
        slot=None, receiver_restarts=1, last_error=last_error)


def test_the_sidecars_state_file_is_read_from_the_spool(store, tmp_path):
    store.backup("A", 1, 2, 3)
    spool = tmp_path / "spool"
    spool.mkdir()
    receive = ReceiveConfig(spool=str(spool))
    report = collect(store, receive=receive)
    assert levels(report)["receiver"] == "OK"
    assert report.receiver.state_problem is not None and "pitrkit-receive.json" in report.receiver.state_problem

    write_state(spool, health(NOW - timedelta(seconds=5), running=True))
    report = collect(store, receive=receive)
    assert levels(report)["receiver"] == "OK"
    assert (report.receiver.running, report.receiver.last_received_lsn, report.receiver.lag_bytes) == (
        True, lsn(21, 0x8000), 0x5000)

    write_state(spool, health(NOW - timedelta(minutes=1), running=False, last_error="connection refused"))
    report = collect(store, receive=receive)
    assert levels(report)["receiver"] == "WARN"
    assert "the sidecar stopped" in message(report, "receiver") and "connection refused" in message(report, "receiver")

    write_state(spool, health(NOW - timedelta(hours=2), running=True))  # it wrote nothing since
    assert levels(collect(store, receive=receive))["receiver"] == "WARN"


def test_the_text_report_shows_every_section(store):
    store.backup("A", 1, 2, 3)
    store.drop_segment(1, 8)
    text = status_text(collect(store, retention=RetentionConfig(keep_last=3)))
    assert text.startswith("FAIL  ")
    for expected in ("FAIL  restorable", "last backup:    A 'label A'", f"last WAL:       {name(1, 20)}",
                     "archiver:       not asked: [postgres] conninfo is not set", "WAL size:       19 files",
                     f"  gap:          {name(1, 8)} missing after backup A; WAL resumes at {name(1, 9)}",
                     "retention:      last 3"):
        assert expected in text, text


# --- what is not a backup ----------------------------------------------------------------


def test_backups_being_removed_do_not_count(store):
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 10, 11)
    run = RetentionRun(finished_at=NOW - timedelta(days=1), backups_removed=["Z"], wal_files_removed=3,
                       bytes_freed=99)
    store.archive.put(RETENTION_STATE_KEY, codec.encode(RetentionState(deleting=["B"], last_run=run)))
    report = collect(store)
    assert report.backups == 1
    assert report.last_backup is not None and report.last_backup.backup_id == "A"
    assert report.retention.deleting == ["B"] and report.retention.last_run == run


def test_an_interrupted_backup_warns_and_a_running_one_does_not(store):
    store.backup("A", 1, 2, 3)
    store.backup("C", 1, 14, 15, manifest=False)  # its part is stored now, by the real clock
    now = datetime.now(UTC)
    store.segments(1, 21, 21, at=now)
    report = collect(store, now=now)
    assert report.unfinished_backups == ["C"]
    assert levels(report)["unfinished"] == "OK"
    report = collect(store, now=now + timedelta(hours=7))
    assert levels(report)["unfinished"] == "WARN"
    assert "C" in message(report, "unfinished")


# --- retention --------------------------------------------------------------------------


def backup_at(store: SyntheticArchive, backup_id: str, start_segno: int, stop_segno: int, stop_time: datetime) -> None:
    """A backup like store.backup's, but consistent at `stop_time` (what the rules count)."""
    summary = store.backup(backup_id, 1, start_segno, stop_segno)
    key = f"backups/{backup_id}/manifest.json"
    manifest = codec.decode(store.archive.get(key), documents.BackupManifest, key)
    moved = msgspec.structs.replace(manifest, start_time=stop_time - (summary.stop_time - summary.start_time),
                                    stop_time=stop_time)
    store.archive.put(key, codec.encode(moved), overwrite=True)


LENIENT = StatusConfig(backup_max_age="1000d", wal_max_age="1000d")


@pytest.mark.parametrize(("days", "level"), [(3, "WARN"), (7, "OK")])
def test_daily_promise_against_the_days_that_have_a_backup(store, days, level):
    # Two backups on the oldest day: days, not backups, are counted.
    backup_at(store, "X", 1, 2, NOW - timedelta(days=10, hours=1))
    for day in range(days):
        backup_at(store, f"D{day}", 3 + day, 4 + day, NOW - timedelta(days=10 - day))
    report = collect(store, retention=RetentionConfig(keep_last=2, daily=7, timezone="UTC"), status=LENIENT)
    assert report.retention.policy == "last 2, 7 daily"
    # What the next retention run decides: X shares its day with a newer backup.
    assert [v.backup_id for v in report.retention.verdicts if not v.keep] == ["X"]
    assert levels(report)["retention"] == level
    if level == "WARN":
        assert f"daily 7 promised, but only {days} days have a backup" in message(report, "retention")


def test_a_daily_promise_on_a_young_archive_is_kept(store):
    backup_at(store, "A", 2, 3, NOW - timedelta(days=2))
    report = collect(store, retention=RetentionConfig(daily=7, weekly=4, monthly=3, timezone="UTC"), status=LENIENT)
    assert levels(report)["retention"] == "OK", report.checks


def test_window_promise_against_the_oldest_restorable_point(store):
    backup_at(store, "A", 2, 3, NOW - timedelta(days=5))
    backup_at(store, "B", 10, 11, NOW - timedelta(hours=2))
    policy = RetentionConfig(window="3d")
    assert levels(collect(store, retention=policy, status=LENIENT))["retention"] == "OK"
    store.drop_segment(1, 3)  # A can no longer become consistent: only B's points restore
    report = collect(store, retention=policy, status=LENIENT)
    assert levels(report)["retention"] == "WARN"
    assert "window 3d promised" in message(report, "retention")
    assert report.timelines[0].oldest is not None and report.timelines[0].oldest.backup_id == "B"


@pytest.mark.parametrize(("older_backup_days", "level"), [(None, "WARN"), (5, "OK")])
def test_window_promise_against_a_gap_inside_the_window(store, older_backup_days, level):
    # A gap loses the points from it to the stop of the next backup after it: those
    # must all lie before the window for the promise to hold.
    backup_at(store, "A", 2, 3, NOW - timedelta(days=10))
    if older_backup_days is not None:
        backup_at(store, "C", 7, 8, NOW - timedelta(days=older_backup_days))
    backup_at(store, "B", 10, 11, NOW - timedelta(hours=2))
    store.drop_segment(1, 5)
    report = collect(store, retention=RetentionConfig(window="3d"), status=LENIENT)
    assert levels(report)["restorable"] == "OK" and report.timelines[0].oldest is not None
    assert report.timelines[0].oldest.backup_id == "A"  # the oldest point is old enough
    assert levels(report)["retention"] == level, report.checks
    if level == "WARN":
        assert f"window 3d promised, but segment {name(1, 5)} is missing" in message(report, "retention")
        assert "backup B" in message(report, "retention")


# --- the command ------------------------------------------------------------------------


def write_config(tmp_path, store: SyntheticArchive) -> str:
    path = tmp_path / "pitrkit.toml"
    path.write_text(f'[repository]\nurl = "file://{store.root}"\nretries = 0\n[status]\nbackup_max_age = "1000d"\n'
                    f'wal_max_age = "1000d"\n')
    return str(path)


def test_status_json_and_exit_codes(tmp_path, store, capsys):
    store.backup("A", 1, 2, 3)
    config = write_config(tmp_path, store)
    assert main(["--config", config, "status", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["overall"] == "OK"
    assert document["last_backup"]["backup_id"] == "A"
    assert document["last_wal"]["name"] == name(1, 20)
    assert document["timelines"][0]["oldest"]["lsn"] == str(lsn(3, 0x100))

    store.drop_segment(1, 10)
    assert main(["--config", config, "status"]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("FAIL")
    assert f"FAIL  restorable  the latest point is not restorable: after backup A on timeline 1, segment " \
           f"{name(1, 10)} is missing; WAL resumes at {name(1, 11)}" in out
    [line] = err.strip().splitlines()
    assert line.startswith("pitrkit: status FAIL: restorable: ")


def test_an_unreadable_archive_is_a_fail(tmp_path, capsys):
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{tmp_path}/absent"\nretries = 0\n')
    assert main(["--config", str(config), "status"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("pitrkit: status FAIL: cannot read the archive: ") and "does not exist" in line


def test_a_configured_server_that_does_not_answer_warns_in_one_line_without_its_password(tmp_path, store):
    store.backup("A", 1, 2, 3)
    report = collect(store, postgres=PostgresConfig(conninfo=f"host={tmp_path} port=1 password=s3cr3t-pw"))
    assert not report.archiver.reachable
    assert report.archiver.problem and "connection" in report.archiver.problem
    assert levels(report)["archiver"] == "WARN" and report.overall == "WARN", report.checks
    said = message(report, "archiver")
    assert said.startswith("server unreachable through [postgres] conninfo: ") and "\n" not in said
    assert "s3cr3t" not in said
    assert re.search(r"^WARN +archiver +server unreachable through", status_text(report), re.MULTILINE)
    assert message(report, "timeline").endswith("(the server's timeline is unknown: server unreachable)")


def test_without_conninfo_the_server_is_not_asked_and_that_is_ok(store):
    store.backup("A", 1, 2, 3)
    report = collect(store)
    assert not report.archiver.reachable
    assert (levels(report)["archiver"], message(report, "archiver")) == (
        "OK", "server not asked: [postgres] conninfo is not set")


@pytest.mark.parametrize("conninfo", [
    "host={tmp} port=1 user=dba password=s3cr3t-pw",
    "postgresql://dba:s3cr3t-pw@localhost:1/postgres",
    # Malformed: libpq quotes the piece it cannot parse, here a piece of the password.
    "host={tmp} port=1 password=s3cr3t h1dden",
    "host={tmp} port=1 password=s3cr3t h1dden=x",
    "postgresql://dba:s3cr3t%zz@localhost:1/postgres",
])
def test_a_password_in_conninfo_is_never_shown(tmp_path, store, capsys, conninfo):
    store.backup("A", 1, 2, 3)
    report = collect(store, postgres=PostgresConfig(conninfo=conninfo.format(tmp=tmp_path)))
    assert not report.archiver.reachable and report.archiver.problem
    for shown in (report.archiver.problem, status_text(report), codec.encode(report).decode(),
                  html_page(report, None, refresh_seconds=30), metrics_text(report, None)):
        assert "s3cr3t" not in shown and "h1dden" not in shown, shown


# --- renderers --------------------------------------------------------------------------

FACTS = DaemonFacts(
    started_at=NOW - timedelta(hours=2), schedule="every 6h", next_backup_at=NOW + timedelta(hours=4),
    next_backup_kind="incremental",
    backup_running=False,
    last_run=ScheduledRun(started_at=NOW - timedelta(hours=2), finished_at=NOW - timedelta(hours=1, minutes=58),
                          ok=True, backup_id="B", message="backup B <done> & stored"),
    backups_taken=3, backup_failures=1, sidecar="running", sidecar_restarts=2, retention_runs=3,
    retention_failures=0,
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("pitrkit_")
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_parse_as_prometheus_text_with_the_report_figures(store):
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 10, 11)
    store.drop_segment(1, 15)
    report = collect(store)
    text = metrics_text(report, FACTS)
    values = samples(text)
    assert ("pitrkit_archiver_archived_total", ()) not in values  # unknown: left out, not zero
    assert "pitrkit_archiver_archived" not in text
    assert values[("pitrkit_status", ())] == 2
    assert values[("pitrkit_check_status", (("check", "restorable"),))] == 2
    assert values[("pitrkit_check_status", (("check", "backup"),))] == 0
    assert values[("pitrkit_last_backup_size_bytes", ())] == 1000
    assert values[("pitrkit_last_backup_stored_bytes", ())] == 1097
    assert values[("pitrkit_last_backup_timestamp_seconds", ())] == report.last_backup.stop_time.timestamp()
    assert values[("pitrkit_last_wal_archived_timestamp_seconds", ())] == stored_at(20).timestamp()
    assert values[("pitrkit_last_wal_archived_end_lsn_bytes", ())] == int(lsn(21))
    assert values[("pitrkit_wal_original_bytes", ())] == 19 * SEGMENT_SIZE
    assert values[("pitrkit_wal_gaps", (("timeline", "1"),))] == 1
    assert values[("pitrkit_archiver_up", ())] == 0
    assert values[("pitrkit_daemon_backups_total", ())] == 3
    assert values[("pitrkit_daemon_next_backup_incremental", ())] == 1
    assert values[("pitrkit_daemon_sidecar_restarts_total", ())] == 2
    assert values[("pitrkit_daemon_last_backup_duration_seconds", ())] == 120
    # Every family has one HELP and one TYPE line, and each name is one family's.
    types = [line.split()[2:] for line in text.splitlines() if line.startswith("# TYPE")]
    names = [metric for metric, _ in types]
    assert names == [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert len(names) == len(set(names))
    counters = [metric for metric, kind in types if kind == "counter"]
    assert counters and all(counter.endswith("_total") for counter in counters)
    assert "pitrkit_daemon_start_timestamp_seconds" not in samples(metrics_text(report, None)).keys()


def test_the_page_refreshes_itself_escapes_everything_and_shows_the_figures(store):
    store.backup("A<img src=x onerror=alert(1)>", 1, 2, 3)  # ids are folder names: anything but "/"
    report = collect(store)
    page = html_page(report, FACTS, refresh_seconds=30)
    assert '<meta http-equiv="refresh" content="30">' in page
    assert "<img" not in page
    assert "A&lt;img src=x onerror=alert(1)&gt;" in page
    assert "backup B &lt;done&gt; &amp; stored" in page
    assert name(1, 20) in page  # last WAL
    # Durations read as in the text report (progress.human_seconds).
    assert "(22m30s ago)" in page and "<th>took</th><td>1m00s</td>" in page
    assert 'id="last-backup"' in page and 'id="last-wal"' in page
    assert re.search(r"<th>next backup</th><td>[^<]* \(incremental\)</td>", page)
    assert "http" not in page.replace('http-equiv', '')  # no external assets
    assert "Daemon" not in html_page(report, None, refresh_seconds=30)


# --- chains of incrementals -----------------------------------------------------------------


def test_the_newest_backup_s_chain_and_each_backup_s_stored_share(store):
    full = store.backup("A", 1, 2, 3)
    store.backup("B", 1, 6, 7, parent="A")
    newest = store.backup("C", 1, 10, 11, parent="B")
    report = collect(store)
    assert report.overall == "OK", report.checks
    assert message(report, "chains") == "every chain is whole (2 incremental backups, the longest chain 3 backups)"
    last = report.last_backup
    assert last is not None
    assert (last.backup_id, last.backup_type, last.parent, last.chain_length) == ("C", "incremental", "B", 3)
    assert last.stored_share == round(newest.stored_size / newest.size, 4)
    assert [(each.backup_id, each.backup_type, each.chain_length, each.stored_bytes, each.stored_share)
            for each in report.stored_shares] == [
        ("A", "full", 1, full.stored_size, round(full.stored_size / 1000, 4)),
        ("B", "incremental", 2, newest.stored_size, round(newest.stored_size / newest.size, 4)),
        ("C", "incremental", 3, newest.stored_size, round(newest.stored_size / newest.size, 4))]
    document = json.loads(codec.encode(report))
    assert (document["last_backup"]["chain_length"], document["stored_shares"][0]["stored_share"]) == (
        3, round(full.stored_size / 1000, 4))
    text = status_text(report).splitlines()
    assert "chain:          incremental on B, a chain of 3 backups" in text
    assert f"stored share:   A {full.stored_size / 10:.3g}%, B (incr) " \
           f"{newest.stored_size / newest.size * 100:.3g}%, C (incr) " \
           f"{newest.stored_size / newest.size * 100:.3g}% of their size" in text
    values = samples(metrics_text(report, None))
    assert values[("pitrkit_last_backup_chain_length", ())] == 3
    assert values[("pitrkit_last_backup_stored_ratio", ())] == last.stored_share
    page = html_page(report, None, refresh_seconds=30)
    assert "incremental on B, a chain of 3 backups" in page and 'id="stored-shares"' in page


def test_a_full_backup_has_a_chain_of_one(store):
    store.backup("A", 1, 2, 3)
    report = collect(store)
    assert report.last_backup is not None and report.last_backup.chain_length == 1
    assert message(report, "chains") == "no incremental backup"
    assert samples(metrics_text(report, None))[("pitrkit_last_backup_chain_length", ())] == 1


def test_a_broken_chain_warns_and_the_newest_usable_backup_is_judged(store):
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 6, 7, parent="A")
    store.backup("C", 1, 10, 11, parent="B")
    (store.root / "backups/B/manifest.json").unlink()  # B is unfinished now: C restores nothing
    report = collect(store)
    assert levels(report)["chains"] == "WARN"
    assert message(report, "chains") == ("not restorable, their chains are broken: C (its ancestor B is not in the "
                                         "archive)")
    assert report.last_backup is not None and report.last_backup.backup_id == "A"
    assert levels(report)["restorable"] == "OK"
    [timeline] = report.timelines
    assert timeline.oldest is not None and timeline.oldest.backup_id == "A"


# --- restore drills (drills/<id>.json) ---------------------------------------------------


def drill(store: SyntheticArchive, minute: int, result: str, rto: float | None = 12.5,
          reason: str | None = None) -> documents.DrillReport:
    at = stored_at(20) + timedelta(minutes=minute)
    report = documents.DrillReport(
        drill_id=f"{at:%Y%m%dT%H%M%S}000Z-0000000{minute % 10}", host="h", pitrkit_version="test", started_at=at,
        finished_at=at, result=result, reason=reason, target_kind="latest", backup_id="b1", timeline=1,
        wal_segments=3, rto_seconds=rto, wal_replayed_bytes=1 << 30)
    store.archive.put_document(f"drills/{report.drill_id}.json", report)
    return report


def test_no_drill_and_none_scheduled_shows_nothing(store):
    store.backup("b1", 1, 2, 3)
    report = collect(store)
    assert report.drills is None and "drill" not in levels(report)


def test_a_scheduled_drill_that_never_ran_warns(store):
    store.backup("b1", 1, 2, 3)
    report = collect(store, drill=DrillConfig(every="1d"))
    assert levels(report)["drill"] == "WARN" and "no restore drill has run yet" in message(report, "drill")


def test_the_last_drill_passing_is_ok_then_warns_when_older_than_max_age(store):
    store.backup("b1", 1, 2, 3)
    passed = drill(store, 1, "passed")
    report = collect(store)
    assert levels(report)["drill"] == "OK" and passed.drill_id in message(report, "drill")
    assert report.drills is not None and report.drills.last_success is not None
    assert report.drills.last_success.rto_seconds == 12.5 and report.drills.last_success_age_seconds == 240
    later = collect(store, now=NOW + timedelta(days=9))
    assert levels(later)["drill"] == "WARN" and "older than [drill] max_age 8d" in message(later, "drill")


def test_the_newest_drill_failing_fails_status_and_keeps_the_last_success(store):
    store.backup("b1", 1, 2, 3)
    passed = drill(store, 1, "passed")
    failed = drill(store, 2, "failed", rto=None, reason="stored object backups/b1/part is corrupt")
    report = collect(store)
    assert levels(report)["drill"] == "FAIL" and report.overall == "FAIL"
    assert failed.drill_id in message(report, "drill") and "is corrupt" in message(report, "drill")
    assert report.drills is not None and report.drills.last is not None
    assert report.drills.last.drill_id == failed.drill_id
    assert report.drills.last_success is not None and report.drills.last_success.drill_id == passed.drill_id
    families = {family.name: family for family in text_string_to_metric_families(metrics_text(report, None))}
    value = {name: families[name].samples[0].value for name in (
        "pitrkit_drill_last_result", "pitrkit_drill_rto_seconds", "pitrkit_drill_last_success_age_seconds",
        "pitrkit_drill_last_success_timestamp_seconds", "pitrkit_drill_last_timestamp_seconds",
        "pitrkit_drill_wal_replayed_bytes")}
    assert value == {"pitrkit_drill_last_result": 0, "pitrkit_drill_rto_seconds": 12.5,
                     "pitrkit_drill_last_success_age_seconds": 240,
                     "pitrkit_drill_last_success_timestamp_seconds": passed.finished_at.timestamp(),
                     "pitrkit_drill_last_timestamp_seconds": failed.finished_at.timestamp(),
                     "pitrkit_drill_wal_replayed_bytes": 1 << 30}
    assert f"last drill:     {failed.drill_id} failed" in status_text(report)
    assert f"last passed:    {passed.drill_id} passed" in status_text(report)
    page = html_page(report, None, 30)
    assert 'id="drills"' in page and failed.drill_id in page and passed.drill_id in page


def test_a_forged_drill_report_is_skipped(store):
    store.backup("b1", 1, 2, 3)
    passed = drill(store, 1, "passed")
    store.archive.put("drills/20991231T000000000Z-00000000.json", b'{"drill_id": "../x"}')
    # A well-formed report stored under another report's key is not that report.
    store.archive.put("drills/20991231T000000000Z-00000001.json", codec.encode(passed))
    report = collect(store)
    assert report.drills is not None and report.drills.last is not None
    assert report.drills.last.drill_id == passed.drill_id


def test_drill_reports_are_authenticated_in_an_encrypted_archive(tmp_path):
    keys.generate_key_file(tmp_path / "archive.key")
    encrypted = SyntheticArchive(tmp_path / "archive", EncryptionConfig(mode="key",
                                                                        key_file=str(tmp_path / "archive.key")))
    encrypted.segments(1, 1, 20)
    encrypted.backup("b1", 1, 2, 3)
    passed = drill(encrypted, 1, "passed")  # sealed as every document is
    assert b'"authentication"' in (encrypted.root / f"drills/{passed.drill_id}.json").read_bytes()
    report = status.collect(encrypted.archive, encrypted.archive.config, now=NOW)
    assert report.drills is not None and report.drills.last is not None
    assert report.drills.last.drill_id == passed.drill_id
    # A plain one, as anyone who can write to the storage could make, is refused.
    encrypted.archive.put("drills/20991231T000000000Z-00000000.json", codec.encode(passed))
    with pytest.raises(TamperedDocument):
        status.collect(encrypted.archive, encrypted.archive.config, now=NOW)
