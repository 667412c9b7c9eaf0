"""`pitrkit verify` on synthetic archives on real local storage: the structure (catalog,
manifests, sizes, WAL continuity along timeline paths, restorability) on
synthetic_archive.py's archives (1 GiB segments, 4 per folder, fake segment bytes), and
--deep on small archives whose every object is real (1 MiB segments with real page
headers, backup parts in the stored-object format)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from pitrkit.catalog import blockmap, documents, maintenance
from pitrkit.catalog.blockmap import SuperBlock, read_block_map
from pitrkit.catalog.documents import (
    BLOCK_SIZE,
    BackupDirectory,
    BackupFile,
    BackupManifest,
    BackupPart,
    BackupSummary,
    BlockPart,
    RetentionState,
)
from pitrkit.cli import main
from pitrkit.config import Config, EncryptionConfig, RepositoryConfig
from pitrkit.hookspecs import Compressor
from pitrkit.ops import verify
from pitrkit.ops.verify import Finding, VerifyReport
from pitrkit.postgres.wal import Lsn, SegmentName
from pitrkit.storage import codec, keys, objects
from pitrkit.storage.archive import (
    BACKUP_CATALOG_KEY,
    IDENTITY_KEY,
    RETENTION_STATE_KEY,
    Archive,
    backup_prefix,
    manifest_key,
)
from pitrkit.storage.identity import ArchiveIdentity
from pitrkit.storage.plugins import Plugins
from pitrkit.storage.plugins.compression import NoCompression, Zstd
from pitrkit.views.text import render
from tests.unit import synthetic_archive
from tests.unit.chain_archive import ChainBuilder, Tamper, pages
from tests.unit.segments import MIB, SEG_16MIB, SYSID, init_archive, segment
from tests.unit.synthetic_archive import T0, SyntheticArchive, lsn, name, stored_at

# Parts are cut this small so that a backup has several.
PART = 64


def store_backup(archive: Archive, backup_id: str, *, first: SegmentName, last: SegmentName, system_identifier: int,
                 files: list[bytes], start_time=T0, catalog_it: bool = True) -> BackupManifest:
    """A finished backup whose files hold `files`: real parts (the stream cut every PART
    bytes, zstd, the stored-object format) and a manifest that adds up."""
    stream = b"".join(files)
    compressor = Plugins().compressor("zstd")
    parts = []
    for number, offset in enumerate(range(0, len(stream), PART)):
        data = stream[offset : offset + PART]
        blob, header = objects.encode(data, compressor)
        key = f"{backup_prefix(backup_id)}data/{number}"
        archive.put(key, blob)
        parts.append(BackupPart(key=key, size=len(data), stored_size=len(blob), sha256=header.sha256.hex()))
    listed, offset = [], 0
    for number, content in enumerate(files):
        listed.append(BackupFile(f"base/{number}", len(content), 0o600, 0, offset // PART, offset % PART))
        offset += len(content)
    manifest = BackupManifest(
        backup_id=backup_id, label=backup_id, system_identifier=system_identifier, pg_version=150014,
        timeline=first.timeline, start_lsn=Lsn(first.start_lsn + 0x28), start_time=start_time,
        stop_lsn=Lsn(last.start_lsn + 0x100), stop_time=start_time + timedelta(seconds=30),
        first_segment=first.name, last_segment=last.name, size=len(stream),
        stored_size=sum(part.stored_size for part in parts), file_count=len(files), compression="zstd",
        pitrkit_version="0.1.0", backup_label="START WAL LOCATION: ...", parts=parts,
        directories=[BackupDirectory("", 0o700), BackupDirectory("base", 0o700)], files=listed,
    )
    archive.put(manifest_key(backup_id), codec.encode(manifest, pretty=False))
    if catalog_it:
        maintenance.record_backup(archive, codec.decode(codec.encode(manifest), BackupSummary, "summary"))
    return manifest


def synthetic_backup(store: SyntheticArchive, backup_id: str, timeline: int, start: int, stop: int,
                     **options) -> BackupManifest:
    return store_backup(store.archive, backup_id, first=SegmentName(timeline, start, synthetic_archive.SEGMENT_SIZE),
                        last=SegmentName(timeline, stop, synthetic_archive.SEGMENT_SIZE), system_identifier=1,
                        files=[b"a" * 100, b"b" * 50], start_time=stored_at(start), **options)


def check(archive: Archive, deep: bool = False) -> VerifyReport:
    return verify.verify(archive, deep, workers=2)


def problems(report: VerifyReport) -> list[tuple[str, str]]:
    return [(finding.severity, finding.key) for finding in report.findings]


def finding(report: VerifyReport, key: str) -> Finding:
    found = [each for each in report.findings if each.key == key]
    assert len(found) == 1, report.findings
    return found[0]


def wal_key(timeline: int, segno: int) -> str:
    segment_name = name(timeline, segno)
    return f"wal/{segment_name[:16]}/{segment_name}"


@pytest.fixture
def store(tmp_path) -> SyntheticArchive:
    synthetic = SyntheticArchive(tmp_path / "archive")
    synthetic.segments(1, 1, 20)
    synthetic_backup(synthetic, "A", 1, 2, 3)
    synthetic_backup(synthetic, "B", 1, 10, 11)
    return synthetic


# --- a clean archive ------------------------------------------------------------------


def test_a_whole_archive_is_clean_and_says_what_it_checked(store):
    report = check(store.archive)
    assert report.findings == [] and report.errors == report.warnings == 0
    assert [(b.backup_id, b.restorable) for b in report.backups] == [("A", True), ("B", True)]
    [timeline] = report.timelines
    assert (timeline.checked_from, timeline.checked_to, timeline.gaps) == (name(1, 2), name(1, 20), [])
    assert report.wal_files == 20


def test_the_cli_exits_0_when_clean_and_prints_the_summary(store, tmp_path, capsys):
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{store.root}"\nretries = 0\n')
    assert main(["--config", str(config), "verify"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "verify:    clean"
    assert main(["--config", str(config), "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["findings"] == []


# --- WAL ------------------------------------------------------------------------------


def test_a_deleted_segment_is_a_gap_naming_where_wal_resumes_and_the_backup_it_breaks(store):
    store.drop_segment(1, 11)  # B needs 10..11
    store.drop_segment(1, 12)
    store.drop_segment(1, 16)
    report = check(store.archive)
    gap = finding(report, wal_key(1, 11))
    assert gap.severity == "error"
    assert f"({name(1, 11)} to {name(1, 12)})" in gap.problem and f"resumes at {name(1, 13)}" in gap.problem
    assert f"resumes at {name(1, 17)}" in finding(report, wal_key(1, 16)).problem
    broken = finding(report, manifest_key("B"))
    assert "backup B is not restorable" in broken.problem and name(1, 11) in broken.problem
    # A is older than the gap: restorable to its stop point (not to later points, which
    # the gap finding says).
    assert [(b.backup_id, b.restorable) for b in report.backups] == [("A", True), ("B", False)]
    assert report.timelines[0].gaps == [name(1, 11), name(1, 16)]


def test_the_cli_prints_every_finding_then_exits_1_with_one_line(store, tmp_path, capsys):
    store.drop_segment(1, 11)
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{store.root}"\nretries = 0\n')
    assert main(["--config", str(config), "verify"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"ERROR   {manifest_key('B')}: backup B is not restorable")
    # The folder's index (written when B was recorded) names the lost segment too.
    assert lines[1].startswith("ERROR   catalog/wal/0000000100000002.json: lists 1 file(s)")
    assert lines[2].startswith(f"ERROR   {wal_key(1, 11)}: missing")
    assert lines[3] == ""
    assert lines[-1] == "verify:    3 errors, 0 warnings"
    [error] = captured.err.strip().splitlines()
    assert error.startswith("pitrkit: verified ") and "3 errors" in error and "Traceback" not in captured.err


def test_wal_is_checked_from_the_oldest_backup_on_each_path_across_a_branch(store):
    # Timeline 2 branches off in segment 14: its path reads timeline 1 up to 13, then 2.
    store.history(2, [(1, lsn(14, 0x500))], at=stored_at(14))
    store.segments(2, 14, 18)
    store.drop_segment(1, 5)  # before the branch: on both paths, reported once
    store.drop_segment(2, 16)  # only on timeline 2's path
    store.drop_segment(1, 17)  # after the branch: only on timeline 1's path
    report = check(store.archive)
    # Each gap once, though 5 lies on both paths; A and B end before the gaps they precede.
    # The indexes of timeline 1's sealed folders name its lost segments too.
    assert problems(report) == [
        ("error", "catalog/wal/0000000100000001.json"), ("error", "catalog/wal/0000000100000004.json"),
        ("error", wal_key(1, 5)), ("error", wal_key(1, 17)), ("error", wal_key(2, 16))]
    assert all(b.restorable for b in report.backups)
    gaps = {t.timeline: t.gaps for t in report.timelines}
    assert gaps == {1: [name(1, 5), name(1, 17)], 2: [name(1, 5), name(2, 16)]}
    assert "resumes at " + name(2, 17) in finding(report, wal_key(2, 16)).problem
    assert {t.timeline: t.path for t in report.timelines} == {1: [1], 2: [1, 2]}


def test_a_missing_history_file_makes_its_timeline_unreachable(store):
    store.segments(2, 14, 15)
    report = check(store.archive)
    assert "timeline 2 is unreachable" in finding(report, "wal/00000002.history").problem


def test_a_folder_index_is_checked_against_the_folder(store):
    maintenance.refresh(store.archive)  # indexes the sealed folders: 0 (segments 1..3), 1 (4..7), ...
    assert check(store.archive).findings == []
    store.drop_segment(1, 5)
    (store.root / wal_key(1, 6)).write_bytes(b"short")
    store.segments(1, 0, 0)  # stored after its folder was indexed
    report = check(store.archive)
    gone = finding(report, "catalog/wal/0000000100000001.json")
    assert gone.severity == "error" and f"no longer has: {name(1, 5)}" in gone.problem
    assert "resumes at" in finding(report, wal_key(1, 5)).problem  # and the gap it makes
    truncated = finding(report, wal_key(1, 6))
    assert truncated.severity == "error" and "stored size 5 bytes" in truncated.problem
    stale = finding(report, "catalog/wal/0000000100000000.json")
    assert stale.severity == "warning" and name(1, 0) in stale.problem and "catalog rebuild" in stale.problem


# --- backups and the catalog ----------------------------------------------------------


def test_a_stale_catalog_is_a_warning_and_catalog_rebuild_fixes_it(store):
    synthetic_backup(store, "C", 1, 14, 15, catalog_it=False)
    (store.root / manifest_key("A")).unlink()  # folder with parts, no manifest: unfinished
    report = check(store.archive)
    assert problems(report) == [("warning", BACKUP_CATALOG_KEY), ("warning", BACKUP_CATALOG_KEY)]
    assert "lists backup A, whose manifest" in report.findings[0].problem
    assert "does not list backup C" in report.findings[1].problem
    assert report.unfinished == ["A"] and report.errors == 0
    maintenance.rebuild(store.archive)
    assert check(store.archive).findings == []


def test_a_missing_or_truncated_part_breaks_its_backup(store):
    manifest = store.archive.get(manifest_key("B"))
    parts = codec.decode(manifest, BackupManifest, "m").parts
    (store.root / parts[0].key).unlink()
    (store.root / parts[2].key).write_bytes((store.root / parts[2].key).read_bytes()[:-3])
    report = check(store.archive)
    assert finding(report, parts[0].key).problem == "missing: part of backup B"
    assert f"says {parts[2].stored_size}" in finding(report, parts[2].key).problem
    assert "2 of its 3 parts are missing or damaged" in finding(report, manifest_key("B")).problem
    assert [(b.backup_id, b.restorable) for b in report.backups] == [("A", True), ("B", False)]


@pytest.mark.parametrize(("damage", "says"), [
    (lambda m: b"{not json", "unusable manifest"),
    (lambda m: codec.encode(msgspec.structs.replace(m, backup_id="X")), "names backup 'X'"),
    (lambda m: codec.encode(msgspec.structs.replace(m, system_identifier=2)), "not of this archive's system 1"),
    (lambda m: codec.encode(msgspec.structs.replace(m, size=m.size + 1)), "but lists"),
    (lambda m: codec.encode(msgspec.structs.replace(
        m, parts=[msgspec.structs.replace(m.parts[0], key="archive.json"), *m.parts[1:]])),
     "not an object of that backup"),
    (lambda m: codec.encode(msgspec.structs.replace(
        m, files=[msgspec.structs.replace(m.files[0], path="nowhere/f"), *m.files[1:]])), "whose directory 'nowhere'"),
    (lambda m: codec.encode(m).replace(b'"base/0"', b'"../../etc/cron.d/x"'), "not a plain relative path"),
])
def test_a_manifest_that_is_not_this_backups_is_an_error(store, damage, says):
    path = store.root / manifest_key("B")
    path.write_bytes(damage(codec.decode(path.read_bytes(), BackupManifest, "m")))
    report = check(store.archive)
    assert says in finding(report, manifest_key("B")).problem
    assert [(b.backup_id, b.restorable) for b in report.backups] == [("A", True), ("B", False)]


def test_backups_retention_is_removing_are_not_checked(store):
    (store.root / manifest_key("B")).unlink()  # retention removes the manifest first
    store.archive.put(RETENTION_STATE_KEY, codec.encode(RetentionState(deleting=["B"])))
    report = check(store.archive)
    assert report.findings == [] and report.being_removed == ["B"]
    assert [b.backup_id for b in report.backups] == ["A"]


def test_an_archive_without_a_backup_restores_nothing(tmp_path):
    bare = SyntheticArchive(tmp_path / "archive")
    bare.segments(1, 1, 3)
    assert problems(check(bare.archive)) == [("warning", "backups/")]


def test_a_new_archive_is_clean(tmp_path):
    (tmp_path / "new").mkdir()
    archive = Archive(Config(repository=RepositoryConfig(url=f"file://{tmp_path / 'new'}", retries=0)))
    init_archive(archive)
    report = check(archive)
    assert report.findings == [] and report.backups == [] and report.wal_files == 0


def test_an_empty_directory_is_no_archive(tmp_path):
    """An unmounted mount point is not a clean, empty archive."""
    (tmp_path / "mnt").mkdir()
    report = check(Archive(Config(repository=RepositoryConfig(url=f"file://{tmp_path / 'mnt'}", retries=0))))
    assert "pitrkit init" in finding(report, IDENTITY_KEY).problem
    assert finding(report, IDENTITY_KEY).severity == "error"


def test_backups_without_archive_json_are_an_error(store):
    (store.root / IDENTITY_KEY).unlink()
    report = check(Archive(store.archive.config))  # one that has not read it yet
    assert finding(report, IDENTITY_KEY).severity == "error"
    assert all(not b.restorable for b in report.backups)


# --- --deep -----------------------------------------------------------------------------


class SmallArchive:
    """Every object real: 1 MiB segments (4096 to a folder) with real long page headers."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.root = root
        self.archive = Archive(Config(repository=RepositoryConfig(url=f"file://{root}", retries=0)))
        self.archive.put(IDENTITY_KEY, codec.encode(ArchiveIdentity(
            system_identifier=SYSID, wal_segment_size=MIB, pg_versions=[15], created_at=T0)))

    def key(self, segno: int) -> str:
        segment_name = SegmentName(1, segno, MIB).name
        return f"wal/{segment_name[:16]}/{segment_name}"

    def put_segment(self, segno: int, data: bytes | None = None) -> None:
        data = segment(segno, seg_size=MIB) if data is None else data
        blob, _ = objects.encode(data, Plugins().compressor("zstd"))
        self.archive.put(self.key(segno), blob, overwrite=True)

    def backup(self, backup_id: str, first: int, last: int) -> BackupManifest:
        return store_backup(self.archive, backup_id, first=SegmentName(1, first, MIB),
                            last=SegmentName(1, last, MIB), system_identifier=SYSID,
                            # Parts 0 and 1 differ, with the same stored size.
                            files=[b"x" * PART, b"y" * PART, b"tail"])


@pytest.fixture
def small(tmp_path) -> SmallArchive:
    archive = SmallArchive(tmp_path / "small")
    for segno in range(1, 6):
        archive.put_segment(segno)
    archive.backup("A", 2, 3)
    return archive


def test_deep_reads_every_object_of_a_clean_archive(small):
    report = check(small.archive, deep=True)
    assert report.findings == []
    manifest = codec.decode(small.archive.get(manifest_key("A")), BackupManifest, "m")
    assert report.objects_read == 5 + len(manifest.parts)
    assert report.bytes_read == sum(p.stat().st_size for p in small.root.glob("wal/*/*")) + manifest.stored_size


def test_deep_finds_a_part_whose_bytes_were_flipped(small):
    manifest = codec.decode(small.archive.get(manifest_key("A")), BackupManifest, "m")
    path = small.root / manifest.parts[1].key
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF  # inside the compressed body: same size
    path.write_bytes(bytes(blob))
    assert check(small.archive).findings == []  # sizes agree: only reading tells
    report = check(small.archive, deep=True)
    assert finding(report, manifest.parts[1].key).problem.startswith("corrupt: ")
    assert "backup A is not restorable" in finding(report, manifest_key("A")).problem
    assert report.backups[0].restorable is False


def test_deep_finds_a_part_swapped_for_another(small):
    manifest = codec.decode(small.archive.get(manifest_key("A")), BackupManifest, "m")
    first, second = (small.root / part.key for part in manifest.parts[:2])
    first.write_bytes(second.read_bytes())  # a valid object, the wrong one (same size)
    assert check(small.archive).findings == []
    report = check(small.archive, deep=True)
    assert "not the part the manifest of backup A lists" in finding(report, manifest.parts[0].key).problem


def test_deep_checks_segment_page_headers(small):
    small.put_segment(4, segment(5, seg_size=MIB))  # segment 5's content under 4's name
    small.put_segment(5, segment(5, seg_size=MIB, sysid=SYSID + 1))
    assert check(small.archive).findings == []
    report = check(small.archive, deep=True)
    assert "page address" in finding(report, small.key(4)).problem
    assert f"WAL of system {SYSID + 1}" in finding(report, small.key(5)).problem
    # A's stop point (segment 3) precedes both: A stays restorable.
    assert report.backups[0].restorable


def test_deep_names_a_truncated_segment(small):
    path = small.root / small.key(3)
    path.write_bytes(path.read_bytes()[:-5])
    report = check(small.archive, deep=True)
    assert finding(report, small.key(3)).problem.startswith("corrupt: ")
    assert finding(report, manifest_key("A")).problem == \
        f"backup A is not restorable: WAL it needs is damaged: {SegmentName(1, 3, MIB).name}"



# --- chains of incrementals -------------------------------------------------------------


@pytest.fixture
def chain(tmp_path) -> SyntheticArchive:
    """Timeline 1, segments 1..20: full F (2-3), incrementals I1 on F (6-7), I2 on I1
    (10-11), in the catalog."""
    synthetic = SyntheticArchive(tmp_path / "archive")
    synthetic.segments(1, 1, 20)
    synthetic.backup("F", 1, 2, 3)
    synthetic.backup("I1", 1, 6, 7, parent="F")
    synthetic.backup("I2", 1, 10, 11, parent="I1")
    synthetic.rebuild_catalog()
    return synthetic


def refusals(report: VerifyReport) -> dict[str, str]:
    return {finding.key: finding.problem for finding in report.findings}


def test_a_whole_chain_is_clean(chain):
    report = check(chain.archive)
    assert report.findings == [] and report.notes == []
    assert [(b.backup_id, b.restorable) for b in report.backups] == [("F", True), ("I1", True), ("I2", True)]


def test_a_missing_ancestor_fails_its_descendants_naming_it(chain):
    shutil.rmtree(chain.root / "backups/F")
    report = check(chain.archive)
    assert [(b.backup_id, b.restorable) for b in report.backups] == [("I1", False), ("I2", False)]
    said = refusals(report)
    assert said[manifest_key("I1")] == "backup I1 is not restorable: its chain is broken: its ancestor F is not in " \
                                       "the archive"
    assert said[manifest_key("I2")] == "backup I2 is not restorable: its chain is broken: its ancestor F is not in " \
                                       "the archive"


def test_an_ancestor_retention_is_removing_breaks_the_chain(chain):
    chain.being_removed(["I1"], decided_at=stored_at(20))
    report = check(chain.archive)
    assert [(b.backup_id, b.restorable) for b in report.backups] == [("F", True), ("I2", False)]
    assert "its ancestor I1 is not in the archive" in refusals(report)[manifest_key("I2")]


@pytest.mark.parametrize(("forged", "says"), [
    # The chain I2 records is not its parent's chain and its parent.
    ({"chain": ["G", "I1"]}, "its chain G > I1 is not its parent's chain and its parent"),
    # Its parent is of another major: an upgrade's first backup is full.
    ({"pg_version": 160004}, "its parent I1 is of system 1, PostgreSQL 15, not of system 1, PostgreSQL 16"),
    ({"system_identifier": 2}, "a backup of system 2, not of this archive's system 1"),
])
def test_a_link_that_does_not_hold_fails(tmp_path, forged, says):
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 20)
    store.backup("F", 1, 2, 3)
    store.backup("G", 1, 4, 5)
    store.backup("I1", 1, 6, 7, parent="F")
    store.backup("I2", 1, 10, 11, parent="I1", **forged)
    store.rebuild_catalog()
    report = check(store.archive)
    assert [(b.backup_id, b.restorable) for b in report.backups] == [
        ("F", True), ("G", True), ("I1", True), ("I2", False)]
    assert says in refusals(report)[manifest_key("I2")]


def test_a_parent_that_started_after_its_child_fails(tmp_path):
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 20)
    store.backup("F", 1, 6, 7)
    store.backup("I1", 1, 2, 3, parent="F")  # an id after F's, a start before it
    store.rebuild_catalog()
    report = check(store.archive)
    assert "its parent F started at " in refusals(report)[manifest_key("I1")]
    assert "not before it" in refusals(report)[manifest_key("I1")]


def test_an_incremental_s_block_objects_are_checked_like_parts(chain):
    (chain.root / "backups/I1/blocks/0").unlink()
    with open(chain.root / "backups/I1/blockmap/0", "ab") as grown:
        grown.write(b"!")
    report = check(chain.archive)
    said = refusals(report)
    assert said["backups/I1/blocks/0"] == "missing: block part of backup I1"
    assert said["backups/I1/blockmap/0"].startswith("stored size ")
    assert said[manifest_key("I1")] == ("backup I1 is not restorable: 2 of its 3 objects are missing or damaged "
                                        "(backups/I1/blockmap/0 ...)")
    assert said[manifest_key("I2")] == "backup I2 is not restorable: its ancestor I1 is not restorable"
    assert [(b.backup_id, b.restorable) for b in report.backups] == [("F", True), ("I1", False), ("I2", False)]


def rewrite_manifest(store: SyntheticArchive, backup_id: str, **changes) -> None:
    manifest = codec.decode(store.archive.get(manifest_key(backup_id)), BackupManifest, "manifest")
    store.archive.put(manifest_key(backup_id), codec.encode(msgspec.structs.replace(manifest, **changes)),
                      overwrite=True)


@pytest.mark.parametrize(("changes", "says"), [
    ({"size": 1000}, "says 2 files and 1000 bytes, but lists 2 files of 17384 bytes"),
    ({"stored_size": 1}, "does not add up: its objects' stored sizes add up to "),
    ({"file_count": 1}, "says 1 files and 17384 bytes, but lists 2 files of 17384 bytes"),
    ({"block_parts": []}, "does not add up: its objects' stored sizes add up to "),
])
def test_an_incremental_manifest_must_add_up_with_its_block_files(chain, changes, says):
    """Its counts take the block-mapped files in (restore's check_manifest), its stored
    size every object of its own."""
    rewrite_manifest(chain, "I1", **changes)
    chain.rebuild_catalog()
    assert says in refusals(check(chain.archive))[manifest_key("I1")]


def test_deep_reads_the_synthetic_incrementals_blocks(chain):
    report = check(chain.archive, deep=True)
    # synthetic_archive.py's WAL is fake bytes (each backup is refused for it); its
    # parts, block maps (with their block checksums) and block parts are real stored
    # objects: each read once and found sound, each incremental's super-block checked.
    assert report.objects_read == 20 + 3 + 2 + 2  # segments, parts, block maps, block parts
    assert report.super_blocks == 2
    assert [f for f in report.findings if "/block" in f.key] == []
    assert report.notes == []


# --- --deep on real chains --------------------------------------------------------------
#
# chain_archive.py's chains are real to the byte (stream parts, super-blocks in block
# parts, block maps), with WAL segment 2, where each backup starts and stops, as a real
# stored object.


class ReadCounting(Archive):
    """The real archive, counting whole-object reads by key: measuring, not mocking."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.reads: Counter[str] = Counter()

    def get(self, key: str) -> bytes:
        self.reads[key] += 1
        return super().get(key)


def real_chain(root: Path, encryption: EncryptionConfig | None = None, compressor: Compressor | None = None,
               forge: Tamper | None = None, super_block_digest: str | None = None) -> ChainBuilder:
    """A full F and incrementals I1 on F and I2 on I1 (its map of base/5/100 given to
    `forge`), of block-mapped files spanning several super-blocks and block parts."""
    builder = ChainBuilder(root, encryption, compressor, super_block_digest)
    state = {"PG_VERSION": b"15\n", "base/5/100": pages("100-F", 20), "base/5/200": pages("200-F", 4),
             "base/5/300": pages("300-F", 9)}
    builder.backup(state)
    state |= {"base/5/100": pages("100-F", 1) + pages("100-I1", 2) + pages("100-F", 20)[3 * BLOCK_SIZE:],
              "base/5/200": pages("200-I1", 12)}
    builder.backup(state, {"base/5/100": {1, 2}, "base/5/200": set(range(12)), "base/5/300": {0, 4}})
    state |= {"base/5/200": pages("200-I1", 12) + pages("200-I2", 10), "base/5/300": pages("300-I2", 9)}
    builder.backup(state, {"base/5/100": set(), "base/5/200": set(), "base/5/300": {0, 8}},
                   tamper=None if forge is None else lambda path, sources, positions:
                   forge(path, sources, positions) if path == "base/5/100" else None)
    builder.put(f"wal/0000000100000000/{SegmentName(1, 2, SEG_16MIB).name}", segment(2))
    maintenance.rebuild(builder.archive)
    return builder


def deep_check(builder: ChainBuilder) -> tuple[VerifyReport, ReadCounting]:
    archive = ReadCounting(builder.archive.config)
    return check(archive, deep=True), archive


def own_super_blocks(builder: ChainBuilder) -> list[SuperBlock]:
    return [block for maps in builder.maps for file_map in maps.values() for block in file_map.iter_super_blocks()]


def block_part_path(builder: ChainBuilder, backup: int, block: SuperBlock) -> Path:
    return builder.root / builder.manifests[backup].block_parts[block.part].key


def restate_block_part(builder: ChainBuilder, backup: int, part: int) -> None:
    """Record a block part's stored size as it now is (manifest, catalog): damage that
    the listing's sizes cannot show, only reading."""
    manifest = builder.manifests[backup]
    key = manifest.block_parts[part].key
    size = (builder.root / key).stat().st_size
    block_parts = [BlockPart(key=each.key, stored_size=size if each.key == key else each.stored_size)
                   for each in manifest.block_parts]
    manifest = msgspec.structs.replace(manifest, block_parts=block_parts, stored_size=manifest.stored_size + size
                                       - manifest.block_parts[part].stored_size)
    builder.archive.put_document(manifest_key(manifest.backup_id), manifest, overwrite=True)
    maintenance.rebuild(builder.archive)


def test_deep_reads_every_block_of_a_sound_chain_once(tmp_path):
    builder = real_chain(tmp_path / "archive")
    report, archive = deep_check(builder)
    assert report.findings == [] and report.notes == []
    assert [b.restorable for b in report.backups] == [True, True, True]
    manifests = builder.manifests
    objects_of = [key for m in manifests for key in [*(p.key for p in m.parts), *(p.key for p in m.block_maps),
                                                     *(p.key for p in m.block_parts)]]
    assert len(manifests[1].block_parts) > 1 and len(manifests[1].block_maps) > 1
    assert report.objects_read == 1 + len(objects_of)  # the segment, every object of every backup
    assert report.bytes_read == sum(m.stored_size for m in manifests) + sum(
        path.stat().st_size for path in (builder.root / "wal").glob("*/*"))
    assert report.super_blocks == len(own_super_blocks(builder)) > 2 * len(manifests[1].block_parts)
    # Every block part read once, whole; the maps again by restore's planning of each
    # chain, which reads no block part.
    assert all(archive.reads[p.key] == 1 for m in manifests for p in m.block_parts)
    assert "super-blocks checked" in render(report)


@pytest.mark.parametrize("digest", [objects.XXH3_128, objects.SHA256])  # as backup-push stores them, as it did
def test_deep_finds_a_valid_super_block_put_in_anothers_place(tmp_path, digest):
    # Uncompressed: a super-block of other pages has exactly the same length.
    builder = real_chain(tmp_path / "archive", compressor=NoCompression(), super_block_digest=digest)
    block = next(block for block in builder.maps[1]["base/5/200"].iter_super_blocks() if block.pages == 8)
    blob, header = objects.encode(pages("impostor", 8), NoCompression(), digest=digest)
    path = block_part_path(builder, 1, block)
    data = bytearray(path.read_bytes())
    data[block.offset:block.offset + block.length] = blob
    path.write_bytes(bytes(data))
    assert check(builder.archive).findings == []  # sizes agree: only reading tells
    report, _ = deep_check(builder)
    key = builder.manifests[1].block_parts[block.part].key
    I1, I2 = (m.backup_id for m in builder.manifests[1:])
    impostor = header.digest.split(":")[1]
    assert finding(report, key).problem.startswith(
        f"the super-block at offset {block.offset} (8 pages of base/5/200 in backup {I1}'s block maps) is not the one "
        f"the block map records ({8 * BLOCK_SIZE} bytes, {digest} {impostor[:16]}...")
    listed = builder.manifests[1]
    assert refusals(report)[manifest_key(I1)] == \
        f"backup {I1} is not restorable: 1 of its {len(listed.parts) + 2 + len(listed.block_parts)} objects are " \
        f"missing or damaged ({key} ...)"
    assert refusals(report)[manifest_key(I2)] == f"backup {I2} is not restorable: its ancestor {I1} is not restorable"
    assert [b.restorable for b in report.backups] == [True, False, False]


def test_deep_finds_a_block_part_cut_short(tmp_path):
    builder = real_chain(tmp_path / "archive")
    part = builder.manifests[2].block_parts[-1]
    path = builder.root / part.key
    path.write_bytes(path.read_bytes()[:-10])
    # The listing shows it, without reading; --deep does not read it again.
    assert check(builder.archive).findings[0].problem.startswith("stored size ")
    report, archive = deep_check(builder)
    assert archive.reads[part.key] == 0
    # Cut short before its manifest was written: the manifest's sizes agree, the maps not.
    restate_block_part(builder, 2, len(builder.manifests[2].block_parts) - 1)
    assert check(builder.archive).findings == []
    report, _ = deep_check(builder)
    last = max((block for block in builder.maps[2]["base/5/300"].iter_super_blocks()
                if block.part == len(builder.manifests[2].block_parts) - 1), key=lambda block: block.offset)
    assert f"the super-block at offset {last.offset} ({last.pages} pages of base/5/300 in backup " \
           f"{builder.manifests[2].backup_id}'s block maps) runs past the end of the object, at " \
           f"{part.stored_size - 10} bytes" == finding(report, part.key).problem
    assert [b.restorable for b in report.backups] == [True, True, False]


def test_deep_warns_of_bytes_no_super_block_covers(tmp_path):
    builder = real_chain(tmp_path / "archive")
    part = builder.manifests[1].block_parts[0]
    with open(builder.root / part.key, "ab") as grown:
        grown.write(b"garbage")
    restate_block_part(builder, 1, 0)
    assert check(builder.archive).findings == []
    report, _ = deep_check(builder)
    assert report.errors == 0 and report.exit_code == 1
    assert finding(report, part.key) == Finding(
        severity="warning", key=part.key,
        problem=f"7 of its {part.stored_size + 7} bytes lie in no super-block of backup "
                f"{builder.manifests[1].backup_id}'s block maps (from offset {part.stored_size}): nothing reads them")
    assert [b.restorable for b in report.backups] == [True, True, True]


def rewrite_super_blocks(builder: ChainBuilder, backup: int, path: str,
                         change: Callable[[list[SuperBlock]], None]) -> list[SuperBlock]:
    """Rewrite backup `backup`'s map of `path` with `change`d super-block records, its map
    object recorded anew in the manifest (and the catalog): every object adds up and
    the maps decode; only reading the block parts against them tells. Returns the
    records as they were."""
    manifest = builder.manifests[backup]
    number = next(file for file in manifest.block_files if file.path == path).block_map
    maps = read_block_map(builder.archive, manifest.block_maps[number])
    blocks = list(next(each for each in maps if each.path == path).iter_super_blocks())
    changed = list(blocks)
    change(changed)
    maps = [msgspec.structs.replace(each, super_blocks=blockmap.pack_super_blocks(changed))
            if each.path == path else each for each in maps]
    key = manifest.block_maps[number].key
    blob, header = objects.encode(blockmap.encode_block_map(blockmap.BlockMapDocument(files=maps)), Zstd(3, 1))
    builder.archive.put(key, blob, overwrite=True)
    block_maps = [BackupPart(key=key, size=header.size, stored_size=len(blob), sha256=header.sha256.hex())
                  if part.key == key else part for part in manifest.block_maps]
    builder.archive.put_document(manifest_key(manifest.backup_id), msgspec.structs.replace(
        manifest, block_maps=block_maps, stored_size=manifest.stored_size + len(blob)
        - manifest.block_maps[number].stored_size), overwrite=True)
    maintenance.rebuild(builder.archive)
    assert check(builder.archive).findings == []
    return blocks


def test_deep_finds_super_blocks_overlapping(tmp_path):
    builder = real_chain(tmp_path / "archive")

    def overlap(blocks: list[SuperBlock]) -> None:
        blocks[1] = blocks[1]._replace(offset=blocks[0].offset + 1)  # inside its predecessor

    blocks = rewrite_super_blocks(builder, 1, "base/5/200", overlap)
    manifest = builder.manifests[1]
    report, _ = deep_check(builder)
    part_key = manifest.block_parts[blocks[0].part].key
    said = [each for each in report.findings if each.key == part_key]
    where = f"pages of base/5/200 in backup {manifest.backup_id}'s block maps)"
    assert [each.severity for each in said] == ["error", "warning"]
    assert said[0].problem == f"the super-block at offset {blocks[0].offset + 1} ({blocks[1].pages} {where} " \
                              f"overlaps the super-block at offset {blocks[0].offset} ({blocks[0].pages} {where}"
    # Some bytes of the super-block that moved lie in none now.
    assert "lie in no super-block of backup" in said[1].problem
    assert [b.restorable for b in report.backups] == [True, False, False]


def test_deep_finds_a_map_naming_a_block_part_its_backup_lacks(tmp_path):
    builder = real_chain(tmp_path / "archive")

    def elsewhere(blocks: list[SuperBlock]) -> None:
        blocks[0] = blocks[0]._replace(part=7)

    blocks = rewrite_super_blocks(builder, 1, "base/5/200", elsewhere)
    manifest = builder.manifests[1]
    report, _ = deep_check(builder)
    map_key = manifest.block_maps[next(f for f in manifest.block_files if f.path == "base/5/200").block_map].key
    assert finding(report, map_key).problem == \
        f"its map of base/5/200 puts the super-block of positions 0 to {blocks[0].pages - 1} in block part 7; " \
        f"backup {manifest.backup_id} has {len(manifest.block_parts)}"
    assert [b.restorable for b in report.backups] == [True, False, False]


def test_deep_plans_each_chain_and_names_a_run_past_what_its_source_stored(tmp_path):
    def forge(path: str, sources: list[int], positions: list[int]) -> None:
        assert sources[1] == 1  # block 1 of base/5/100 is I1's
        positions[1] = 400

    builder = real_chain(tmp_path / "archive", forge=forge)
    assert check(builder.archive).findings == []  # the map decodes and its own runs hold
    report, _ = deep_check(builder)
    I1, I2 = (m.backup_id for m in builder.manifests[1:])
    assert refusals(report) == {manifest_key(I2): f"backup {I2} is not restorable: its chain does not resolve: a block "
                                                  f"map takes blocks 400 to 400 of base/5/100 from backup {I1}, which "
                                                  "stored 2 of it"}
    assert [b.restorable for b in report.backups] == [True, True, False]


def test_deep_reads_an_encrypted_chain(tmp_path):
    key = tmp_path / "archive.key"
    keys.generate_key_file(key)
    builder = real_chain(tmp_path / "archive", EncryptionConfig(mode="key", key_file=str(key)))
    report, _ = deep_check(builder)
    assert report.findings == []
    assert report.super_blocks == len(own_super_blocks(builder))
    # A byte flipped inside a super-block's ciphertext: same size, fails authentication.
    first, second = builder.maps[2]["base/5/200"].iter_super_blocks()
    assert first.part == second.part
    path = block_part_path(builder, 2, first)
    data = bytearray(path.read_bytes())
    data[first.offset + first.length - 3] ^= 0xFF
    path.write_bytes(bytes(data))
    report, _ = deep_check(builder)
    key = builder.manifests[2].block_parts[first.part].key
    damaged = f"the super-block at offset {first.offset} ({first.pages} pages of base/5/200 in backup " \
              f"{builder.manifests[2].backup_id}'s block maps) is corrupt: decryption failed"
    assert finding(report, key).problem.startswith(damaged)
    # Two bad ones in a block part: one finding, counting them, naming the first.
    data[second.offset + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    report, _ = deep_check(builder)
    records = sum(block.part == first.part for file_map in builder.maps[2].values()
                  for block in file_map.iter_super_blocks())
    assert finding(report, key).problem.startswith(f"2 of its {records} super-blocks are bad; the first: {damaged}")


# --- restore drills' reports ----------------------------------------------------------------


def test_drill_reports_that_do_not_decode_or_name_another_key_are_warnings(store):
    at = stored_at(20)
    good = documents.DrillReport(drill_id="20261123T122000000Z-0123abcd", host="h", pitrkit_version="t",
                                 started_at=at, finished_at=at, result="passed", target_kind="latest")
    store.archive.put_document(f"drills/{good.drill_id}.json", good)
    store.archive.put("drills/20261123T122100000Z-0123abcd.json", codec.encode(good))  # another drill's
    store.archive.put("drills/20261123T122200000Z-0123abcd.json", b'{"drill_id": "../../x"}')
    report = check(store.archive)
    assert problems(report) == [("warning", "drills/20261123T122100000Z-0123abcd.json"),
                                ("warning", "drills/20261123T122200000Z-0123abcd.json")]
    assert "names drill" in report.findings[0].problem and "unusable drill report" in report.findings[1].problem
