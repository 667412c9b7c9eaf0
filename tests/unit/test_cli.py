"""The `pitrkit` command line, run in-process against a file:// archive in tmp_path.

Exit codes are the contract with PostgreSQL: for wal-fetch, 1 means "the archive does
not have it" (recovery ends there), so every other failure must exit 126 or more, or a
fault would silently end recovery early. Every failure is one `pitrkit: ...` line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pitrkit.cli import main
from pitrkit.config import parse
from pitrkit.storage.archive import Archive
from tests.unit.segments import SEG_16MIB, SYSID, init_archive, segment

NAME = "000000010000000000000002"
STORED = Path("wal") / "0000000100000000" / NAME  # where the object lands in the archive
NOT_ARCHIVED, FAULT = 1, 126


@pytest.fixture
def archive(tmp_path) -> Path:
    """An archive directory, created as `pitrkit init` creates one."""
    directory = tmp_path / "archive"
    directory.mkdir()
    init_archive(Archive(parse({"repository": {"url": f"file://{directory}"}}, "test")))
    return directory


def write_config(path: Path, archive: Path) -> Path:
    # retries = 0 keeps fault paths immediate; threads = 1 keeps zstd single-threaded.
    path.write_text(
        f'[repository]\nurl = "file://{archive}"\nretries = 0\ntimeout = 5\n\n[compression]\nthreads = 1\n'
    )
    return path


@pytest.fixture
def cfg(tmp_path, archive) -> Path:
    return write_config(tmp_path / "pitrkit.toml", archive)


@pytest.fixture
def pg_wal(tmp_path) -> Path:
    directory = tmp_path / "pg_wal"
    directory.mkdir()
    return directory


@pytest.fixture(autouse=True)
def no_environment_config(monkeypatch):
    monkeypatch.delenv("PITRKIT_CONFIG", raising=False)


def run(capsys, *argv) -> tuple[int, str]:
    """Run the CLI; return (exit code, stderr), checking the output rules on the way."""
    capsys.readouterr()  # drop anything earlier in the test
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    assert out == ""
    if code != 0:
        assert err.startswith("pitrkit: "), err
        assert err.endswith("\n") and err.count("\n") == 1, f"not exactly one line: {err!r}"
        assert "Traceback" not in err
    return code, err


def write_segment(directory: Path, name: str = NAME, **fields) -> Path:
    path = directory / name
    segno = int(name[8:16], 16) * 256 + int(name[16:24], 16)  # 16 MiB segments
    fields.setdefault("timeline", int(name[:8], 16))
    path.write_bytes(segment(segno, **fields))
    return path


# --- usage and configuration errors -----------------------------------------------------


def test_missing_config_file(capsys, tmp_path, pg_wal):
    missing = tmp_path / "nowhere.toml"
    code, err = run(capsys, "--config", missing, "wal-push", write_segment(pg_wal))
    assert code == 2
    assert str(missing) in err


def test_config_from_environment_variable(capsys, monkeypatch, tmp_path, pg_wal):
    missing = tmp_path / "from-env.toml"
    monkeypatch.setenv("PITRKIT_CONFIG", str(missing))
    code, err = run(capsys, "wal-push", write_segment(pg_wal))
    assert code == 2
    assert str(missing) in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [("[repository\n", "not valid TOML"), ('[repository]\nurl = "file:///x"\nretires = 1\n', "'repository.retires'")],
    ids=["invalid-toml", "unknown-key"],
)
def test_malformed_config(capsys, tmp_path, pg_wal, text, expected):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    code, err = run(capsys, "--config", bad, "wal-push", write_segment(pg_wal))
    assert code == 2
    assert str(bad) in err and expected in err


@pytest.mark.parametrize("argv", [["wal-pull", "x"], [], ["wal-push"], ["--bogus", "wal-push", "x"]],
                         ids=["unknown-subcommand", "no-subcommand", "missing-argument", "unknown-option"])
def test_usage_errors(capsys, cfg, argv):
    code, _ = run(capsys, "--config", cfg, *argv)
    assert code == 2


def test_unknown_subcommand_names_it(capsys, cfg):
    _, err = run(capsys, "--config", cfg, "wal-pull", "x")
    assert "wal-pull" in err


# --- wal-push ---------------------------------------------------------------------------


def test_push_with_a_zstd_level_zstd_lacks_is_a_usage_error(capsys, tmp_path, archive, pg_wal):
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{archive}"\n[compression]\nlevel = 99\n')
    code, err = run(capsys, "--config", config, "wal-push", write_segment(pg_wal))
    assert code == 2
    assert err == f"pitrkit: {config}: compression.level must be 1 to 22 for zstd, not 99\n"
    assert [path.name for path in archive.iterdir()] == ["archive.json"]  # nothing pushed


def test_push_missing_file(capsys, cfg, pg_wal):
    path = pg_wal / NAME
    code, err = run(capsys, "--config", cfg, "wal-push", path)
    assert code != 0
    assert str(path) in err


def test_push_garbage_named_like_a_segment(capsys, cfg, archive, pg_wal):
    path = pg_wal / NAME
    path.write_bytes(b"this is not WAL\n" * (SEG_16MIB // 16))
    code, err = run(capsys, "--config", cfg, "wal-push", path)
    assert code == 1
    assert "refusing" in err and NAME in err
    assert not (archive / "wal").exists()  # refused before anything was stored


def test_push_segment_whose_address_does_not_match_its_name(capsys, cfg, archive, pg_wal):
    path = pg_wal / NAME
    path.write_bytes(segment(3))  # the content of segment ...03 under the name ...02
    code, err = run(capsys, "--config", cfg, "wal-push", path)
    assert code == 1
    assert "refusing" in err and "page address" in err
    assert not (archive / STORED).exists()


def test_push_file_with_a_name_postgresql_does_not_archive(capsys, cfg, pg_wal):
    path = pg_wal / "RECOVERYXLOG"
    path.write_bytes(segment(2))
    code, err = run(capsys, "--config", cfg, "wal-push", path)
    assert code != 0
    assert "RECOVERYXLOG" in err


def test_push_with_archive_directory_absent(capsys, tmp_path, pg_wal):
    absent = tmp_path / "not-mounted"
    config = write_config(tmp_path / "absent.toml", absent)
    code, err = run(capsys, "--config", config, "wal-push", write_segment(pg_wal))
    assert code != 0
    assert str(absent) in err
    assert not absent.exists()  # an unmounted archive must not be recreated empty


# An empty directory where the archive should be: a mount point whose file system did
# not mount. Storing into it would put WAL on the root file system, out of every
# restore's sight, and tell PostgreSQL it is safe to recycle.
@pytest.mark.parametrize("name", [NAME, "00000002.history", f"{NAME}.00000028.backup"])
def test_push_into_an_empty_directory_is_refused_naming_init(capsys, tmp_path, pg_wal, name):
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    config = write_config(tmp_path / "unmounted.toml", mount_point)
    path = pg_wal / name
    path.write_bytes(segment(2) if name == NAME else
                     b"1\t0/3000000\tno recovery target specified\n" if name.endswith(".history") else
                     b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n")
    code, err = run(capsys, "--config", config, "wal-push", path)
    assert code == 1
    assert "pitrkit init" in err and "archive.json" in err
    assert list(mount_point.iterdir()) == []  # nothing stored, not even archive.json


def test_push_then_fetch_round_trip(capsys, cfg, archive, pg_wal, tmp_path):
    source = write_segment(pg_wal, filler=b"some WAL records")
    code, err = run(capsys, "--config", cfg, "wal-push", source)
    assert (code, err) == (0, "")
    assert (archive / STORED).is_file()

    restore = tmp_path / "restore"
    restore.mkdir()
    destination = restore / "RECOVERYXLOG"  # PostgreSQL's %p
    code, err = run(capsys, "--config", cfg, "wal-fetch", NAME, destination)
    assert (code, err) == (0, "")
    assert destination.read_bytes() == source.read_bytes()
    assert [p.name for p in restore.iterdir()] == ["RECOVERYXLOG"]  # no temporary left


def test_push_identical_segment_again_succeeds(capsys, cfg, archive, pg_wal):
    source = write_segment(pg_wal)
    assert run(capsys, "--config", cfg, "wal-push", source)[0] == 0
    stored = (archive / STORED).read_bytes()
    # PostgreSQL re-runs archive_command after a crash between storing and marking .done.
    assert run(capsys, "--config", cfg, "wal-push", source) == (0, "")
    assert (archive / STORED).read_bytes() == stored


def test_push_different_content_under_the_same_name_is_refused(capsys, cfg, archive, pg_wal):
    assert run(capsys, "--config", cfg, "wal-push", write_segment(pg_wal, filler=b"first"))[0] == 0
    stored = (archive / STORED).read_bytes()

    other = write_segment(pg_wal, filler=b"second")  # valid WAL, same name, other bytes
    code, err = run(capsys, "--config", cfg, "wal-push", other)
    assert code == 1
    assert "different content" in err and NAME in err
    assert (archive / STORED).read_bytes() == stored  # never overwritten


def test_push_segment_from_another_cluster_is_refused(capsys, cfg, archive, pg_wal):
    assert run(capsys, "--config", cfg, "wal-push", write_segment(pg_wal))[0] == 0
    stranger = 6000000000000000001
    path = write_segment(pg_wal, "000000010000000000000003", sysid=stranger)
    code, err = run(capsys, "--config", cfg, "wal-push", path)
    assert code == 1
    assert str(stranger) in err and str(SYSID) in err
    assert not (archive / "wal" / "0000000100000000" / "000000010000000000000003").exists()


def test_push_short_partial_segment(capsys, cfg, archive, pg_wal, tmp_path):
    path = pg_wal / f"{NAME}.partial"
    path.write_bytes(segment(2, length=8192))
    assert run(capsys, "--config", cfg, "wal-push", path) == (0, "")
    destination = tmp_path / "restored"
    assert run(capsys, "--config", cfg, "wal-fetch", f"{NAME}.partial", destination) == (0, "")
    assert destination.read_bytes() == path.read_bytes()


def test_push_and_fetch_history_file(capsys, cfg, archive, pg_wal, tmp_path):
    history = pg_wal / "00000002.history"
    history.write_text("1\t0/3000148\tno recovery target specified\n")
    assert run(capsys, "--config", cfg, "wal-push", history) == (0, "")
    destination = tmp_path / "RECOVERYHISTORY"
    assert run(capsys, "--config", cfg, "wal-fetch", "00000002.history", destination) == (0, "")
    assert destination.read_bytes() == history.read_bytes()


def test_push_garbage_history_file_is_refused(capsys, cfg, archive, pg_wal):
    history = pg_wal / "00000002.history"
    history.write_bytes(b"\x00\x01binary junk")
    code, err = run(capsys, "--config", cfg, "wal-push", history)
    assert code == 1
    assert "refusing" in err and "00000002.history" in err


# Push over a stored object that has been damaged (truncated by a full disk, say): the
# identical-content check reads its header, objects.CorruptObject is not a PitrkitError,
# so the CLI reports "internal error: CorruptObject: ..." with exit 70 as if pitrkit had
# a bug, instead of a refusal naming the damaged object.
def test_push_over_a_damaged_stored_object_is_a_clear_refusal(capsys, cfg, archive, pg_wal):
    source = write_segment(pg_wal)
    assert run(capsys, "--config", cfg, "wal-push", source)[0] == 0
    (archive / STORED).write_bytes(b"PTKO")  # truncated inside the frame
    code, err = run(capsys, "--config", cfg, "wal-push", source)
    assert code == 1
    assert str(STORED) in err
    assert "internal error" not in err


# --- wal-fetch --------------------------------------------------------------------------


def test_fetch_segment_not_in_archive(capsys, cfg, archive, tmp_path):
    destination = tmp_path / "RECOVERYXLOG"
    code, err = run(capsys, "--config", cfg, "wal-fetch", NAME, destination)
    assert code == NOT_ARCHIVED
    assert NAME in err
    assert not destination.exists()


def test_fetch_not_in_archive_with_other_segments_present(capsys, cfg, archive, pg_wal, tmp_path):
    assert run(capsys, "--config", cfg, "wal-push", write_segment(pg_wal))[0] == 0
    code, _ = run(capsys, "--config", cfg, "wal-fetch", "000000010000000000000003", tmp_path / "x")
    assert code == NOT_ARCHIVED


# The archive directory missing (an unmounted NFS share, a typo in the URL) is a fault,
# not "end of WAL". LocalStorage reports it as StorageMissing, Archive turns that into
# ArchiveUnavailable, whose exit_code is 1 like "not archived"; errors.outcome maps every
# wal-fetch failure except NotInArchive to 126, or PostgreSQL would be told "not
# archived" and promote at the wrong point.
def test_fetch_with_archive_directory_absent_is_a_fault(capsys, tmp_path):
    absent = tmp_path / "not-mounted"
    config = write_config(tmp_path / "absent.toml", absent)
    code, err = run(capsys, "--config", config, "wal-fetch", NAME, tmp_path / "RECOVERYXLOG")
    assert str(absent) in err
    assert code == FAULT


# The same with the directory there but empty (the file system did not mount): every
# name is "not found" in it, and exit 1 would make PostgreSQL end recovery and promote.
@pytest.mark.parametrize("name", [NAME, "00000002.history"])
def test_fetch_from_an_empty_directory_is_a_fault(capsys, tmp_path, name):
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    config = write_config(tmp_path / "unmounted.toml", mount_point)
    code, err = run(capsys, "--config", config, "wal-fetch", name, tmp_path / "RECOVERYXLOG")
    assert code == FAULT
    assert "archive.json" in err and "pitrkit init" in err
    assert not (tmp_path / "RECOVERYXLOG").exists()


@pytest.mark.parametrize(
    "name", ["garbage", "../../etc/passwd", "00000001000000000000000g", "000000010000000000000002.foo"]
)
def test_fetch_malformed_name_is_a_fault(capsys, cfg, tmp_path, name):
    code, err = run(capsys, "--config", cfg, "wal-fetch", name, tmp_path / "RECOVERYXLOG")
    assert code == FAULT
    assert name in err


@pytest.mark.parametrize("argv", [["wal-fetch"], ["wal-fetch", NAME], ["wal-fetch", NAME, "dest", "extra"]])
def test_fetch_usage_errors_are_faults(capsys, cfg, argv):
    code, _ = run(capsys, "--config", cfg, *argv)
    assert code == FAULT


@pytest.mark.parametrize("problem", ["missing", "invalid-toml", "unknown-key", "negative-retries", "zstd-level"])
def test_fetch_with_bad_config_is_a_fault(capsys, tmp_path, problem):
    config = tmp_path / "pitrkit.toml"
    text = {
        "invalid-toml": "[repository\n",
        "unknown-key": f'[repository]\nurl = "file://{tmp_path}"\nretires = 1\n',
        "negative-retries": f'[repository]\nurl = "file://{tmp_path}"\nretries = -1\n',
        "zstd-level": f'[repository]\nurl = "file://{tmp_path}"\n[compression]\nlevel = 99\n',
    }.get(problem)
    if text is not None:
        config.write_text(text)
    code, err = run(capsys, "--config", config, "wal-fetch", NAME, tmp_path / "RECOVERYXLOG")
    assert code == FAULT
    assert str(config) in err


def test_fetch_corrupt_object_is_a_fault(capsys, cfg, archive, pg_wal, tmp_path):
    assert run(capsys, "--config", cfg, "wal-push", write_segment(pg_wal, filler=b"records"))[0] == 0
    stored = archive / STORED
    damaged = bytearray(stored.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    stored.write_bytes(bytes(damaged))

    destination = tmp_path / "RECOVERYXLOG"
    code, err = run(capsys, "--config", cfg, "wal-fetch", NAME, destination)
    assert code == FAULT
    assert "corrupt" in err and NAME in err
    assert not destination.exists()


def test_fetch_into_missing_directory_is_a_fault(capsys, cfg, archive, pg_wal, tmp_path):
    assert run(capsys, "--config", cfg, "wal-push", write_segment(pg_wal))[0] == 0
    destination = tmp_path / "no-such-dir" / "RECOVERYXLOG"
    code, err = run(capsys, "--config", cfg, "wal-fetch", NAME, destination)
    assert code == FAULT
    assert str(destination) in err


def test_fetch_replaces_an_existing_destination(capsys, cfg, archive, pg_wal, tmp_path):
    source = write_segment(pg_wal)
    assert run(capsys, "--config", cfg, "wal-push", source)[0] == 0
    destination = tmp_path / "RECOVERYXLOG"
    destination.write_bytes(b"left over from the previous restore_command")
    assert run(capsys, "--config", cfg, "wal-fetch", NAME, destination) == (0, "")
    assert destination.read_bytes() == source.read_bytes()


CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("command", "name"), [("print-service", "pitrkit.service"), ("print-config", "pitrkit.toml"),
                                              ("print-dashboard", "grafana-dashboard.json")])
def test_the_service_and_example_configuration_are_printed_from_the_package(capsys, monkeypatch, command, name):
    """A wheel has no conf/: the package carries the files, and the checkout's conf/ only
    links to them, so the two can never differ. No configuration is needed."""
    monkeypatch.setenv("PITRKIT_CONFIG", "/nonexistent/pitrkit.toml")
    shipped = (CHECKOUT / "pitrkit" / "conf" / name).read_text()
    assert (CHECKOUT / "conf" / name).resolve() == (CHECKOUT / "pitrkit" / "conf" / name)
    assert main([command]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (shipped, "")
