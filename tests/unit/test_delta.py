"""`restore --delta` (restore/delta.py) on real files and real file:// archives
(tests/unit/chain_archive.py): a directory that diverged from a full backup or a chain
becomes exactly the backup, reading only the objects holding what differs, and what is
not a stopped cluster is refused before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from pitrkit.catalog.documents import BLOCK_SIZE, BackupTablespace
from pitrkit.cli import main
from pitrkit.errors import RefusedError
from pitrkit.restore import chain, chain_writes, delta, unpack
from pitrkit.restore.unpack import Slice
from tests.unit.chain_archive import ChainBuilder, page, pages, small_windows
from tests.unit.test_chain_restore import build, expected, restored_files

STATE = {
    "PG_VERSION": b"15\n",
    "global/pg_control": bytes(range(256)) * 32,
    "base/5/100": pages("100", 20),
    "base/5/200": pages("200", 6),
    "base/5/300": pages("300", 10),
    "base/5/400": pages("400", 3),
    "base/5/700": b"",
    "postgresql.conf": b"port = 5432\n" * 100,
}


def full(tmp_path: Path) -> ChainBuilder:
    builder = ChainBuilder(tmp_path / "archive")
    builder.backup(STATE)
    return builder


def delta_restore(builder: ChainBuilder, root: Path, number: int = -1) -> delta.DeltaReport:
    manifests = builder.manifests[:len(builder.manifests) + number + 1] if number < 0 else \
        builder.manifests[:number + 1]
    target = manifests[-1]
    links = chain.plan_chain(builder.archive, manifests, 2) if target.parent is not None else None
    return delta.restore(builder.archive, target, links, root, [], 2, lambda _: None)


def data_reads(builder: ChainBuilder) -> list[str]:
    """Keys of data parts and super-block ranges read since the counts were cleared."""
    return [key for key in builder.archive.gets if "/data/" in key] + [key for key, _, _ in builder.archive.ranges]


def diverge(root: Path) -> None:
    """What a started and written-to cluster looks like afterwards."""
    with open(root / "base/5/100", "r+b") as file:
        file.seek(3 * BLOCK_SIZE)
        file.write(page("new", 3))
    with open(root / "base/5/200", "ab") as file:
        file.write(page("grown", 6) * 2)  # longer than recorded
    os.truncate(root / "base/5/300", 4 * BLOCK_SIZE)  # shorter
    (root / "base/5/400").unlink()  # missing
    (root / "postgresql.conf").write_bytes(b"port = 5433\n")
    (root / "base/5/900").write_bytes(pages("extra", 2))  # a relation the backup lacks
    (root / "base/6/sub").mkdir(parents=True)  # a database the backup lacks
    (root / "base/6/sub/f").write_bytes(b"x")
    (root / "pg_wal").mkdir()
    (root / "pg_wal/000000010000000000000009").write_bytes(b"w" * 100)
    os.symlink("/etc", root / "base/5/link")  # removed, never followed
    (root / "backup_label").write_text("stale")
    (root / "standby.signal").write_text("")
    os.chmod(root / "base/5/700", 0o400)


def test_a_diverged_directory_becomes_the_full_backup_reading_only_the_parts_that_differ(tmp_path):
    builder = full(tmp_path)
    root = tmp_path / "data"
    unpack.unpack(builder.archive, builder.manifests[0], root, [], 2, lambda _: None)
    diverge(root)
    builder.archive.gets.clear()

    report = delta_restore(builder, root)

    assert restored_files(root) == expected(builder, [STATE], 0)
    assert not (root / "pg_wal").exists() and not (root / "base/6").exists()
    assert os.stat(root / "base/5/700").st_mode & 0o777 == 0o600
    manifest = builder.manifests[0]
    assert all((root / file.path).stat().st_mtime == file.mtime for file in manifest.files)
    # 100 patched (one block), 200 cut back to its length, 300 extended and patched, 400
    # and the configuration fetched whole; pg_control kept (its bytes were the backup's).
    assert (report.patched, report.blocks, report.whole) == (2, 7, 2), report
    assert report.removed == 4, report  # 900, base/6 (once), pg_wal (the backup has none), the link
    assert report.kept == len(manifest.files) - 4
    fetched = set(data_reads(builder))
    slices = unpack.slices_by_part(manifest.files, manifest.parts)
    holding = {manifest.parts[number].key for number, pieces in enumerate(slices)
               if any(manifest.files[piece.file].path in {"base/5/100", "base/5/300", "base/5/400",
                                                          "postgresql.conf"} for piece in pieces)}
    assert fetched <= holding and len(fetched) < len(manifest.parts)
    assert report.fetched == sum(part.stored_size for part in manifest.parts if part.key in fetched)
    assert report.restore_reads == sum(part.stored_size for part in manifest.parts)

    # Nothing diverged since: nothing is fetched (pg_control is kept from memory).
    builder.archive.gets.clear()
    again = delta_restore(builder, root)
    assert data_reads(builder) == [] and again.fetched == 0 and again.kept == len(manifest.files)
    assert restored_files(root) == expected(builder, [STATE], 0)


@pytest.mark.parametrize("windows", ["default", "small"])
def test_a_directory_of_an_earlier_link_becomes_the_chains_target_reading_less_than_a_restore(tmp_path, monkeypatch,
                                                                                             windows):
    if windows == "small":  # the chain's larger files written window by window: only what differs
        small_windows(monkeypatch)
    builder = ChainBuilder(tmp_path / "archive")
    states = build(builder)
    root = tmp_path / "data"
    plan = chain.plan_chain(builder.archive, builder.manifests[:2], 2)
    chain_writes.unpack_chain(plan, root, [], 2, lambda _: None)
    (root / "base/5/100").unlink()
    builder.archive.gets.clear()
    builder.archive.ranges.clear()

    report = delta_restore(builder, root)

    assert restored_files(root) == expected(builder, states, -1)
    assert 0 < report.fetched < report.restore_reads
    if windows == "default":  # windows of a few blocks read a part again at each cut
        full_plan = chain.plan_chain(builder.archive, builder.manifests, 2)
        assert len(data_reads(builder)) < len(full_plan.stream_reads) + len(full_plan.block_reads)

    builder.archive.gets.clear()
    builder.archive.ranges.clear()
    again = delta_restore(builder, root)
    assert data_reads(builder) == [] and again.fetched == 0
    assert restored_files(root) == expected(builder, states, -1)


def test_an_interrupted_delta_leaves_no_pg_control_and_running_it_again_finishes(tmp_path):
    builder = full(tmp_path)
    root = tmp_path / "data"
    unpack.unpack(builder.archive, builder.manifests[0], root, [], 2, lambda _: None)
    (root / "global/pg_control").write_bytes(b"\0" * (256 * 32))  # a control file that moved on
    (root / "base/5/100").unlink()
    part = tmp_path / "archive" / builder.manifests[0].parts[0].key
    aside = part.with_name("aside")
    part.rename(aside)
    with pytest.raises(RefusedError, match="missing from the archive"):
        delta_restore(builder, root)
    assert not (root / "global/pg_control").exists() and not (root / "backup_label").exists()
    aside.rename(part)
    delta_restore(builder, root)
    assert restored_files(root) == expected(builder, [STATE], 0)


def test_a_format_version_1_backup_is_refused(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    builder.backup(STATE, format_version=1)
    with pytest.raises(RefusedError, match="format_version 1, which records no checksums"):
        delta.check_backup(builder.manifests[0])


# --- the target ------------------------------------------------------------------------------------


def test_an_absent_or_empty_target_is_a_normal_restore(tmp_path):
    assert delta.check_target(tmp_path / "absent") is False
    (tmp_path / "empty").mkdir()
    assert delta.check_target(tmp_path / "empty") is False
    with pytest.raises(RefusedError, match="parent directory"):
        delta.check_target(tmp_path / "no" / "parent")


def test_a_cluster_is_accepted_and_anything_else_refused(tmp_path):
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    (cluster / "PG_VERSION").write_text("15\n")
    assert delta.check_target(cluster) is True
    (cluster / "postmaster.pid").write_text("12345\n")
    with pytest.raises(RefusedError, match="postmaster.pid: a server is running there.*stop it"):
        delta.check_target(cluster)
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious").write_text("not a cluster")
    with pytest.raises(RefusedError, match="not a PostgreSQL data directory"):
        delta.check_target(other)
    (tmp_path / "file").write_text("")
    with pytest.raises(RefusedError, match="not a directory"):
        delta.check_target(tmp_path / "file")
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(other / "precious", linked / "PG_VERSION")
    with pytest.raises(RefusedError, match="not a PostgreSQL data directory"):
        delta.check_target(linked)


def test_a_non_empty_tablespace_directory_is_accepted_only_with_delta(tmp_path):
    location = tmp_path / "ts"
    location.mkdir()
    (location / "PG_15_1").mkdir()
    target = unpack.TablespaceTarget(BackupTablespace(oid=16400, name="ts", location=str(location)), location, True)
    with pytest.raises(RefusedError, match="not empty"):
        unpack.check_tablespace_directory(target, tmp_path / "data")
    unpack.check_tablespace_directory(target, tmp_path / "data", delta=True)
    assert delta.occupied(location) and not delta.occupied(tmp_path / "absent")


# --- the pieces ------------------------------------------------------------------------------------


def test_block_ranges_join_neighbours():
    assert delta.block_ranges([]) == []
    assert delta.block_ranges([0, 1, 2, 5, 7, 8]) == [(0, 3 * BLOCK_SIZE), (5 * BLOCK_SIZE, 6 * BLOCK_SIZE),
                                                       (7 * BLOCK_SIZE, 9 * BLOCK_SIZE)]


def test_wanted_slices_keep_only_the_wanted_bytes_at_their_place_in_the_part():
    slices = [Slice(0, 0, 0, 100), Slice(1, 50, 100, 200), Slice(2, 0, 300, 10)]
    wanted = [[], [(0, 60), (100, 120), (240, 400)], [(0, 10)]]
    assert delta.wanted_slices(slices, wanted) == [
        Slice(1, 50, 100, 10), Slice(1, 100, 150, 20), Slice(1, 240, 290, 10), Slice(2, 0, 300, 10)]


def test_entries_of_the_wrong_kind_are_replaced(tmp_path):
    builder = full(tmp_path)
    root = tmp_path / "data"
    unpack.unpack(builder.archive, builder.manifests[0], root, [], 2, lambda _: None)
    (root / "base/5/400").unlink()
    (root / "base/5/400").mkdir()  # a directory where the backup has a file
    (root / "base/5/400/inside").write_bytes(b"x")
    for entry in (root / "global").iterdir():
        entry.unlink()
    (root / "global").rmdir()
    (root / "global").write_bytes(b"a file where the backup has a directory")
    os.symlink(tmp_path / "archive", root / "base/5/200.1")  # a link: removed, its target untouched

    report = delta_restore(builder, root)

    assert restored_files(root) == expected(builder, [STATE], 0)
    assert report.removed == 3 and (tmp_path / "archive").is_dir()


def test_a_tablespace_is_compared_through_its_link_and_only_its_version_directory_cleaned(tmp_path):
    relation = "pg_tblspc/16400/PG_15_1/5/800"
    builder = ChainBuilder(tmp_path / "archive")
    stored = builder.backup({**STATE, relation: pages("800", 4)})
    location = tmp_path / "ts"
    location.mkdir()
    manifest = msgspec.structs.replace(
        stored, tablespaces=[BackupTablespace(oid=16400, name="ts", location=str(location))],
        directories=[each for each in stored.directories if each.path != "pg_tblspc/16400"])
    targets = unpack.resolve_tablespaces(manifest.tablespaces, [], manifest.backup_id)
    root = tmp_path / "data"
    unpack.unpack(builder.archive, manifest, root, targets, 2, lambda _: None)
    with open(location / "PG_15_1/5/800", "r+b") as file:
        file.seek(2 * BLOCK_SIZE)
        file.write(page("ts-new", 2))
    (location / "PG_15_1/5/801").write_bytes(b"extra")
    (location / "PG_18_2").mkdir()  # another major's, as during pg_upgrade: not ours
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "pg_tblspc/16400").unlink()
    os.symlink(elsewhere, root / "pg_tblspc/16400")

    report = delta.restore(builder.archive, manifest, None, root, targets, 2, lambda _: None)

    assert os.readlink(root / "pg_tblspc/16400") == str(location)
    assert (location / "PG_15_1/5/800").read_bytes() == pages("800", 4)
    assert sorted(os.listdir(location / "PG_15_1/5")) == ["800"] and (location / "PG_18_2").is_dir()
    assert (report.patched, report.blocks, report.removed) == (1, 1, 1)
    assert os.listdir(elsewhere) == []


def cli(capsys, *args: object) -> tuple[int, str]:
    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def test_the_cli_refuses_a_running_cluster_and_a_non_cluster_before_planning(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    (tmp_path / "archive").mkdir()
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{tmp_path / "archive"}"\nretries = 0\n')
    running = tmp_path / "running"
    running.mkdir()
    (running / "PG_VERSION").write_text("15\n")
    (running / "postmaster.pid").write_text("4242\n")
    code, err = cli(capsys, "--config", config, "restore", "--latest", "--delta", "--target-dir", running)
    assert code == 1 and "postmaster.pid" in err and err.count("\n") == 1
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, err = cli(capsys, "--config", config, "restore", "--latest", "--delta", "--target-dir", other)
    assert code == 1 and "not a PostgreSQL data directory" in err and err.count("\n") == 1
    assert sorted(os.listdir(running)) == ["PG_VERSION", "postmaster.pid"] and os.listdir(other) == ["notes.txt"]


def test_an_absent_data_directory_is_written_whole(tmp_path):
    builder = full(tmp_path)
    root = tmp_path / "data"
    report = delta_restore(builder, root)
    assert restored_files(root) == expected(builder, [STATE], 0)
    assert report.kept == 1 and report.fetched == report.restore_reads  # kept: the empty file


def test_a_block_map_that_does_not_cover_its_file_record_is_refused_and_nothing_starts(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    builder.backup(STATE, wrong_file="base/5/100")
    root = tmp_path / "data"
    root.mkdir()
    (root / "PG_VERSION").write_text("15\n")
    (root / "global").mkdir()
    (root / "global/pg_control").write_bytes(b"old")
    with pytest.raises(RefusedError, match="block map of base/5/100 does not match its manifest"):
        delta_restore(builder, root)
    assert not (root / "global/pg_control").exists()
