"""Several repositories: `[[repository]]` parsed and checked, each opened with its own
keys and policy, written to together and read in order (storage/repositories.py), on
real local archives: a missing mount, an archive without archive.json and one that has
the object are each what they would be in production."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitrkit import config
from pitrkit.errors import ConfigError, NotInArchive, PitrkitError, UsageError
from pitrkit.storage.archive import ArchiveUnavailable
from pitrkit.storage.repositories import chosen, first_answer, open_all, to_every
from pitrkit.wal.fetch import read_for_recovery
from pitrkit.wal.push import push
from tests.unit.segments import init_archive, segment

NAME = "000000010000000000000001"


def parse(entries: list[dict], **sections) -> config.Config:
    return config.parse({"repository": entries, **sections}, "test")


def refusal(entries: list[dict], **sections) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(entries, **sections)
    return str(caught.value)


def test_one_repository_table_is_a_list_of_one_named_repo1():
    parsed = config.parse({"repository": {"url": "file:///x"}}, "test")
    assert [entry.name for entry in parsed.repositories] == ["repo1"]
    assert parsed.first_repository.repository == parsed.repositories[0]


def test_entries_are_named_by_position_unless_named():
    parsed = parse([{"url": "file:///a"}, {"url": "file:///b", "name": "dr", "required": False, "spool": "/s"},
                    {"url": "file:///c"}])
    assert [entry.name for entry in parsed.repositories] == ["repo1", "dr", "repo3"]
    assert [entry.required for entry in parsed.repositories] == [True, False, True]


@pytest.mark.parametrize(("entries", "expected"), [
    ([], "no entries"),
    ([{"url": "file:///a", "required": False, "spool": "/s"}], "at least one must be required"),
    ([{"url": "file:///a", "name": "x"}, {"url": "file:///b", "name": "x"}], "two repositories have this name"),
    ([{"url": "file:///a", "name": "Cloud DR"}], "name must be"),
    ([{"url": "file:///a"}, {"url": "file:///b", "required": False}], "required = false needs spool"),
    ([{"url": "file:///a"}, {"url": "file:///b", "spool": "spool"}], "must be an absolute path"),
    ([{"url": "file:///a"}, {"url": "file:///b", "retries": 101}], "repository 'repo2'.retries"),
    ([{"url": "file:///a"}, {"url": "file:///b", "encryption": {"mode": "key"}}],
     "repository 'repo2': encryption mode \"key\" needs exactly one"),
    ([{"url": "file:///a"}, {"url": "file:///b", "retention": {"keep_last": 0}}],
     "repository 'repo2': retention.keep_last must be at least 1"),
])
def test_bad_entries_are_refused_naming_the_repository(entries, expected):
    assert expected in refusal(entries)


def test_an_unknown_key_in_an_entry_is_refused():
    assert "unknown key 'repository[1].requierd'" in refusal([{"url": "file:///a"},
                                                               {"url": "file:///b", "requierd": False}])


def test_each_repository_sees_its_own_encryption_and_retention_else_the_top_level():
    parsed = parse([{"url": "file:///a"},
                    {"url": "file:///b", "encryption": {"mode": "key", "passphrase_env": "DR"},
                     "retention": {"keep_last": 9}}],
                   encryption={"mode": "key", "passphrase_env": "MAIN"}, retention={"keep_last": 2})
    first, second = (parsed.for_repository(entry) for entry in parsed.repositories)
    assert (first.encryption.passphrase_env, first.retention.keep_last) == ("MAIN", 2)
    assert (second.encryption.passphrase_env, second.retention.keep_last) == ("DR", 9)
    assert first.repositories == (parsed.repositories[0],)


def archives(tmp_path: Path, *names: str, initialised: tuple[str, ...] | None = None,
             optional: tuple[str, ...] = ()) -> config.Config:
    """A configuration over one local archive per name; those in `initialised` (default:
    all) get archive.json. A name starting with "gone" points at a directory that does
    not exist (an unmounted file system)."""
    entries = []
    for name in names:
        root = tmp_path / name
        if not name.startswith("gone"):
            root.mkdir()
        entry = {"url": f"file://{root}", "name": name, "retries": 0}
        if name in optional:
            entry |= {"required": False, "spool": str(tmp_path / f"spool-{name}")}
        entries.append(entry)
    parsed = parse(entries)
    for repository in open_all(parsed):
        if (initialised is None or repository.name in initialised) and not repository.name.startswith("gone"):
            init_archive(repository.archive)
    return parsed


def wal(tmp_path: Path, number: int = 1, filler: bytes = b"") -> Path:
    path = tmp_path / f"00000001000000000000000{number}"
    path.write_bytes(segment(number, filler=filler))
    return path


def test_a_push_reaches_every_repository(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "cloud"))
    segment_file = wal(tmp_path)
    written = to_every(repositories, lambda archive: push(archive, segment_file))
    assert set(written.results) == {"local", "cloud"} and written.missed == []
    for repository in repositories:
        assert read_for_recovery(repository.archive, NAME).data == segment(1)


def test_a_required_repository_that_fails_fails_the_write_naming_it(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "gone"))
    segment_file = wal(tmp_path)
    with pytest.raises(ArchiveUnavailable, match="repository 'gone': "):
        to_every(repositories, lambda archive: push(archive, segment_file))
    # The other repository's write ran to its end all the same: nothing is left running.
    assert read_for_recovery(repositories[0].archive, NAME).data == segment(1)


def test_a_required_repositorys_own_refusal_keeps_its_type(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "cloud"))
    push(repositories[1].archive, wal(tmp_path, filler=b"other content"))
    segment_file = wal(tmp_path)
    with pytest.raises(PitrkitError, match="repository 'cloud': ") as caught:
        to_every(repositories, lambda archive: push(archive, segment_file))
    assert caught.value.exit_code == 1


def test_an_optional_repository_that_fails_is_returned_not_raised(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "gone", optional=("gone",)))
    segment_file = wal(tmp_path)
    written = to_every(repositories, lambda archive: push(archive, segment_file))
    assert list(written.results) == ["local"]
    assert [(repository.name, type(exc)) for repository, exc in written.missed] == [("gone", ArchiveUnavailable)]


def test_a_read_takes_the_first_repository_that_has_the_object(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "cloud"))
    push(repositories[1].archive, wal(tmp_path))
    assert first_answer(repositories, lambda archive: read_for_recovery(archive, NAME)).data == segment(1)


def test_a_read_falls_through_a_fault_to_a_repository_that_has_it(tmp_path):
    repositories = open_all(archives(tmp_path, "gone", "missing", "cloud", initialised=("cloud",)))
    push(repositories[2].archive, wal(tmp_path))
    assert first_answer(repositories, lambda archive: read_for_recovery(archive, NAME)).data == segment(1)


def test_not_archived_only_when_every_repository_answers_not_found(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "cloud"))
    with pytest.raises(NotInArchive, match="repository 'local'.*repository 'cloud'"):
        first_answer(repositories, lambda archive: read_for_recovery(archive, NAME))


@pytest.mark.parametrize("names", [("gone", "cloud"), ("cloud", "gone")])
def test_a_repository_that_cannot_answer_makes_absence_a_fault(tmp_path, names):
    """One repository says "not found", another cannot answer: the second may hold the
    segment, so recovery must stop (126), never end (1)."""
    repositories = open_all(archives(tmp_path, *names))
    with pytest.raises(ArchiveUnavailable, match="repository 'gone'"):
        first_answer(repositories, lambda archive: read_for_recovery(archive, NAME))


def test_an_archive_without_archive_json_is_a_fault_not_an_absence(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "fresh", initialised=("local",)))
    with pytest.raises(ArchiveUnavailable, match="repository 'fresh'.*pitrkit init"):
        first_answer(repositories, lambda archive: read_for_recovery(archive, NAME))


def test_repo_chooses_one_repository_by_name_and_refuses_an_unknown_one(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "cloud"))
    assert chosen(repositories, None) == repositories
    assert [each.name for each in chosen(repositories, "cloud")] == ["cloud"]
    with pytest.raises(UsageError, match="--repo dr: no repository of that name is configured "
                                         r"\(configured: local, cloud\)"):
        chosen(repositories, "dr")
