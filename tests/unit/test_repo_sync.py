"""`pitrkit repo sync` and the copy of a backup between repositories (ops/repo_sync.py,
backup/replicate.py), on real local archives: a chain of incrementals stored as
backup-push lays it out (tests/unit/chain_archive.py), copied as stored between plain
repositories and re-encoded between ones with other keys, then restored from the
target alone to exactly the files backed up."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitrkit import cli
from pitrkit import config as configuration
from pitrkit.backup.replicate import Copier, copy_to_others, copy_with_chain
from pitrkit.catalog import restore_points
from pitrkit.catalog.backups import backups
from pitrkit.catalog.documents import BackupManifest, RestorePoint
from pitrkit.config import Config, EncryptionConfig, RepositoryConfig
from pitrkit.errors import RefusedError, UsageError
from pitrkit.ops.init import ClusterFacts, initialise_all
from pitrkit.ops.repo_sync import SyncReport, pairs
from pitrkit.ops.repo_sync import sync as run_sync
from pitrkit.postgres.wal import Lsn, WalFileName
from pitrkit.restore import chain, chain_writes
from pitrkit.restore.plan import PlanRefused, describe, make_plan, planned_in
from pitrkit.restore.targets import Target
from pitrkit.storage import keys, objects
from pitrkit.storage.archive import Archive, ArchiveMissing, ArchiveUnavailable, manifest_key
from pitrkit.storage.plugins.compression import Zstd
from pitrkit.storage.repositories import Repository, open_all
from pitrkit.wal.fetch import read_for_recovery
from pitrkit.wal.push import push_data
from tests.unit.chain_archive import T0, ChainBuilder
from tests.unit.segments import SYSID, init_archive, segment
from tests.unit.test_chain_restore import build, expected, restored_files

HISTORY = "00000002.history"


def key_encryption(tmp_path: Path, name: str) -> EncryptionConfig:
    return EncryptionConfig(mode="key", key_file=str(key_file(tmp_path, name)))


def repository(tmp_path: Path, name: str, encryption: EncryptionConfig | None = None) -> Repository:
    """A new, initialised local repository."""
    root = tmp_path / name
    root.mkdir()
    settings = RepositoryConfig(url=f"file://{root}", name=name, retries=0)
    archive = Archive(Config(repository=settings, encryption=encryption or EncryptionConfig()))
    init_archive(archive)
    return Repository(settings, archive)


def source(tmp_path: Path, encryption: EncryptionConfig | None = None) -> tuple[ChainBuilder, list, Repository]:
    """A repository holding a full backup and four incrementals, WAL segments 1 to 3, a
    history file and a restore point."""
    builder = ChainBuilder(tmp_path / "source", encryption)
    states = build(builder)
    for segno in (1, 2, 3):
        push_data(builder.archive, WalFileName.parse(f"0000000100000000000000{segno:02X}"), segment(segno))
    push_data(builder.archive, WalFileName.parse(HISTORY), b"1\t0/3000000\tno recovery target specified\n")
    restore_points.record(builder.archive, "before-upgrade", lambda: RestorePoint(
        name="before-upgrade", lsn=Lsn(0x3000100), timeline=1, segment="000000010000000000000003",
        created_at=T0, system_identifier=builder.archive.identity().system_identifier))
    settings = RepositoryConfig(url=builder.archive.storage.url, name="source", retries=0)
    return builder, states, Repository(settings, builder.archive)


def restored_from(target: Archive, builder: ChainBuilder, root: Path) -> dict[str, bytes]:
    manifests = [target.get_document(manifest_key(each.backup_id), BackupManifest) for each in builder.manifests]
    plan = chain.plan_chain(target, manifests, 2)
    chain_writes.unpack_chain(plan, root, [], 2, lambda _: None)
    return restored_files(root)


@pytest.mark.parametrize(("source_keys", "target_keys", "copying"), [
    (False, False, "as stored"),
    (False, True, "re-encoded"),
    (True, False, "re-encoded"),
    (True, True, "re-encoded"),  # each its own key
])
def test_a_sync_copies_everything_and_the_target_alone_restores_exactly(tmp_path, source_keys, target_keys, copying):
    builder, states, origin = source(tmp_path, key_encryption(tmp_path, "source") if source_keys else None)
    target = repository(tmp_path, "target", key_encryption(tmp_path, "target") if target_keys else None)

    report = sync(origin, target)

    assert report.copying == copying and report.problems == []
    assert report.backups == [manifest.backup_id for manifest in builder.manifests]
    assert report.wal == ["000000010000000000000001", "000000010000000000000002", "000000010000000000000003",
                          HISTORY]
    assert report.restore_points == ["before-upgrade"]
    assert [summary.backup_id for summary in backups(target.archive)] == report.backups
    assert read_for_recovery(target.archive, "000000010000000000000002").data == segment(2)
    assert [point.name for point in restore_points.restore_points(target.archive)] == ["before-upgrade"]
    assert restored_from(target.archive, builder, tmp_path / "restored") == expected(builder, states, -1)
    if copying == "as stored":
        key = builder.manifests[-1].parts[0].key
        assert (tmp_path / "target" / key).read_bytes() == (tmp_path / "source" / key).read_bytes()


def test_a_second_sync_copies_nothing(tmp_path):
    _, _, origin = source(tmp_path)
    target = repository(tmp_path, "target", key_encryption(tmp_path, "target"))
    sync(origin, target)
    again = sync(origin, target)
    assert (again.wal, again.backups, again.restore_points, again.time_index, again.bytes_written) == \
        ([], [], [], [], 0)


@pytest.mark.parametrize("target_keys", [False, True])
def test_an_interrupted_copy_is_finished_by_the_next_run(tmp_path, target_keys):
    """A copy that stopped before its manifest leaves parts in the target; the next run
    leaves them as they are (re-encoded ones hold other bytes: another nonce) once they
    are found to hold the same content, and commits the backup."""
    builder, states, origin = source(tmp_path)
    target = repository(tmp_path, "target", key_encryption(tmp_path, "target") if target_keys else None)
    sync(origin, target)
    last = builder.manifests[-1].backup_id
    (tmp_path / "target" / manifest_key(last)).unlink()  # as if interrupted just before the commit
    (tmp_path / "target" / "catalog" / "backups.json").unlink()

    report = sync(origin, target)

    assert report.backups == [last] and report.problems == []
    assert restored_from(target.archive, builder, tmp_path / "restored") == expected(builder, states, -1)


def test_a_corrupt_source_object_is_not_copied_nor_anything_resting_on_it(tmp_path):
    builder, _, origin = source(tmp_path)
    target = repository(tmp_path, "target")
    second = builder.manifests[1]
    damaged = tmp_path / "source" / second.parts[0].key
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")

    report = sync(origin, target)

    assert report.backups == [builder.manifests[0].backup_id]
    assert second.backup_id in report.problems[0] and "corrupt" in report.problems[0]
    assert all("chain" in problem for problem in report.problems[1:]) and len(report.problems) == 4
    assert [summary.backup_id for summary in backups(target.archive)] == [builder.manifests[0].backup_id]


def test_an_object_the_target_holds_with_other_content_is_left_and_reported(tmp_path):
    _, _, origin = source(tmp_path)
    target = repository(tmp_path, "target")
    push_data(target.archive, WalFileName.parse("000000010000000000000002"), segment(2, filler=b"another"))
    report = sync(origin, target)
    assert "000000010000000000000002" not in report.wal
    assert report.problems == []  # listed as present: never compared, never overwritten
    assert read_for_recovery(target.archive, "000000010000000000000002").data == segment(2, filler=b"another")


def test_a_backup_is_copied_with_its_chain_and_wal(tmp_path):
    builder, states, origin = source(tmp_path)
    target = repository(tmp_path, "target", key_encryption(tmp_path, "target"))
    copied = copy_with_chain(origin.archive, target.archive, builder.manifests[2], "backup-push")
    assert copied == [manifest.backup_id for manifest in builder.manifests[:3]]
    assert read_for_recovery(target.archive, "000000010000000000000002").data == segment(2)
    assert copy_with_chain(origin.archive, target.archive, builder.manifests[2], "backup-push") == []


def test_archives_of_different_clusters_are_refused(tmp_path):
    _, _, origin = source(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    archive = Archive(Config(repository=RepositoryConfig(url=f"file://{other}", retries=0)))
    init_archive(archive, sysid=42)
    with pytest.raises(RefusedError, match="different clusters"):
        Copier(origin.archive, archive)


def test_the_command_fills_every_other_repository_and_a_dry_run_copies_nothing(tmp_path, capsys):
    builder, _, _ = source(tmp_path)
    (tmp_path / "dr").mkdir()
    config_file = tmp_path / "pitrkit.toml"
    config_file.write_text(f'[[repository]]\nurl = "file://{tmp_path / "source"}"\nname = "local"\n'
                           f'[[repository]]\nurl = "file://{tmp_path / "dr"}"\nname = "dr"\n')
    init_archive(open_all(configuration.load(config_file))[1].archive)

    assert cli.main(["--config", str(config_file), "repo", "sync", "--dry-run"]) == 0
    assert "repo sync local -> dr (as stored): would copy 4 WAL files, 5 backups" in capsys.readouterr().out
    assert not (tmp_path / "dr" / "backups").exists()

    assert cli.main(["--config", str(config_file), "repo", "sync", "--to", "dr"]) == 0
    assert "copied 4 WAL files, 5 backups, 1 restore point" in capsys.readouterr().out
    assert [summary.backup_id for summary in backups(open_all(configuration.load(config_file))[1].archive)] == \
        [manifest.backup_id for manifest in builder.manifests]

    assert cli.main(["--config", str(config_file), "repo", "sync", "--from", "dr", "--to", "dr"]) == 2
    assert "--from and --to both name dr" in capsys.readouterr().err


def test_one_repository_has_nothing_to_sync(tmp_path):
    with pytest.raises(UsageError, match="only one repository"):
        pairs([repository(tmp_path, "only")], None, None)


def sync(origin: Repository, target: Repository) -> SyncReport:
    return run_sync(origin, target)


# --- reading with fall-through, init per repository ----------------------------------------------


def latest(archive: Archive):
    return make_plan(archive, Target(kind="latest", text="latest"))


def test_a_plan_falls_through_a_repository_that_cannot_answer_and_one_without_a_backup(tmp_path):
    builder, _, origin = source(tmp_path)
    empty = repository(tmp_path, "empty")
    gone = Repository(RepositoryConfig(url=f"file://{tmp_path / 'gone'}", name="gone", retries=0),
                      Archive(Config(repository=RepositoryConfig(url=f"file://{tmp_path / 'gone'}", retries=0))))
    chosen_one, plan = planned_in([gone, empty, origin], latest)
    assert chosen_one is origin and plan.repository == "source"
    assert plan.backup.backup_id == builder.manifests[-1].backup_id
    assert describe(plan).startswith("repository:   source\n")


def test_no_repository_reaching_the_target_is_a_refusal_naming_each(tmp_path):
    empty, other = repository(tmp_path, "empty"), repository(tmp_path, "other")
    with pytest.raises(PlanRefused, match="repository 'empty': .*no finished backup; repository 'other': "):
        planned_in([empty, other], latest)


def test_a_fault_where_none_can_restore_keeps_its_own_kind(tmp_path):
    empty = repository(tmp_path, "empty")
    (tmp_path / "missing").mkdir()
    missing = Repository(RepositoryConfig(url=f"file://{tmp_path / 'missing'}", name="missing", retries=0),
                         Archive(Config(repository=RepositoryConfig(url=f"file://{tmp_path / 'missing'}",
                                                                    retries=0))))
    with pytest.raises(ArchiveMissing, match="repository 'empty': .*repository 'missing': .*pitrkit init"):
        planned_in([empty, missing], latest)


def test_one_repository_plans_as_before(tmp_path):
    _, _, origin = source(tmp_path)
    assert planned_in([origin], latest)[1].repository is None
    with pytest.raises(PlanRefused, match="^the archive .* holds no finished backup$"):
        planned_in([repository(tmp_path, "empty")], latest)


def test_init_creates_each_repository_and_leaves_one_already_initialised(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "dr").mkdir()
    parsed = configuration.parse({"repository": [
        {"url": f"file://{tmp_path / 'local'}", "name": "local"},
        {"url": f"file://{tmp_path / 'dr'}", "name": "dr",
         "encryption": {"mode": "key", "key_file": str(key_file(tmp_path, "dr"))}}]}, "test")
    facts = ClusterFacts(SYSID, 16 << 20, 15, "the test")
    archives = [each.archive for each in open_all(parsed)]
    init_archive(archives[0])
    said = initialise_all(archives, facts)
    assert said[0].startswith("repository 'local': the archive") and "already initialised" in said[0]
    assert said[1].startswith("repository 'dr': created the archive") and "encrypted" in said[1]
    assert archives[1].identity().encryption is not None and archives[0].identity().encryption is None


def test_init_refuses_a_repository_of_another_cluster_before_creating_any(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "dr").mkdir()
    parsed = configuration.parse({"repository": [{"url": f"file://{tmp_path / 'local'}", "name": "local"},
                                                 {"url": f"file://{tmp_path / 'dr'}", "name": "dr"}]}, "test")
    archives = [each.archive for each in open_all(parsed)]
    init_archive(archives[1], sysid=42)
    with pytest.raises(RefusedError, match="system identifier 42"):
        initialise_all(archives, ClusterFacts(SYSID, 16 << 20, 15, "the test"))
    assert not (tmp_path / "local" / "archive.json").exists()


def key_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.key"
    keys.generate_key_file(path)
    return path


def test_a_list_of_one_repository_reads_with_its_own_keys(tmp_path):
    """A DR host's configuration: one [[repository]] entry with its own [encryption]."""
    parsed = configuration.parse({"repository": [{"url": f"file://{tmp_path}", "encryption": {
        "mode": "key", "key_file": str(key_file(tmp_path, "dr"))}}]}, "test")
    assert Archive(parsed).config.encryption.mode == "key"


def test_backup_push_fails_for_a_required_repository_and_carries_on_without_an_optional_one(tmp_path):
    builder, _, origin = source(tmp_path)
    newest = builder.manifests[-1]
    dr = repository(tmp_path, "dr", key_encryption(tmp_path, "dr"))
    gone_url = f"file://{tmp_path / 'gone'}"
    gone = Repository(RepositoryConfig(url=gone_url, name="gone", retries=0),
                      Archive(Config(repository=RepositoryConfig(url=gone_url, retries=0))))
    with pytest.raises(ArchiveUnavailable, match=f"backup {newest.backup_id} is stored in repository 'source', but "
                                                 "copying it into a required repository failed: repository 'gone'"):
        copy_to_others(origin, [dr, gone], newest)
    # The copy into dr ran to its end all the same.
    assert [summary.backup_id for summary in backups(dr.archive)] == [each.backup_id for each in builder.manifests]

    optional = gone._replace(settings=RepositoryConfig(url=gone_url, name="gone", required=False, spool="/s"))
    written = copy_to_others(origin, [dr, optional], newest)
    assert written.results == {"dr": []} and [each.name for each, _ in written.missed] == ["gone"]


@pytest.mark.parametrize("target_keys", [False, True])
def test_a_backup_object_the_target_holds_with_other_content_is_left_and_the_backup_not_committed(tmp_path,
                                                                                                  target_keys):
    builder, _, origin = source(tmp_path)
    target = repository(tmp_path, "target", key_encryption(tmp_path, "target") if target_keys else None)
    first = builder.manifests[0]
    blob, _ = objects.encode(b"other content", Zstd(3, 1), target.archive.write_cipher())
    target.archive.put(first.parts[0].key, blob)

    report = sync(origin, target)

    assert report.backups == [] and "already stored with other content; left as it is" in report.problems[0]
    assert (tmp_path / "target" / first.parts[0].key).read_bytes() == blob
    assert not (tmp_path / "target" / manifest_key(first.backup_id)).exists()


def test_wal_removed_from_the_source_meanwhile_is_reported_not_raised(tmp_path):
    _, _, origin = source(tmp_path)
    target = repository(tmp_path, "target")
    copier = Copier(origin.archive, target.archive)
    (tmp_path / "source" / "wal" / "0000000100000000" / "000000010000000000000001").unlink()
    with pytest.raises(RefusedError, match="000000010000000000000001 is no longer stored"):
        copier.copy_object("wal/0000000100000000/000000010000000000000001")
