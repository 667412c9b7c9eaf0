"""Backups over several repositories end to end, on PostgreSQL 15 and 18: `pitrkit init`
creates each `[[repository]]`, backup-push stores the backup in every one (the second
encrypted with its own key, so that the copy is re-encoded), a third repository added
later is filled by `pitrkit repo sync`, and each repository alone, the others' directories
gone, restores to a noted point exactly (table digests).

restore-plan with every repository configured falls through the ones that are gone to
the one left, and says which it plans from. The restore itself runs as a DR host runs
it, with a configuration naming only the repository it has.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pitrkit.storage import objects

import pgharness
from pitr_workload import (
    archive_everything,
    create_tables,
    digests,
    note_point,
    recovered,
    succeeded,
    write_round,
)

pytestmark = pytest.mark.integration


def _config(setup, repositories: list[tuple[str, Path, Path | None]], primary: pgharness.Cluster) -> str:
    """The configuration text: `[[repository]]` entries (name, directory, key file or
    None), the agent off, [postgres] naming the primary."""
    text = ""
    for name, directory, key in repositories:
        text += f'[[repository]]\nname = "{name}"\nurl = "file://{directory}"\nretries = 1\ntimeout = 10\n'
        if key is not None:
            text += f'[repository.encryption]\nmode = "key"\nkey_file = "{key}"\n'
    conninfo = f"host={primary.socket_dir} port={primary.port} user={pgharness.SUPERUSER} dbname=postgres"
    return text + ('[agent]\nenabled = false\n'
                   f'[postgres]\npgdata = "{primary.pgdata}"\nbindir = "{primary.install.bindir}"\n'
                   f'conninfo = "{conninfo}"\n')


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    pgharness.give_to_server_user(path)


def test_backups_reach_every_repository_and_each_alone_restores_exactly(cluster, pitrkit_setup, server_tmp):
    setup = pitrkit_setup
    local = setup.archive
    dr = pgharness.make_server_dir(server_tmp / "dr", mode=0o700)
    late = pgharness.make_server_dir(server_tmp / "late", mode=0o700)
    dr_key = server_tmp / "dr.key"
    succeeded(pgharness.run_as_server_user([setup.pitrkit, "keygen", "--key-file", dr_key], check=False))
    primary = cluster(archive_mode="on", archive_command=setup.archive_command, checkpoint_timeout="30s")
    primary.env.update(setup.env)
    two = [("local", local, None), ("dr", dr, dr_key)]
    _write(setup.config, _config(setup, two, primary))
    said = succeeded(setup.run("init"))
    assert "repository 'local': created" in said and "repository 'dr': created" in said and "encrypted" in said
    primary.start()
    create_tables(primary)

    write_round(primary, 1)
    backup_id = json.loads(succeeded(setup.run("backup-push", "--json", timeout=600)))["backup_id"]
    for directory in (local, dr):
        assert (directory / "backups" / backup_id / "manifest.json").is_file()
    # The copy in dr is dr's own: every part encrypted, with dr's key.
    parts = sorted((dr / "backups" / backup_id / "data").iterdir())
    assert parts and all(objects.read_header(part.name, part.read_bytes())[0].key_id is not None for part in parts)

    write_round(primary, 2)
    point = note_point(primary)
    write_round(primary, 3)
    archive_everything(primary)

    # A third repository, added later: init creates it alone, repo sync fills it (and
    # dr with whatever WAL it lacks).
    three = [*two, ("late", late, None)]
    _write(setup.config, _config(setup, three, primary))
    said = succeeded(setup.run("init"))
    assert "repository 'local': the archive" in said and "already initialised" in said
    assert "repository 'late': created" in said
    synced = succeeded(setup.run("repo", "sync", timeout=600))
    assert "repo sync local -> late (as stored): copied" in synced and "1 backup" in synced
    assert "repo sync local -> dr (re-encoded)" in synced
    assert "copied 0 WAL files, 0 backups, 0 restore points, 0 time index objects" in \
        succeeded(setup.run("repo", "sync", "--to", "late"))
    primary.stop()

    full_config = setup.config
    for name, directory, key in three:
        others = [each for each in three if each[1] != directory]
        for _, other, _ in others:
            os.rename(other, other.with_name(other.name + ".gone"))
        try:
            plan = json.loads(succeeded(setup.run("restore-plan", "--to", point.time, "--json")))
            assert (plan["repository"], plan["backup"]["backup_id"]) == (name, backup_id)
            setup.config = full_config.with_name(f"{name}.toml")
            _write(setup.config, _config(setup, [(name, directory, key)], primary))
            restored = recovered(cluster, setup, "--to", point.time)
            assert digests(restored) == point.digests, name
            restored.stop()
        finally:
            setup.config = full_config
            for _, other, _ in others:
                os.rename(other.with_name(other.name + ".gone"), other)
