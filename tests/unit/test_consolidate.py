"""`backup-consolidate` (pitrkit/ops/consolidate.py): which stored parts a synthetic full
copies object for object, the synthetic full of a real chain in a file:// archive
restoring exactly as the incremental does (plain and encrypted), its refusals, and how
retention, the daemon's full_every and the parent choice treat it beside the
incremental it was made of."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from pitrkit.backup.incremental import choose_parent
from pitrkit.catalog.backups import survey_backups
from pitrkit.catalog.documents import BLOCK_SIZE, BackupFile, BackupManifest, BackupPart, BackupSummary
from pitrkit.config import EncryptionConfig, FullEvery
from pitrkit.daemon.backup_kind import ClusterIdentity, next_backup_kind
from pitrkit.errors import RefusedError
from pitrkit.ops import consolidate as consolidate_module
from pitrkit.ops.consolidate import consolidate, reusable_runs
from pitrkit.ops.policy import RetentionPolicy, select_backups
from pitrkit.restore import unpack
from pitrkit.restore.plan import make_plan
from pitrkit.restore.targets import Target
from pitrkit.storage import codec, keys
from pitrkit.storage.archive import backup_prefix, manifest_key
from pitrkit.storage.plugins.compression import NoCompression
from tests.unit import chain_archive
from tests.unit.chain_archive import ChainBuilder, pages
from tests.unit.synthetic_archive import SyntheticArchive, lsn
from tests.unit.test_chain_restore import build, expected, restored_files
from tests.unit.test_policy import summary

# --- which parts are reused ---------------------------------------------------------------


def stream(sizes: dict[str, int], part_size: int) -> tuple[list[BackupFile], list[BackupPart]]:
    """Files of these sizes back to back, cut into parts of `part_size`."""
    files, position = [], 0
    for path, size in sizes.items():
        files.append(BackupFile(path, size, 0o600, 0, *divmod(position, part_size)))
        position += size
    parts = [BackupPart(key=f"backups/x/data/{n:08d}", size=min(part_size, position - start), stored_size=1,
                        sha256="0" * 64) for n, start in enumerate(range(0, position, part_size))]
    return files, parts


# a: bytes 0-15, b: 15-20, c: 20-30, d: 30-40; parts of 10 bytes.
ABCD = {"a": 15, "b": 5, "c": 10, "d": 10}


@pytest.mark.parametrize(("whole", "runs"), [
    ({"a", "b", "c", "d"}, [range(0, 4)]),
    ({"a", "b", "d"}, [range(0, 2), range(3, 4)]),  # c changed: its part is streamed
    ({"b", "c", "d"}, [range(2, 4)]),  # a changed: both parts holding some of it
    ({"a", "c", "d"}, [range(2, 4)]),  # b changed: part 0 alone would cut a
    (set(), []),
])
def test_runs_hold_only_whole_unchanged_files_and_cut_none(whole, runs):
    files, parts = stream(ABCD, 10)
    assert reusable_runs(files, parts, whole) == runs


def test_a_part_that_cannot_be_copied_ends_a_run():
    files, parts = stream(ABCD, 10)
    assert reusable_runs(files, parts, set(ABCD), lambda number: number != 3) == [range(0, 3)]
    # e spans parts 0 to 2: without part 0 no run starts at a file's first byte until f,
    # which begins inside part 2.
    files, parts = stream({"e": 25, "f": 15}, 10)
    assert reusable_runs(files, parts, {"e", "f"}, lambda number: number != 0) == []


def test_empty_files_are_no_obstacle():
    files, parts = stream({"a": 10, "empty": 0, "b": 10}, 10)
    assert reusable_runs(files, parts, {"a", "b"}) == [range(0, 2)]


# --- a synthetic full of a real chain ------------------------------------------------------


def consolidated(builder: ChainBuilder) -> tuple[BackupManifest, object]:
    target = builder.manifests[-1]
    made = consolidate(builder.archive, builder.archive.config, target.backup_id)
    manifest = builder.archive.get_document(manifest_key(made.backup_id), BackupManifest)
    return manifest, made


def test_the_synthetic_full_restores_as_the_incremental(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    states = build(builder)
    target = builder.manifests[-1]
    manifest, made = consolidated(builder)
    assert made.backup_id == f"{target.backup_id}-full" and manifest.consolidated_from == target.backup_id
    assert manifest.parent is None and manifest.chain == [] and not manifest.block_files
    for field in ("start_lsn", "stop_lsn", "timeline", "start_time", "stop_time", "backup_label", "directories",
                  "system_identifier", "size", "file_count"):
        assert getattr(manifest, field) == getattr(target, field), field
    # The target's own stream is copied object for object; the rest streamed here.
    assert made.parts_copied >= len(target.parts) and made.server_side_copy and made.bytes_streamed > 0
    unpack.unpack(builder.archive, manifest, tmp_path / "restored", [], 2, lambda _: None)
    assert restored_files(tmp_path / "restored") == {**expected(builder, states, -1),
                                                     "backup_label": target.backup_label.encode()}
    # It lists after the incremental (one start, a later id), and the incremental stays.
    finished = [backup.backup_id for backup in survey_backups(builder.archive).finished]
    assert finished[-2:] == [target.backup_id, made.backup_id]
    # A second consolidation of the same backup gets the next id.
    again = consolidate(builder.archive, builder.archive.config, target.backup_id)
    assert again.backup_id == f"{target.backup_id}-full2"


def test_an_id_another_run_claimed_first_is_not_taken(tmp_path, monkeypatch):
    # Two runs consolidating one incremental at once: the other's claim lands between
    # this run's look at the empty folder and its own claim.
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)
    target = builder.manifests[-1]
    real_claim = consolidate_module.claim

    def raced(archive, backup_id, token, now):
        if backup_id == f"{target.backup_id}-full":
            assert real_claim(archive, backup_id, "another run", now)
        return real_claim(archive, backup_id, token, now)

    monkeypatch.setattr(consolidate_module, "claim", raced)
    made = consolidate(builder.archive, builder.archive.config, target.backup_id)
    assert made.backup_id == f"{target.backup_id}-full2"
    assert [info.key.rsplit("/", 1)[-1] for info in builder.archive.list(backup_prefix(f"{target.backup_id}-full"))] \
        == ["claim.json"]


@pytest.mark.parametrize(("part_size", "cache"), [(3 * BLOCK_SIZE + 7, 1 << 30), (5000, 0), (BLOCK_SIZE, 20000)])
def test_parts_cut_anywhere_and_reads_fetched_again(tmp_path, monkeypatch, part_size, cache):
    # Small new parts: pages and files cut between parts, reads needed by several parts
    # kept or (no room) fetched again; the checksums are still those of whole files.
    monkeypatch.setattr(consolidate_module, "PART_SIZE", part_size)
    monkeypatch.setattr(consolidate_module, "_CACHE_BYTES", cache)
    builder = ChainBuilder(tmp_path / "archive")
    states = build(builder)
    manifest, made = consolidated(builder)
    assert len(manifest.parts) > made.bytes_streamed // part_size
    unpack.unpack(builder.archive, manifest, tmp_path / "restored", [], 2, lambda _: None)
    assert restored_files(tmp_path / "restored") == expected(builder, states, -1)


def test_cold_files_of_the_full_are_copied_part_for_part(tmp_path, monkeypatch):
    # Parts of two pages: the full's parts 1 to 3 hold only 100 and 200, whole and cold.
    monkeypatch.setattr(chain_archive, "PART_SIZE", 2 * BLOCK_SIZE)
    builder = ChainBuilder(tmp_path / "archive")
    state = {"PG_VERSION": b"15\n", "global/pg_control": bytes(2 * BLOCK_SIZE - 3), "base/5/100": pages("100", 4),
             "base/5/200": pages("200", 2), "base/5/300": pages("300", 2)}
    full = builder.backup(state)
    state["base/5/300"] = pages("300-I1", 2)
    state["global/pg_control"] = bytes([1]) * (2 * BLOCK_SIZE - 3)
    link = builder.backup(state, {"base/5/100": set(), "base/5/200": set(), "base/5/300": {0, 1}})
    manifest, made = consolidated(builder)
    sources = {part.sha256 for part in full.parts[1:4]}
    assert sources <= {part.sha256 for part in manifest.parts}
    assert made.parts_copied == 3 + len(link.parts), made
    unpack.unpack(builder.archive, manifest, tmp_path / "restored", [], 2, lambda _: None)
    assert restored_files(tmp_path / "restored") == {**state, "backup_label": link.backup_label.encode()}


def test_an_encrypted_chain_consolidates(tmp_path):
    key = tmp_path / "archive.key"
    keys.generate_key_file(key)
    builder = ChainBuilder(tmp_path / "archive", EncryptionConfig(mode="key", key_file=str(key)))
    states = build(builder)
    manifest, made = consolidated(builder)
    # Encryption binds no object to its key: the copies read as the originals do.
    assert made.parts_copied >= len(builder.manifests[-1].parts)
    unpack.unpack(builder.archive, manifest, tmp_path / "restored", [], 2, lambda _: None)
    assert restored_files(tmp_path / "restored") == expected(builder, states, -1)


def test_objects_written_otherwise_than_this_backup_writes_are_streamed(tmp_path):
    # The chain without compression, the configuration with zstd: a copy would leave
    # the new backup's parts under another compressor than its manifest names.
    builder = ChainBuilder(tmp_path / "archive", compressor=NoCompression())
    states = build(builder)
    manifest, made = consolidated(builder)
    assert made.parts_copied == 0 and made.bytes_streamed == manifest.size
    unpack.unpack(builder.archive, manifest, tmp_path / "restored", [], 2, lambda _: None)
    assert restored_files(tmp_path / "restored") == expected(builder, states, -1)


def test_a_middle_link_consolidates_too(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    states = build(builder)
    target = builder.manifests[2]
    made = consolidate(builder.archive, builder.archive.config, target.backup_id)
    manifest = builder.archive.get_document(manifest_key(made.backup_id), BackupManifest)
    unpack.unpack(builder.archive, manifest, tmp_path / "restored", [], 2, lambda _: None)
    assert restored_files(tmp_path / "restored") == expected(builder, states, 2)


def test_what_cannot_be_consolidated_is_refused(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)
    full = builder.manifests[0].backup_id
    with pytest.raises(RefusedError, match=f"backup {full} is a full backup: there is nothing to consolidate"):
        consolidate(builder.archive, builder.archive.config, full)
    with pytest.raises(RefusedError, match="there is no backup 20000101T000000Z"):
        consolidate(builder.archive, builder.archive.config, "20000101T000000Z")
    (tmp_path / "archive" / manifest_key(builder.manifests[1].backup_id)).unlink()
    newest = builder.manifests[-1].backup_id
    with pytest.raises(RefusedError, match=f"backup {newest} cannot be consolidated: its chain is broken"):
        consolidate(builder.archive, builder.archive.config, newest)


def test_bytes_that_are_not_the_recorded_ones_register_nothing(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    states = build(builder)
    # Streamed (block-mapped: its blocks come from several backups) and recorded wrong.
    target = builder.backup(states[-1], {"base/5/100": {1}}, wrong_block=("base/5/100", 1))
    with pytest.raises(RefusedError, match="the consolidated base/5/100 is not what backup .* records"):
        consolidate(builder.archive, builder.archive.config, target.backup_id)
    survey = survey_backups(builder.archive)
    assert f"{target.backup_id}-full" in survey.unfinished
    assert not (tmp_path / "archive" / backup_prefix(f"{target.backup_id}-full") / "manifest.json").exists()


# --- beside the incremental it was made of ------------------------------------------------

T0 = datetime(2026, 9, 1, tzinfo=UTC)


def chain_with_a_synthetic_full():
    """full, i1, i2, then S (i2's point, no chain) and i3 on S."""
    full = summary("20260901T000000Z", T0)
    i1 = summary("20260902T000000Z", T0 + timedelta(days=1), start_lsn=2 << 24, chain=(full.backup_id,))
    i2 = summary("20260903T000000Z", T0 + timedelta(days=2), start_lsn=3 << 24, chain=(full.backup_id, i1.backup_id))
    synthetic = msgspec.structs.replace(i2, backup_id=f"{i2.backup_id}-full", parent=None, chain=[],
                                        consolidated_from=i2.backup_id)
    i3 = summary("20260904T000000Z", T0 + timedelta(days=3), start_lsn=4 << 24, chain=(synthetic.backup_id,))
    return full, i1, i2, synthetic, i3


def keeps(backups, keep_last: int, held=None) -> set[str]:
    rules = RetentionPolicy(keep_last, 0, 0, 0, None, UTC)
    return {verdict.backup_id for verdict in select_backups(backups, rules, T0 + timedelta(days=9), held)
            if verdict.keep}


def test_retention_counts_one_point_and_keeps_the_shorter_chain():
    full, i1, i2, synthetic, i3 = chain_with_a_synthetic_full()
    backups = [full, i1, i2, synthetic, i3]
    assert keeps(backups, 2) == {synthetic.backup_id, i3.backup_id}
    assert keeps(backups, 3) == {i1.backup_id, synthetic.backup_id, i3.backup_id, full.backup_id}
    # Before i3 exists: the point of i2 is one, kept by S.
    assert keeps([full, i1, i2, synthetic], 1) == {synthetic.backup_id}
    # A lease on i2 holds it and its chain.
    assert keeps(backups, 2, {i2.backup_id: ["leased"]}) == {full.backup_id, i1.backup_id, i2.backup_id,
                                                            synthetic.backup_id, i3.backup_id}


def test_a_kept_descendant_of_the_incremental_still_keeps_its_chain():
    full, i1, i2, synthetic, _ = chain_with_a_synthetic_full()
    i3 = summary("20260904T000000Z", T0 + timedelta(days=3), start_lsn=4 << 24,
                 chain=(full.backup_id, i1.backup_id, i2.backup_id))
    assert keeps([full, i1, i2, synthetic, i3], 1) == {full.backup_id, i1.backup_id, i2.backup_id, i3.backup_id}


def test_full_every_counts_the_synthetic_full_as_a_full():
    full, i1, i2, synthetic, _ = chain_with_a_synthetic_full()
    kind = next_backup_kind(FullEvery(None, 2), [full, i1, i2, synthetic], ClusterIdentity(1, 15),
                            T0 + timedelta(days=3))
    assert kind.parent == synthetic.backup_id
    assert kind.reason == f"incremental 1 of 2 on the full {synthetic.backup_id}"


def test_restore_plan_takes_the_shorter_chain_at_one_point(tmp_path):
    synthetic = SyntheticArchive(tmp_path / "archive")
    synthetic.segments(1, 1, 20)
    synthetic.backup("A", 1, 2, 3)
    synthetic.backup("B", 1, 10, 11, parent="A")
    synthetic.backup("B-full", 1, 10, 11)  # what backup-consolidate makes of B: its point, no chain
    for target in (Target(kind="lsn", lsn=lsn(15, 0x500), text="15"), Target(kind="latest", text="latest")):
        plan = make_plan(synthetic.archive, target)
        assert plan.backup.backup_id == "B-full" and plan.chain == []


def test_the_next_incremental_builds_on_the_synthetic_full(tmp_path):
    synthetic = SyntheticArchive(tmp_path / "archive")
    synthetic.segments(1, 1, 20)
    synthetic.backup("A", 1, 2, 3)
    synthetic.backup("B", 1, 10, 11, parent="A")
    synthetic.backup("B-full", 1, 10, 11)
    assert choose_parent(synthetic.archive, 1, 15, 1, None).backup_id == "B-full"


def test_a_consolidated_backup_with_a_parent_does_not_decode():
    full, i1, _, synthetic, _ = chain_with_a_synthetic_full()
    fields = json.loads(codec.encode(synthetic))
    for changed, refusal in (({"parent": i1.backup_id, "chain": [full.backup_id, i1.backup_id]},
                              "a consolidated backup is a full one"),
                             ({"consolidated_from": "../x"}, "is not a plain name")):
        with pytest.raises(ValueError, match=refusal):
            codec.decode(json.dumps({**fields, **changed}).encode(), BackupSummary, "manifest")
