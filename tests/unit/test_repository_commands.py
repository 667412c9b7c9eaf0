"""`retention apply`, `verify`, `backup-list`, `wal-list` and `catalog rebuild` over
several repositories (ops/per_repository.py), through the command line, on local
archives: "local" (required) holds backups A, B, C and segments 1-20; "cloud" (optional,
with its own retention) lacks backup C and segments 18-20; "dr" is not mounted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pitrkit.catalog.backups import backups
from pitrkit.cli import main
from pitrkit.daemon.service import Outcome, _retention_fields
from tests.unit.synthetic_archive import SyntheticArchive, name
from tests.unit.test_retention import three_backups, wal_present


@pytest.fixture
def local(tmp_path) -> SyntheticArchive:
    return three_backups(tmp_path / "local")


@pytest.fixture
def cloud(tmp_path) -> SyntheticArchive:
    store = three_backups(tmp_path / "cloud")
    (store.root / "backups" / "C" / "manifest.json").unlink()
    for segno in (18, 19, 20):
        store.drop_segment(1, segno)
    return store


def configure(tmp_path: Path, *entries: str, retention: bool = True) -> Path:
    path = tmp_path / "pitrkit.toml"
    path.write_text("".join(f"[[repository]]\n{entry}\n" for entry in entries)
                    + ("[retention]\nkeep_last = 2\n" if retention else ""))
    return path


def required(store: SyntheticArchive, name: str) -> str:
    return f'name = "{name}"\nurl = "file://{store.root}"\nretries = 0\n'


def optional(root: Path, name: str, tmp_path: Path, keep_last: int | None = None) -> str:
    text = f'name = "{name}"\nurl = "file://{root}"\nretries = 0\nrequired = false\nspool = "{tmp_path / name}"\n'
    return text + (f"[repository.retention]\nkeep_last = {keep_last}\n" if keep_last else "")


def ids(store: SyntheticArchive) -> list[str]:
    return [backup.backup_id for backup in backups(store.archive)]


def run(capsys, config: Path, *command: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), *command])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_retention_applies_each_repositorys_own_policy(capsys, tmp_path, local, cloud):
    config = configure(tmp_path, required(local, "local"), optional(cloud.root, "cloud", tmp_path, keep_last=1))
    code, out, _ = run(capsys, config, "retention", "apply", "--dry-run")
    assert code == 0
    assert f"== repository local (required, file://{local.root}) ==" in out
    assert f"== repository cloud (optional, file://{cloud.root}) ==" in out
    local_part, cloud_part = out.split("== repository cloud")
    assert "policy: last 2" in local_part and "policy: last 1" in cloud_part
    assert (ids(local), ids(cloud)) == (["A", "B", "C"], ["A", "B"])

    code, out, _ = run(capsys, config, "retention", "apply", "--json")
    document = json.loads(out)
    assert code == 0 and document["command"] == "retention apply"
    assert [each["repository"] for each in document["repositories"]] == ["local", "cloud"]
    assert (ids(local), ids(cloud)) == (["B", "C"], ["B"])
    # The daemon's log line sums what every repository's retention removed.
    fields = _retention_fields(Outcome(code=0, stdout=out, stderr="", seconds=1.0))
    assert fields["removed"] == "local:A,cloud:A" and fields["wal_files_removed"] == 5 + 5


def test_retention_on_one_repository_prints_its_report_as_with_one(capsys, tmp_path, local, cloud):
    config = configure(tmp_path, required(local, "local"), optional(cloud.root, "cloud", tmp_path, keep_last=1))
    code, out, _ = run(capsys, config, "retention", "apply", "--repo", "cloud", "--json")
    assert code == 0 and json.loads(out)["policy"] == "last 1"
    assert (ids(local), ids(cloud)) == (["A", "B", "C"], ["B"])
    code, _, err = run(capsys, config, "retention", "apply", "--repo", "nowhere")
    assert code == 2 and err == ("pitrkit: --repo nowhere: no repository of that name is configured (configured: "
                                 "local, cloud)\n")


def test_a_repository_without_a_policy_is_left_alone_and_said(capsys, tmp_path, local, cloud):
    config = configure(tmp_path, required(local, "local"), optional(cloud.root, "cloud", tmp_path, keep_last=1),
                       retention=False)
    code, out, _ = run(capsys, config, "retention", "apply")
    assert code == 0
    assert "no retention policy for this repository" in out.split("== repository cloud")[0]
    assert (ids(local), ids(cloud)) == (["A", "B", "C"], ["B"])


def test_retention_carries_on_past_a_repository_it_cannot_read_and_fails_after(capsys, tmp_path, local):
    config = configure(tmp_path, optional(tmp_path / "not-mounted", "dr", tmp_path), required(local, "local"))
    code, out, err = run(capsys, config, "retention", "apply")
    assert code != 0
    assert "FAILED: " in out.split("== repository local")[0]
    assert ids(local) == ["B", "C"]
    assert err.startswith("pitrkit: repository dr: ") and len(err.splitlines()) == 1


def test_verify_reports_each_repository_and_what_it_misses(capsys, tmp_path, local, cloud):
    config = configure(tmp_path, required(local, "local"), optional(cloud.root, "cloud", tmp_path),
                       optional(tmp_path / "not-mounted", "dr", tmp_path), retention=False)
    code, out, _ = run(capsys, config, "verify", "--json")
    document = json.loads(out)
    local_part, cloud_part, dr_part = document["repositories"]
    assert local_part["report"]["archive"] == f"file://{local.root}" and local_part["missing"] is None
    assert cloud_part["missing"] == {"compared_with": "local", "wal_files": 3, "oldest_wal": name(1, 18),
                                     "newest_wal": name(1, 20), "backups": ["C"]}
    assert dr_part["report"] is None and dr_part["problem"] and dr_part["problem_exit_code"] != 0
    assert code == dr_part["problem_exit_code"]

    code, out, _ = run(capsys, config, "verify", "--repo", "cloud")
    assert "== repository" not in out and "backups:" in out
    code, out, _ = run(capsys, config, "verify")
    assert f"missing:   3 WAL files of local ({name(1, 18)} .. {name(1, 20)}) and backup C" in out


def test_listings_show_each_repository_or_the_one_named(capsys, tmp_path, local, cloud):
    config = configure(tmp_path, required(local, "local"), optional(cloud.root, "cloud", tmp_path))
    code, out, _ = run(capsys, config, "backup-list", "--json")
    document = json.loads(out)
    assert code == 0 and document["command"] == "backup-list"
    assert [[row["backup_id"] for row in each["report"]["backups"]] for each in document["repositories"]] == [
        ["A", "B", "C"], ["A", "B"]]
    code, out, _ = run(capsys, config, "wal-list", "--repo", "cloud", "--json")
    assert code == 0 and [row["name"] for row in json.loads(out)["files"]][-1] == name(1, 17)
    code, out, _ = run(capsys, config, "wal-list")
    assert out.count("== repository ") == 2


def test_catalog_rebuild_rebuilds_each_repository(capsys, tmp_path, local, cloud):
    config = configure(tmp_path, required(local, "local"), optional(cloud.root, "cloud", tmp_path))
    code, out, _ = run(capsys, config, "catalog", "rebuild")
    assert code == 0
    assert all(line.startswith(("repository local: ", "repository cloud: ")) for line in out.splitlines())
    assert wal_present(cloud)[-1] == 17
