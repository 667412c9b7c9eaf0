"""The catalog: backups reconciled with their manifests, WAL folder indexes, `catalog
rebuild`, and the listings `backup-list` and `wal-list`, on synthetic archives on real
local storage (synthetic_archive.py: 1 GiB segments, 4 per folder)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pitrkit.catalog import contents, maintenance
from pitrkit.catalog.backups import backups, survey_backups
from pitrkit.catalog.documents import BackupCatalog, WalFolderIndex
from pitrkit.cli import main
from pitrkit.errors import PitrkitError
from pitrkit.storage import codec
from pitrkit.storage.archive import BACKUP_CATALOG_KEY
from tests.unit.synthetic_archive import SyntheticArchive, lsn, name, stored_at


@pytest.fixture
def store(tmp_path) -> SyntheticArchive:
    synthetic = SyntheticArchive(tmp_path / "archive")
    synthetic.segments(1, 1, 20)
    return synthetic


def ids(store: SyntheticArchive) -> list[str]:
    return [summary.backup_id for summary in backups(store.archive)]


# --- backups --------------------------------------------------------------------------


def test_backups_come_from_manifests_oldest_first_without_unfinished_ones(store):
    store.backup("B", 1, 10, 11)
    store.backup("A", 1, 2, 3)
    store.backup("C", 1, 14, 15, manifest=False)
    assert ids(store) == ["A", "B"]
    survey = survey_backups(store.archive)
    assert survey.unfinished == ["C"]


def test_record_backup_writes_the_catalog_and_readers_trust_it(store):
    summary = store.backup("A", 1, 2, 3)
    maintenance.record_backup(store.archive, summary)
    document = codec.decode(store.archive.get(BACKUP_CATALOG_KEY), BackupCatalog, "catalog")
    assert document.backups == [summary]
    # With the summary cached, the manifest is not read again.
    (store.root / "backups/A/manifest.json").write_text("{damaged")
    assert backups(store.archive) == [summary]


def test_a_backup_the_catalog_does_not_know_is_read_from_its_manifest(store):
    maintenance.record_backup(store.archive, store.backup("A", 1, 2, 3))
    store.backup("B", 1, 10, 11)  # finished while the catalog was being written by another
    assert ids(store) == ["A", "B"]


def test_a_catalog_entry_whose_folder_is_gone_is_dropped(store):
    maintenance.record_backup(store.archive, store.backup("A", 1, 2, 3))
    maintenance.record_backup(store.archive, store.backup("B", 1, 10, 11))
    shutil.rmtree(store.root / "backups/A")
    assert ids(store) == ["B"]


def test_a_catalog_entry_whose_manifest_is_gone_is_unfinished(store):
    # A deletion interrupted after the manifest went: the folder stays, the backup does not.
    maintenance.record_backup(store.archive, store.backup("A", 1, 2, 3))
    maintenance.record_backup(store.archive, store.backup("B", 1, 10, 11))
    (store.root / "backups/B/manifest.json").unlink()
    assert ids(store) == ["A"]
    assert survey_backups(store.archive).unfinished == ["B"]


def test_a_corrupt_catalog_is_ignored(store, caplog):
    maintenance.record_backup(store.archive, store.backup("A", 1, 2, 3))
    (store.root / BACKUP_CATALOG_KEY).write_text('{"backups": [{"backup_id": 5}]}')
    assert ids(store) == ["A"]
    assert "ignoring the backup catalog" in caplog.text
    # And the next record replaces it with a good one.
    maintenance.record_backup(store.archive, store.backup("B", 1, 10, 11))
    assert [b.backup_id for b in codec.decode(store.archive.get(BACKUP_CATALOG_KEY), BackupCatalog, "c").backups] \
        == ["B"]
    assert ids(store) == ["A", "B"]


def test_a_corrupt_manifest_is_refused_naming_it(store):
    store.backup("A", 1, 2, 3)
    (store.root / "backups/A/manifest.json").write_text('{"backup_id": "A"}')
    with pytest.raises(PitrkitError, match=r"backup A is unusable: backups/A/manifest.json is not a valid "
                                           r"BackupSummary: Object missing required field"):
        backups(store.archive)


def test_a_manifest_naming_another_backup_is_refused(store):
    store.backup("A", 1, 2, 3)
    (store.root / "backups/B").mkdir()
    shutil.copy(store.root / "backups/A/manifest.json", store.root / "backups/B/manifest.json")
    with pytest.raises(PitrkitError, match="backup B is unusable: backups/B/manifest.json names backup 'A'"):
        backups(store.archive)


# --- WAL indexes ----------------------------------------------------------------------


def index(store: SyntheticArchive, folder: str) -> WalFolderIndex:
    return codec.decode(store.archive.get(f"catalog/wal/{folder}.json"), WalFolderIndex, folder)


def test_refresh_indexes_only_sealed_folders_and_only_once(store):
    # Segments 1..20: folders 00000001 0000000{0..5}; the newest one still receives WAL.
    assert maintenance.refresh(store.archive) == [f"catalog/wal/00000001{log:08X}.json" for log in range(5)]
    assert maintenance.refresh(store.archive) == []
    first = index(store, "0000000100000000")
    assert first.folder == "wal/0000000100000000/"
    assert [(e.name, e.stored_size, e.modified) for e in first.entries] == [
        (name(1, segno), len(b"segment %d" % segno), stored_at(segno).timestamp()) for segno in (1, 2, 3)
    ]
    store.segments(1, 21, 24)  # folder 5 is sealed once folder 6 exists
    assert maintenance.refresh(store.archive) == ["catalog/wal/0000000100000005.json"]


def test_record_backup_refreshes_the_indexes(store):
    maintenance.record_backup(store.archive, store.backup("A", 1, 2, 3))
    assert (store.root / "catalog/wal/0000000100000004.json").is_file()


def test_rebuild_recreates_the_same_catalog(store):
    store.history(2, [(1, lsn(8, 0x10))], at=stored_at(12))
    store.segments(2, 8, 13, at=stored_at(13))
    maintenance.record_backup(store.archive, store.backup("A", 1, 2, 3))
    maintenance.record_backup(store.archive, store.backup("B", 1, 10, 11))
    store.backup("C", 1, 14, 15, manifest=False)

    def snapshot() -> dict[str, object]:
        documents: dict[str, object] = {}
        for path in sorted((store.root / "catalog").rglob("*.json")):
            content = json.loads(path.read_text())
            content.pop("indexed_at", None)
            documents[str(path.relative_to(store.root))] = content
        return documents

    before = snapshot()
    assert len(before) == 1 + 5 + 1  # backups.json, timeline 1 folders 0..4, timeline 2 folder 2
    shutil.rmtree(store.root / "catalog")
    report = maintenance.rebuild(store.archive)
    assert snapshot() == before
    assert report[0] == "wrote catalog/backups.json: 2 backups (left out, no manifest: C)"
    assert "wrote catalog/wal/0000000200000002.json: 4 files" in report


def test_rebuild_removes_indexes_of_folders_that_are_gone(store):
    maintenance.refresh(store.archive)
    for segno in range(17, 21):  # folders 4 (16..19) and 5 (20): 4 becomes the newest
        store.drop_segment(1, segno)
    (store.root / "wal/0000000100000005").rmdir()
    report = maintenance.rebuild(store.archive)
    assert "removed catalog/wal/0000000100000004.json: its folder is gone or still receives WAL" in report
    assert not (store.root / "catalog/wal/0000000100000004.json").exists()


def test_rebuild_refuses_a_corrupt_manifest(store):
    store.backup("A", 1, 2, 3)
    (store.root / "backups/A/manifest.json").write_bytes(b"\xff")
    with pytest.raises(PitrkitError, match="backup A is unusable"):
        maintenance.rebuild(store.archive)


def test_indexes_stay_right_while_a_partial_comes_and_goes(store):
    """The open segment 21 (folder 5) is shipped as a partial, re-shipped, then replaced
    by its full segment and deleted; folder 5 is sealed in between, when segment 24
    (folder 6) is stored before the partial of 21 is removed, so the index of folder 5
    is written while the partial is there. It must not name it."""
    store.partial(1, 21, pages=3, at=stored_at(21))
    assert maintenance.refresh(store.archive) == [f"catalog/wal/00000001{log:08X}.json" for log in range(5)]
    store.partial(1, 21, pages=6, at=stored_at(21))
    store.segments(1, 21, 24)
    assert maintenance.refresh(store.archive) == ["catalog/wal/0000000100000005.json"]
    assert [e.name for e in index(store, "0000000100000005").entries] == [name(1, segno) for segno in (20, 21, 22, 23)]
    listed = [row.name for row in contents.wal_rows(store.archive)]
    assert f"{name(1, 21)}.partial" not in listed  # a leftover in a sealed folder: later WAL exists
    store.drop_partial(1, 21)
    assert [row.name for row in contents.wal_rows(store.archive)] == listed
    maintenance.rebuild(store.archive)
    assert [e.name for e in index(store, "0000000100000005").entries] == [name(1, segno) for segno in (20, 21, 22, 23)]


def test_rebuild_leaves_partials_out_of_the_indexes(store):
    store.partial(1, 19, pages=3, at=stored_at(19))  # a leftover in folder 4, sealed
    maintenance.rebuild(store.archive)
    assert [e.name for e in index(store, "0000000100000004").entries] == [name(1, segno) for segno in (16, 17, 18, 19)]


# --- wal-list -------------------------------------------------------------------------


def test_wal_rows_say_which_backup_each_segment_belongs_to_and_its_state(store):
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 10, 11)
    store.history(2, [(1, lsn(8, 0x10))], at=stored_at(12))
    store.segments(2, 8, 9, at=stored_at(13))
    maintenance.refresh(store.archive)
    rows = {row.name: row for row in contents.wal_rows(store.archive)}
    expected = {1: (None, "obsolete"), 2: ("A", "backup"), 3: ("A", "backup"), 4: ("A", "restorable"),
                9: ("A", "restorable"), 10: ("B", "backup"), 11: ("B", "backup"), 12: ("B", "restorable"),
                20: ("B", "restorable")}
    for segno, (owner, state) in expected.items():
        row = rows[name(1, segno)]
        assert (row.backup, row.state) == (owner, state), segno
        assert (row.start_lsn, row.end_lsn) == (lsn(segno), lsn(segno + 1))
    # Timeline 2 branched before B started: its segments belong to A.
    assert (rows[name(2, 8)].backup, rows[name(2, 8)].state) == ("A", "restorable")
    assert rows["00000002.history"].state == "history" and rows["00000002.history"].timeline == 2
    assert len(rows) == 20 + 2 + 1
    only_two = contents.wal_rows(store.archive, only_timeline=2)
    assert [row.name for row in only_two] == ["00000002.history", name(2, 8), name(2, 9)]


def test_wal_list_shows_the_newest_partial_marked_partial(store):
    store.backup("B", 1, 10, 11)
    store.partial(1, 20, pages=3, at=stored_at(20))  # left behind: its full segment is stored too
    store.partial(1, 21, pages=3, at=stored_at(21))
    rows = contents.wal_rows(store.archive)
    assert [row.name for row in rows[-4:]] == [name(1, 19), name(1, 20), f"{name(1, 20)}.partial",
                                              f"{name(1, 21)}.partial"]
    newest = rows[-1]
    assert (newest.partial, newest.state, newest.backup) == (True, "restorable", "B")
    assert (newest.start_lsn, newest.end_lsn) == (lsn(21), lsn(22))
    assert not rows[-3].partial


# --- the commands ---------------------------------------------------------------------


@pytest.fixture
def config(tmp_path, store, monkeypatch) -> Path:
    monkeypatch.delenv("PITRKIT_CONFIG", raising=False)
    monkeypatch.setenv("TZ", "UTC")
    path = tmp_path / "pitrkit.toml"
    path.write_text(f'[repository]\nurl = "file://{store.root}"\nretries = 0\n')
    return path


def run(capsys, config: Path, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--config", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_backup_list_shows_finished_and_unfinished_backups(capsys, config, store):
    store.backup("A", 1, 2, 3)
    store.backup("C", 1, 14, 15, manifest=False)
    code, out, err = run(capsys, config, "backup-list")
    assert (code, err) == (0, "")
    header, first, second = out.splitlines()
    assert header.split() == ["ID", "LABEL", "START", "STOP", "START", "LSN", "STOP", "LSN", "TL", "TYPE", "PARENT",
                              "CHAIN", "SIZE", "STORED", "CHAIN", "STORED", "PG", "CONFIG"]
    assert first.startswith("A   label A") and "2026-11-23 12:01:30+00:00" in first and str(lsn(2, 0x28)) in first
    # timeline, type, parent, chain length, sizes (own and the chain's), PostgreSQL major;
    # "-": a manifest without the server's configuration
    assert first.split()[-12:] == ["1", "full", "-", "1", "1000", "B", "1.1", "KiB", "1.1", "KiB", "15", "-"]
    assert second.startswith("C   (unfinished: no manifest)")
    code, out, err = run(capsys, config, "backup-list", "--json")
    listing = json.loads(out)
    assert [b["backup_id"] for b in listing["backups"]] == ["A"] and listing["unfinished"] == ["C"]
    assert listing["backups"][0]["start_lsn"] == str(lsn(2, 0x28))


def test_backup_list_shows_each_backup_s_chain(capsys, config, store):
    full = store.backup("A", 1, 2, 3)
    first = store.backup("B", 1, 6, 7, parent="A")
    second = store.backup("C", 1, 10, 11, parent="B")
    store.backup("D", 1, 14, 15, parent="C", chain=["A", "BB", "C"])  # BB is in no archive
    code, out, err = run(capsys, config, "backup-list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[10:14] for line in lines[1:5]] == [
        ["full", "-", "1", "1000"], ["incr", "A", "2", "17.0"], ["incr", "B", "3", "17.0"],
        ["incr", "C", "4", "broken"]]
    assert lines[5] == "D: not restorable, its chain is broken: its ancestor BB is not in the archive"
    code, out, err = run(capsys, config, "backup-list", "--json")
    listed = {b["backup_id"]: b for b in json.loads(out)["backups"]}
    assert {backup_id: (b["backup_type"], b["parent"], b["chain"], b["stored_size"], b["chain_stored_size"],
                        b["broken"]) for backup_id, b in listed.items()} == {
        "A": ("full", None, [], full.stored_size, full.stored_size, None),
        "B": ("incremental", "A", ["A"], first.stored_size, full.stored_size + first.stored_size, None),
        "C": ("incremental", "B", ["A", "B"], second.stored_size,
              full.stored_size + first.stored_size + second.stored_size, None),
        "D": ("incremental", "C", ["A", "BB", "C"], listed["D"]["stored_size"],
              full.stored_size + second.stored_size + listed["D"]["stored_size"],
              "its ancestor BB is not in the archive")}


def test_wal_list_owns_no_wal_by_a_backup_whose_chain_is_broken(capsys, config, store):
    store.backup("A", 1, 2, 3)
    store.backup("C", 1, 10, 11, parent="B", chain=["A", "B"])  # B is in no archive (yet)
    code, out, err = run(capsys, config, "wal-list", "--json", "--timeline", "1")
    owners = {f["name"]: (f["backup"], f["state"]) for f in json.loads(out)["files"]}
    assert owners[name(1, 10)] == ("A", "restorable")
    store.backup("B", 1, 6, 7, parent="A")
    code, out, err = run(capsys, config, "wal-list", "--json", "--timeline", "1")
    owners = {f["name"]: (f["backup"], f["state"]) for f in json.loads(out)["files"]}
    assert owners[name(1, 10)] == ("C", "backup")


def test_wal_list_json(capsys, config, store):
    store.backup("A", 1, 2, 3)
    code, out, err = run(capsys, config, "wal-list", "--json", "--timeline", "1")
    assert (code, err) == (0, "")
    files = json.loads(out)["files"]
    assert files[0] == {"name": name(1, 1), "timeline": 1, "start_lsn": str(lsn(1)), "end_lsn": str(lsn(2)),
                        "stored_size": 9, "stored_at": "2026-11-23T12:01:00Z", "backup": None, "state": "obsolete",
                        "partial": False, "indexed": False, "first_commit": None, "last_commit": None, "era": 1}
    assert [f["state"] for f in files[1:4]] == ["backup", "backup", "restorable"]
    code, out, _ = run(capsys, config, "wal-list")
    assert out.splitlines()[0].split()[:2] == ["NAME", "TL"] and len(out.splitlines()) == 21
    store.partial(1, 21, pages=3, at=stored_at(21))
    code, out, _ = run(capsys, config, "wal-list")
    assert out.splitlines()[-1].startswith(f"{name(1, 21)}.partial")
    assert re.search(r"restorable, partial +-$", out.rstrip())


def test_catalog_rebuild_prints_what_it_wrote(capsys, config, store):
    code, out, err = run(capsys, config, "catalog", "rebuild")
    assert (code, err) == (0, "")
    assert out.splitlines()[:-1] == ["wrote catalog/backups.json: 0 backups"] + [
        f"wrote catalog/wal/00000001{log:08X}.json: {3 if log == 0 else 4} files" for log in range(5)
    ]
    # The fixture's segments are stand-ins, not WAL: the time index says so in one line.
    assert out.splitlines()[-1].startswith("time index: 20 segments not indexed, unreadable as WAL (first ")


def test_restore_plan_prints_a_plan_or_one_line_naming_what_is_missing(capsys, config, store):
    store.backup("A", 1, 2, 3)
    code, out, err = run(capsys, config, "restore-plan", "--lsn", str(lsn(6)))
    assert (code, err) == (0, "")
    assert f"WAL:          5 segments, {name(1, 2)} .. {name(1, 6)}" in out
    code, out, _ = run(capsys, config, "restore-plan", "--time", "2026-11-23 12:05:00", "--json")
    plan = json.loads(out)
    assert plan["backup"]["backup_id"] == "A" and plan["target"]["time"] == "2026-11-23T12:05:00Z"
    assert plan["segments"][-1] == name(1, 20)
    store.drop_segment(1, 4)
    code, out, err = run(capsys, config, "restore-plan", "--lsn", str(lsn(6)))
    assert (code, out) == (1, "")
    assert err == f"pitrkit: segment {name(1, 4)} is missing from the archive: the WAL between the backup and the " \
                  f"target LSN {lsn(6)} has a gap there\n"
    code, out, err = run(capsys, config, "restore-plan", "--time", "noon")
    assert code == 2 and err.startswith("pitrkit: not a time: 'noon'") and err.count("\n") == 1


def test_wal_list_of_a_fresh_archive_says_before_the_first_backup(capsys, config, store):
    """WAL archived before any backup is what every new archive holds: nothing to alarm."""
    code, out, err = run(capsys, config, "wal-list")  # the store fixture's 20 segments, no backup
    assert (code, err) == (0, "")
    assert "obsolete" not in out
    # The last column, the time index's commit times: "-", none is indexed.
    assert all(re.search(r"  -  +before the first backup +-$", line) for line in out.splitlines()[1:21])
    assert out.splitlines()[-1] == ("no backup yet: this WAL is kept, but a restore needs a base backup to start "
                                    "from (pitrkit backup-push)")
    code, out, _ = run(capsys, config, "wal-list", "--json")
    assert {f["state"] for f in json.loads(out)["files"]} == {"before-first-backup"}
