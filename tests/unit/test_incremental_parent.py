"""backup-push's parent, as backup/incremental.py loads it: whatever of it is gone or
unreadable in storage refuses the incremental with ParentRefused (nothing stored yet, and
`pitrkit daemon` takes a full backup at once on its exit code), never a traceback."""

from __future__ import annotations

import shutil

import pytest

from pitrkit.backup.incremental import load_parent
from pitrkit.errors import ParentRefused
from pitrkit.storage.archive import manifest_key
from tests.unit.chain_archive import ChainBuilder
from tests.unit.test_chain_restore import build


def chain(tmp_path) -> ChainBuilder:
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)
    return builder


def test_the_parent_loads_with_its_block_maps(tmp_path):
    builder = chain(tmp_path)
    parent = load_parent(builder.archive, builder.manifests[-1].summary())
    assert parent.manifest == builder.manifests[-1]
    assert set(parent.maps) == {file.path for file in builder.manifests[-1].block_files}


def test_a_parent_without_its_block_maps_is_refused(tmp_path):
    builder = chain(tmp_path)
    newest = builder.manifests[-1]
    shutil.rmtree(tmp_path / "archive" / "backups" / newest.backup_id / "blockmap")
    with pytest.raises(ParentRefused, match=f"the parent backup {newest.backup_id} cannot be used: block map "
                                            f"backups/{newest.backup_id}/blockmap/.* is missing"):
        load_parent(builder.archive, newest.summary())


def test_a_parent_whose_manifest_is_gone_is_refused(tmp_path):
    builder = chain(tmp_path)
    newest = builder.manifests[-1]
    (tmp_path / "archive" / manifest_key(newest.backup_id)).unlink()
    with pytest.raises(ParentRefused, match=f"the parent backup {newest.backup_id} has no manifest any more"):
        load_parent(builder.archive, newest.summary())


@pytest.mark.parametrize("content", [b"{not json", b'{"backup_id": 7}', b""])
def test_a_parent_whose_manifest_does_not_decode_is_refused(tmp_path, content):
    # The catalog's entry still vouches for the backup, so the daemon asks for an
    # incremental on it: the refusal is what makes it take a full instead of failing
    # at every slot.
    builder = chain(tmp_path)
    newest = builder.manifests[-1]
    (tmp_path / "archive" / manifest_key(newest.backup_id)).write_bytes(content)
    with pytest.raises(ParentRefused, match=f"the parent backup {newest.backup_id} cannot be used: .*"
                                            "not a valid BackupManifest"):
        load_parent(builder.archive, newest.summary())
