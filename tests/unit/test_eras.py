"""An archive's eras (issue 17, major upgrades): `archive.json`'s era documents as a
hostile reader checks them, the era views of an archive and their key layout, `pitrkit
upgrade`'s rules, wal-push choosing an era by the file's cluster, wal-fetch --era, and
listing, planning and retention over several eras. Real local archives; the 15 -> 18
pg_upgrade itself is tests/integration/test_upgrade.py."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from pitrkit.catalog import restore_points
from pitrkit.catalog.contents import backup_listing, wal_rows
from pitrkit.catalog.documents import BackupManifest, RestorePoint
from pitrkit.cli import main
from pitrkit.config import EncryptionConfig, RetentionConfig, load
from pitrkit.errors import NotInArchive, PitrkitError, RefusedError
from pitrkit.ops import retention, upgrade
from pitrkit.ops.init import ClusterFacts, initialise
from pitrkit.ops.repo_sync import sync
from pitrkit.postgres.wal import Lsn
from pitrkit.restore import recovery_conf
from pitrkit.restore.plan import plan_eras
from pitrkit.restore.targets import Target
from pitrkit.storage import codec, keys
from pitrkit.storage.archive import IDENTITY_KEY, Archive, TamperedDocument, era_prefix, manifest_key
from pitrkit.storage.identity import ArchiveIdentity
from pitrkit.storage.repositories import open_all
from pitrkit.wal import agent_client
from pitrkit.wal.agent import Agent
from pitrkit.wal.fetch import SPOOL_PREFIX, fetch_from_first
from pitrkit.wal.push import push, push_to_every
from tests.unit.segments import SEG_16MIB, SYSID, init_archive, segment
from tests.unit.synthetic_archive import SyntheticArchive, lsn, name, stored_at
from tests.unit.test_repositories import archives

NEW_SYSID = SYSID + 1
T = datetime(2026, 11, 1, tzinfo=UTC)


def facts(system_identifier: int = NEW_SYSID, major: int = 18, size: int = SEG_16MIB) -> ClusterFacts:
    return ClusterFacts(system_identifier, size, major, "the test")


def opened(tmp_path: Path) -> Archive:
    root = tmp_path / "archive"
    root.mkdir()
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{root}"\nretries = 0\n[agent]\nenabled = false\n')
    archive = Archive(load(config))
    init_archive(archive)
    return archive


def identity_document(**changes: object) -> bytes:
    document = {"system_identifier": SYSID, "wal_segment_size": SEG_16MIB, "pg_versions": [15, 18],
                "created_at": "2026-11-01T00:00:00Z",
                "eras": [{"era": 1, "system_identifier": SYSID, "pg_version": 15,
                          "recorded_at": "2026-11-01T00:00:00Z"},
                         {"era": 2, "system_identifier": NEW_SYSID, "pg_version": 18,
                          "recorded_at": "2026-11-02T00:00:00Z"}]}
    document.update(changes)
    return msgspec.json.encode(document)


def segment_file(directory: Path, number: int, sysid: int = SYSID) -> Path:
    path = directory / f"00000001{0:08X}{number:08X}"
    path.write_bytes(segment(number, sysid=sysid))
    return path


# --- the era documents -----------------------------------------------------------------------


def test_an_archive_never_upgraded_is_era_1_alone_from_its_own_fields(tmp_path):
    identity = opened(tmp_path).identity()
    assert identity.eras == []
    [era] = identity.all_eras
    assert (era.era, era.system_identifier, era.pg_version) == (1, SYSID, 15)
    assert identity.era_of(SYSID) == era and identity.era_of(NEW_SYSID) is None


def test_recorded_eras_decode():
    identity = codec.decode(identity_document(), ArchiveIdentity, IDENTITY_KEY)
    assert [(era.era, era.pg_version) for era in identity.all_eras] == [(1, 15), (2, 18)]
    assert identity.current_era.system_identifier == NEW_SYSID


@pytest.mark.parametrize(("changes", "said"), [
    ({"pg_versions": [15, 9]}, "not a list of 1 to 100 PostgreSQL major versions"),
    ({"eras": [{"era": 1, "system_identifier": SYSID, "pg_version": 150, "recorded_at": "2026-11-01T00:00:00Z"}],
      "pg_versions": [15]}, "major version 150 is not one pitrkit knows"),
    ({"eras": [{"era": 1, "system_identifier": SYSID + 5, "pg_version": 15, "recorded_at": "2026-11-01T00:00:00Z"}],
      "pg_versions": [15]}, "era 1 is of system identifier"),
    ({"eras": [{"era": 2, "system_identifier": SYSID, "pg_version": 15, "recorded_at": "2026-11-01T00:00:00Z"}],
      "pg_versions": [15]}, "not 1, 2, ... in order"),
    ({"pg_versions": [15, 17]}, "does not match the eras' majors"),
    ({"pg_versions": [15, 16]}, "does not match"),
    ({"pg_versions": [15, 16], "eras": []}, "lists several majors, but no eras are recorded"),
])
def test_a_hostile_era_document_is_refused(changes, said):
    with pytest.raises(ValueError, match="is not a valid ArchiveIdentity") as refused:
        codec.decode(identity_document(**changes), ArchiveIdentity, IDENTITY_KEY)
    assert said in str(refused.value)


def test_eras_that_go_back_a_major_or_repeat_a_cluster_are_refused():
    backwards = identity_document(pg_versions=[15, 14], eras=[
        {"era": 1, "system_identifier": SYSID, "pg_version": 15, "recorded_at": "2026-11-01T00:00:00Z"},
        {"era": 2, "system_identifier": NEW_SYSID, "pg_version": 14, "recorded_at": "2026-11-02T00:00:00Z"}])
    with pytest.raises(ValueError, match="go backwards"):
        codec.decode(backwards, ArchiveIdentity, IDENTITY_KEY)
    repeated = identity_document(eras=[
        {"era": 1, "system_identifier": SYSID, "pg_version": 15, "recorded_at": "2026-11-01T00:00:00Z"},
        {"era": 2, "system_identifier": SYSID, "pg_version": 18, "recorded_at": "2026-11-02T00:00:00Z"}])
    with pytest.raises(ValueError, match="same system identifier"):
        codec.decode(repeated, ArchiveIdentity, IDENTITY_KEY)


def test_a_tampered_archive_json_fails_the_push_in_one_line(tmp_path, capsys):
    archive = opened(tmp_path)
    (tmp_path / "archive" / IDENTITY_KEY).write_bytes(identity_document(pg_versions=[15, 17]))
    path = segment_file(tmp_path, 1)
    assert main(["--config", str(tmp_path / "pitrkit.toml"), "wal-push", str(path)]) != 0
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is not a valid ArchiveIdentity" in error
    assert not (tmp_path / "archive" / "wal").exists() and archive is not None


# --- the era views ---------------------------------------------------------------------------


def test_an_era_view_keeps_its_keys_under_its_prefix(tmp_path):
    archive = opened(tmp_path)
    assert archive.era(1) is archive and era_prefix(1) == "" and era_prefix(2) == "eras/2/"
    with pytest.raises(RefusedError, match="has no era 2"):
        archive.era(2)
    upgrade.upgrade(archive, facts())
    second = archive.era(2)
    second.put("wal/x/y", b"data")
    assert (tmp_path / "archive" / "eras" / "2" / "wal" / "x" / "y").read_bytes() == b"data"
    assert [info.key for info in second.list("wal/")] == ["wal/x/y"]
    assert second.list_folder("wal/").folders == ["wal/x/"]
    assert second.stat("wal/x/y").key == "wal/x/y"
    assert list(archive.list("wal/")) == []  # era 1 does not see it
    assert second.identity() is archive.identity() and second.era_record.system_identifier == NEW_SYSID
    assert [view.era_number for view in archive.eras()] == [1, 2]


# --- pitrkit upgrade ------------------------------------------------------------------------


def test_upgrade_records_the_new_cluster_and_is_idempotent(tmp_path):
    archive = opened(tmp_path)
    said = upgrade.upgrade(archive, facts())
    assert "recorded era 2" in said and "full backup" in said
    stored = codec.decode((tmp_path / "archive" / IDENTITY_KEY).read_bytes(), ArchiveIdentity, "test")
    assert stored.pg_versions == [15, 18]
    assert [(era.era, era.system_identifier, era.pg_version) for era in stored.eras] == [
        (1, SYSID, 15), (2, NEW_SYSID, 18)]
    before = (tmp_path / "archive" / IDENTITY_KEY).read_bytes()
    assert "nothing to do" in upgrade.upgrade(archive, facts())
    assert (tmp_path / "archive" / IDENTITY_KEY).read_bytes() == before


@pytest.mark.parametrize(("cluster", "said"), [
    (facts(major=14), "older than the archive"),
    (facts(size=SEG_16MIB * 4), "-byte WAL segments"),
])
def test_upgrade_refuses_an_older_major_or_another_segment_size(tmp_path, cluster, said):
    archive = opened(tmp_path)
    with pytest.raises(RefusedError, match=said):
        upgrade.upgrade(archive, cluster)
    assert archive.identity(fresh=True).eras == []


def test_upgrade_refuses_an_earlier_era_and_the_same_cluster_is_nothing_to_do(tmp_path):
    archive = opened(tmp_path)
    assert "nothing to do" in upgrade.upgrade(archive, facts(SYSID, 15))
    upgrade.upgrade(archive, facts())
    with pytest.raises(RefusedError, match="is era 1 of the archive"):
        upgrade.upgrade(archive, facts(SYSID, 18))


def test_the_upgrade_command_records_the_era_in_every_repository(tmp_path, monkeypatch, capsys):
    config = archives(tmp_path, "local", "cloud")
    monkeypatch.setattr(upgrade, "cluster_facts", lambda _config: facts())
    upgrade.command(None, config, tmp_path / "unused.toml")  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "repository 'local': recorded era 2" in out and "repository 'cloud': recorded era 2" in out
    assert all(each.archive.identity(fresh=True).current_era.era == 2 for each in open_all(config))


def test_the_upgrade_command_refuses_before_writing_any_repository(tmp_path, monkeypatch):
    config = archives(tmp_path, "local", "cloud")
    upgrade.upgrade(open_all(config)[1].archive, facts())
    monkeypatch.setattr(upgrade, "cluster_facts", lambda _config: facts(NEW_SYSID + 1, 17))
    with pytest.raises(RefusedError, match="older than"):
        upgrade.command(None, config, tmp_path / "unused.toml")  # type: ignore[arg-type]
    assert open_all(config)[0].archive.identity(fresh=True).eras == []


# --- wal-push and wal-fetch per era ---------------------------------------------------------


def test_wal_push_stores_each_cluster_s_segments_in_its_own_era(tmp_path):
    archive = opened(tmp_path)
    root = tmp_path / "archive"
    push(archive, segment_file(tmp_path, 1))
    with pytest.raises(RefusedError, match=f"system identifier {NEW_SYSID}.*`pitrkit upgrade`"):
        push(archive, segment_file(tmp_path, 2, NEW_SYSID))
    upgrade.upgrade(archive, facts())
    push(archive, segment_file(tmp_path, 2, NEW_SYSID))
    push(archive, segment_file(tmp_path, 3, SYSID))  # a late archiver of the old cluster
    assert (root / "wal" / "0000000100000000" / name_16(1)).is_file()
    assert (root / "eras" / "2" / "wal" / "0000000100000000" / name_16(2)).is_file()
    assert (root / "wal" / "0000000100000000" / name_16(3)).is_file()
    assert not (root / "eras" / "2" / "wal" / "0000000100000000" / name_16(3)).exists()
    with pytest.raises(RefusedError, match="belongs to"):
        push(archive, segment_file(tmp_path, 4, NEW_SYSID + 7))


def name_16(number: int) -> str:
    return f"00000001{0:08X}{number:08X}"


def test_a_history_file_goes_to_the_era_of_the_data_directory_it_comes_from(tmp_path):
    archive = opened(tmp_path)
    upgrade.upgrade(archive, facts())
    history = "1\t0/3000000\tno recovery target specified\n"
    for data_directory, sysid in (("old", SYSID), ("new", NEW_SYSID), ("stray", NEW_SYSID + 9)):
        (tmp_path / data_directory / "global").mkdir(parents=True)
        (tmp_path / data_directory / "pg_wal").mkdir()
        (tmp_path / data_directory / "global" / "pg_control").write_bytes(sysid.to_bytes(8, "little") + bytes(100))
        (tmp_path / data_directory / "pg_wal" / "00000002.history").write_text(history)
    push(archive, tmp_path / "old" / "pg_wal" / "00000002.history")
    assert (tmp_path / "archive" / "wal" / "00000002.history").is_file()
    push(archive, tmp_path / "new" / "pg_wal" / "00000002.history")
    assert (tmp_path / "archive" / "eras" / "2" / "wal" / "00000002.history").is_file()
    with pytest.raises(RefusedError, match="comes from the data directory of the cluster"):
        push(archive, tmp_path / "stray" / "pg_wal" / "00000002.history")
    # Away from a data directory (wal-receive's, a push by hand): the newest era.
    (tmp_path / "00000003.history").write_text("1\t0/3000000\tx\n2\t0/4000000\ty\n")
    push(archive, tmp_path / "00000003.history")
    assert (tmp_path / "archive" / "eras" / "2" / "wal" / "00000003.history").is_file()


def test_wal_fetch_reads_the_era_it_is_told(tmp_path, capsys):
    config = archives(tmp_path, "local")
    repositories = open_all(config)
    init_archive(repositories[0].archive)
    upgrade.upgrade(repositories[0].archive, facts())
    push_to_every(repositories, segment_file(tmp_path, 5, NEW_SYSID))
    with pytest.raises(NotInArchive):
        fetch_from_first(repositories, name_16(5), tmp_path / "fetched")
    assert "restored" in fetch_from_first(repositories, name_16(5), tmp_path / "fetched", era=2)
    assert (tmp_path / "fetched").read_bytes() == segment(5, sysid=NEW_SYSID)
    with pytest.raises(PitrkitError, match="has no era 3"):
        fetch_from_first(repositories, name_16(5), tmp_path / "fetched", era=3)


def test_a_later_era_s_wal_is_fetched_and_read_ahead_by_the_agent(tmp_path, monkeypatch):
    # After an upgrade every restore is of era 2: its wal-fetch goes to the agent like
    # era 1's, which reads era 2's segments ahead (and never era 1's of the same names).
    monkeypatch.delenv("PITRKIT_CONFIG", raising=False)
    config = tmp_path / "pitrkit.toml"
    (tmp_path / "archive").mkdir()
    config.write_text(f'[repository]\nurl = "file://{tmp_path / "archive"}"\nretries = 0\n[agent]\nlookahead = 2\n')
    archive = Archive(load(config))
    init_archive(archive)
    upgrade.upgrade(archive, facts())
    for number in (5, 6, 7):
        push(archive, segment_file(tmp_path, number, SYSID))
        push(archive, segment_file(tmp_path, number, NEW_SYSID))
    served = Agent(config)
    try:
        restored = tmp_path / "restored"
        restored.mkdir()

        def ask(*argv: str) -> bytes:
            request = agent_client.parse_request(["--config", str(config), *argv])
            assert request is not None, argv
            return served._answer(request)

        assert ask("wal-fetch", name_16(5), str(restored / "RECOVERYXLOG"), "--until", name_16(7), "--era", "2") \
            .startswith(b"0\0")
        assert (restored / "RECOVERYXLOG").read_bytes() == segment(5, sysid=NEW_SYSID)
        while served._serving.fetches.pending():
            time.sleep(0.01)
        assert sorted(path.name for path in restored.iterdir() if path.name.startswith(SPOOL_PREFIX)) == \
            [f"{SPOOL_PREFIX}era2.{name_16(6)}", f"{SPOOL_PREFIX}era2.{name_16(7)}"]
        assert ask("wal-fetch", name_16(6), str(restored / "RECOVERYXLOG"), "--era", "2").startswith(b"0\0")
        assert (restored / "RECOVERYXLOG").read_bytes() == segment(6, sysid=NEW_SYSID)
        # Era 1's segment of the same name is not what was read ahead for era 2.
        assert ask("wal-fetch", name_16(7), str(restored / "RECOVERYXLOG")).startswith(b"0\0")
        assert (restored / "RECOVERYXLOG").read_bytes() == segment(7)
        # restore's first read ahead, before the server starts, names the era too.
        again = tmp_path / "again"
        again.mkdir()
        assert served._answer(agent_client.prefetch_request(str(config), str(again), [name_16(5)], 2)) \
            .startswith(b"0\0")
        while served._serving.fetches.pending():
            time.sleep(0.01)
        assert (again / f"{SPOOL_PREFIX}era2.{name_16(5)}").read_bytes() == segment(5, sysid=NEW_SYSID)
    finally:
        served._close(wait=True)
        logging.getLogger("pitrkit").removeHandler(served._request_log)


def test_restore_command_names_an_era_after_the_first_only(tmp_path):
    assert "--era" not in recovery_conf.restore_command(tmp_path / "p.toml", None, 1)
    assert recovery_conf.restore_command(tmp_path / "p.toml", "000000010000000000000009", 2).endswith(
        "wal-fetch %f %p --until 000000010000000000000009 --era 2")


# --- listing, planning and retention over eras ----------------------------------------------


@pytest.fixture
def upgraded(tmp_path) -> SyntheticArchive:
    """Era 1 (system 1, PostgreSQL 15): segments 1..10 of timeline 1, backup A in 2..3 and
    B in 6..7. Era 2 (system 2, PostgreSQL 18), as pg_upgrade continues the numbering:
    segments 12..20, backup C in 13..14."""
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 10)
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 6, 7)
    upgrade.upgrade(store.archive, ClusterFacts(2, 1 << 30, 18, "the test"))
    second = object.__new__(SyntheticArchive)
    second.root, second.archive, second.chains = store.root / "eras" / "2", store.archive.era(2), {}
    second.segments(1, 12, 20)
    second.backup("C", 1, 13, 14, system_identifier=2, pg_version=180001)
    return store


def test_listings_show_every_era(upgraded):
    listing = backup_listing(upgraded.archive)
    assert [(backup.backup_id, backup.era, backup.pg_major) for backup in listing.backups] == [
        ("A", 1, 15), ("B", 1, 15), ("C", 2, 18)]
    rows = wal_rows(upgraded.archive)
    assert {row.name for row in rows if row.era == 2} == {name(1, segno) for segno in range(12, 21)}
    assert {row.name for row in rows if row.era == 1} == {name(1, segno) for segno in range(1, 11)}


def test_a_plan_is_made_in_the_era_that_holds_the_target(upgraded):
    latest = plan_eras(upgraded.archive, Target(kind="latest", text="latest"))
    assert (latest.era, latest.backup.backup_id, latest.segments[-1]) == (2, "C", name(1, 20))
    moment = stored_at(8) + (stored_at(9) - stored_at(8)) / 2
    in_the_first = plan_eras(upgraded.archive, Target(kind="time", time=moment, text=moment.isoformat()))
    assert (in_the_first.era, in_the_first.backup.backup_id) == (1, "B")
    assert in_the_first.segments[-1] <= name(1, 10) and any("era 1" in note for note in in_the_first.notes)
    lsn = Target(kind="lsn", lsn=upgraded_lsn(16), text="x")
    assert plan_eras(upgraded.archive, lsn).era == 2


def upgraded_lsn(segno: int) -> Lsn:
    return lsn(segno, 0x500)


def test_retention_weighs_the_eras_together_and_keeps_each_kept_backup_s_wal(upgraded):
    keep_two = retention.apply(upgraded.archive, RetentionConfig(keep_last=2), dry_run=True)
    assert sorted((item.backup_id, item.era) for item in keep_two.kept) == [("B", 1), ("C", 2)]
    assert [(item.backup_id, item.era) for item in keep_two.removed_backups] == [("A", 1)]
    # Each era's WAL before its oldest kept backup goes; from there on it stays, whatever
    # the other era holds.
    assert {(item.era, item.first, item.last) for item in keep_two.removed_wal} == {
        (1, name(1, 1), name(1, 5)), (2, name(1, 12), name(1, 12))}
    report = retention.apply(upgraded.archive, RetentionConfig(keep_last=2))
    assert [item.backup_id for item in report.removed_backups] == ["A"]
    assert (upgraded.root / "wal" / name(1, 6)[:16] / name(1, 6)).is_file()
    assert (upgraded.root / "eras" / "2" / "wal" / name(1, 13)[:16] / name(1, 13)).is_file()
    assert not (upgraded.root / "eras" / "2" / "wal" / name(1, 12)[:16] / name(1, 12)).exists()
    upgraded.history(2, [(1, lsn(9))], at=stored_at(9))  # a restored copy's branch, promoted once
    keep_one = retention.apply(upgraded.archive, RetentionConfig(keep_last=1))
    assert [(item.backup_id, item.era) for item in keep_one.kept] == [("C", 2)]
    # Era 1 has no kept backup and its cluster is gone: all its WAL goes, its history files stay.
    [ended] = [item for item in keep_one.removed_wal if item.era == 1]
    assert (ended.first, ended.last, ended.files) == (name(1, 6), name(1, 10), 5) and "no kept backup" in ended.why
    assert not list((upgraded.root / "wal").glob("*/0*")) and (upgraded.root / "wal" / "00000002.history").is_file()
    assert (upgraded.root / "eras" / "2" / "wal" / name(1, 13)[:16] / name(1, 13)).is_file()


def test_the_newest_era_without_a_backup_keeps_its_wal(tmp_path):
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 4)
    store.backup("A", 1, 2, 3)
    upgrade.upgrade(store.archive, ClusterFacts(2, 1 << 30, 18, "the test"))
    second = object.__new__(SyntheticArchive)
    second.root, second.archive, second.chains = store.root / "eras" / "2", store.archive.era(2), {}
    second.segments(1, 6, 8)
    report = retention.apply(store.archive, RetentionConfig(keep_last=1), dry_run=True)
    assert [(item.backup_id, item.era) for item in report.kept] == [("A", 1)]
    assert report.removed_wal == [] or {item.era for item in report.removed_wal} == {1}
    assert not [item for item in report.removed_wal if item.era == 2]


def test_repo_sync_copies_each_era_into_the_same_era(tmp_path):
    first, second = open_all(archives(tmp_path, "local", "cloud"))
    for each in (first, second):
        upgrade.upgrade(each.archive, facts())
    push(first.archive, segment_file(tmp_path, 1, SYSID))
    push(first.archive, segment_file(tmp_path, 2, NEW_SYSID))
    report = sync(first, second)
    assert sorted(report.wal) == [name_16(1), name_16(2)] and not report.problems
    assert (tmp_path / "cloud" / "wal" / "0000000100000000" / name_16(1)).is_file()
    assert (tmp_path / "cloud" / "eras" / "2" / "wal" / "0000000100000000" / name_16(2)).is_file()
    assert sync(first, second).wal == []


def test_a_restore_point_of_an_earlier_era_is_planned_there(upgraded):
    point = RestorePoint(name="before-upgrade", lsn=lsn(8, 0x100), timeline=1, segment=name(1, 8),
                         created_at=stored_at(8), system_identifier=1)
    restore_points.record(upgraded.archive, point.name, lambda: point)
    plan = plan_eras(upgraded.archive, Target(kind="name", name=point.name, text=point.name))
    assert (plan.era, plan.backup.backup_id, plan.fetch_until) == (1, "B", name(1, 8))


def test_in_an_encrypted_archive_an_era_s_documents_are_bound_to_their_era(tmp_path):
    key = tmp_path / "archive.key"
    keys.generate_key_file(key)
    store = SyntheticArchive(tmp_path / "archive", EncryptionConfig(mode="key", key_file=str(key)))
    store.segments(1, 1, 4)
    store.backup("A", 1, 2, 3)
    upgrade.upgrade(store.archive, ClusterFacts(2, 1 << 30, 18, "the test"))
    assert store.archive.identity(fresh=True).current_era.era == 2  # archive.json re-sealed, and it reads back
    second = store.archive.era(2)
    # Era 1's authentic manifest, copied into era 2 under the same name, does not authenticate there.
    (tmp_path / "archive" / "eras" / "2" / "backups" / "A").mkdir(parents=True)
    (tmp_path / "archive" / "eras" / "2" / manifest_key("A")).write_bytes(
        (tmp_path / "archive" / manifest_key("A")).read_bytes())
    with pytest.raises(TamperedDocument):
        second.get_document(manifest_key("A"), BackupManifest)


def test_init_after_an_upgrade_knows_the_new_cluster_and_names_upgrade_for_an_unknown_one(tmp_path):
    archive = opened(tmp_path)
    with pytest.raises(RefusedError, match="`pitrkit upgrade` records the new cluster"):
        initialise(archive, facts())
    upgrade.upgrade(archive, facts())
    said = initialise(archive, facts())
    assert "already initialised for this cluster" in said and "its era 2" in said
