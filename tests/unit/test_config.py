"""pitrkit.config: the TOML file is validated at the edge, and every mistake is reported
with the file it came from and the dotted key a DBA would look for."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from pitrkit import config
from pitrkit.catalog import documents
from pitrkit.errors import ConfigError

SOURCE = "/etc/pitrkit/test.toml"

MINIMAL = """
[repository]
url = "file:///var/lib/pitrkit"
"""

FULL = """
[repository]
url = "file:///mnt/archive"
timeout = 12.5
retries = 7

[postgres]
pgdata = "/var/lib/postgresql/15/main"
bindir = "/usr/lib/postgresql/15/bin"
conninfo = "host=/run/postgresql dbname=postgres"

[compression]
algorithm = "none"
level = 9
threads = 2
"""


def parse(text: str) -> config.Config:
    return config.parse(tomllib.loads(text), SOURCE)


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: "), message
    assert "\n" not in message
    return message


def test_minimal_document_gets_defaults():
    parsed = parse(MINIMAL)
    assert parsed.repository.url == "file:///var/lib/pitrkit"
    assert parsed.repository.timeout == 60.0
    assert parsed.repository.retries == 4
    assert parsed.postgres == config.PostgresConfig(pgdata=None, bindir=None, conninfo=None)
    assert (parsed.compression.algorithm, parsed.compression.level, parsed.compression.threads) == ("zstd", 3, 0)


def test_full_document():
    parsed = parse(FULL)
    assert parsed.repository == config.RepositoryConfig(url="file:///mnt/archive", timeout=12.5, retries=7,
                                                        name="repo1")
    assert parsed.postgres.pgdata == "/var/lib/postgresql/15/main"
    assert parsed.postgres.bindir == "/usr/lib/postgresql/15/bin"
    assert parsed.postgres.conninfo == "host=/run/postgresql dbname=postgres"
    assert parsed.compression == config.CompressionConfig(algorithm="none", level=9, threads=2)


def test_integer_timeout_is_accepted_as_seconds():
    parsed = parse(MINIMAL + "timeout = 5\n")
    assert parsed.repository.timeout == 5.0


def test_retries_zero_is_allowed():
    assert parse(MINIMAL + "retries = 0\n").repository.retries == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[postgres]\npgdata = '/x'\n", "missing required key 'repository'"),
        ("[repository]\ntimeout = 5\n", "missing required key 'repository.url'"),
        (MINIMAL + "[storage]\nurl = 'x'\n", "unknown key 'storage'"),
        ('verbose = true\n' + MINIMAL, "unknown key 'verbose'"),
        # The misspelling the module docstring warns about.
        (MINIMAL + "retires = 5\n", "unknown key 'repository.retires'"),
        (MINIMAL + "[compression]\nlvl = 3\n", "unknown key 'compression.lvl'"),
        (MINIMAL + "[compression]\nlevel = \"3\"\n", "key 'compression.level'"),
        (MINIMAL + "retries = 2.5\n", "key 'repository.retries'"),
        (MINIMAL + "timeout = \"60s\"\n", "key 'repository.timeout'"),
        ("repository = \"file:///x\"\n", "key 'repository'"),
        (MINIMAL + "retries = -1\n", "repository.retries must be a whole number from 0 to 100, not -1"),
        (MINIMAL + "timeout = 0\n", "repository.timeout must be a number of seconds above 0"),
        (MINIMAL + "timeout = -3.5\n", "repository.timeout must be a number of seconds above 0"),
        (MINIMAL + "[compression]\nthreads = -1\n", "compression.threads must be a whole number from 0 to 256"),
    ],
    ids=[
        "missing-repository", "missing-url", "unknown-section", "unknown-top-level-key",
        "misspelt-retries", "unknown-compression-key", "level-is-string", "retries-float",
        "timeout-string", "repository-not-a-table", "negative-retries", "zero-timeout",
        "negative-timeout", "negative-threads",
    ],
)
def test_invalid_documents_name_the_key(text, expected):
    message = config_error(text)
    assert expected in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[repository]\nurl = 'file:///x'\nretires = 5\n",
         "unknown key 'repository.retires' (did you mean 'retries'?)"),
        ("[repository]\nurl = 'file:///x'\n[postgres]\nconinfo = 'host=/tmp'\n",
         "unknown key 'postgres.coninfo' (did you mean 'conninfo'?)"),
        ("[repository]\nurl = 'file:///x'\n[retention]\nkep_last = 2\n",
         "unknown key 'retention.kep_last' (did you mean 'keep_last'?)"),
        ("[repository]\nurl = 'file:///x'\n[postgre]\nconninfo = 'host=/tmp'\n",
         "unknown key 'postgre' (did you mean 'postgres'?)"),
        ("[repository]\nurl = 'file:///x'\nconninfo = 'host=/tmp'\n",
         "unknown key 'repository.conninfo' (did you mean 'conninfo' under [postgres]?)"),
        ("[repository]\nurl = 'file:///x'\n[compression]\nzzz = 3\n", "unknown key 'compression.zzz'"),
    ],
    ids=["misspelt-retries", "misspelt-conninfo", "misspelt-in-optional-section", "misspelt-section",
         "key-under-the-wrong-table", "nothing-near"],
)
def test_an_unknown_key_suggests_the_nearest_known_one(text, expected):
    assert config_error(text) == f"{SOURCE}: {expected}"


def test_wrong_type_message_says_what_was_expected():
    message = config_error(MINIMAL + "[compression]\nlevel = \"3\"\n")
    assert message == f"{SOURCE}: key 'compression.level': expected int, got str"


# docs/architecture.md, guarantee 5: "every storage call has a timeout". TOML has `inf`
# and `nan`; the range check is `timeout <= 0`, which both pass, so `timeout = inf` means
# "wait forever" and `nan` reaches the storage backend (socket.settimeout(nan) raises
# ValueError there).
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_non_finite_timeout_is_refused(value):
    message = config_error(MINIMAL + f"timeout = {value}\n")
    assert "repository.timeout" in message


# A zstd level zstd cannot use was found only when wal-push first compressed (exit 2 after
# reading the segment; docs said exit 70), and never by wal-fetch or a config check: it is
# a mistake in the file, refused with the file's other mistakes when the file is loaded.
@pytest.mark.parametrize("level", [0, -5, 23, 99])
def test_zstd_level_out_of_range_is_refused_at_load(level):
    message = config_error(MINIMAL + f"[compression]\nlevel = {level}\n")
    assert message == f"{SOURCE}: compression.level must be 1 to 22 for zstd, not {level}"


@pytest.mark.parametrize("level", [1, 22])
def test_zstd_level_bounds_are_accepted(level):
    assert parse(MINIMAL + f"[compression]\nlevel = {level}\n").compression.level == level


def test_level_is_not_checked_for_other_algorithms():
    # "none" ignores the level; a plugin's algorithm has its own levels.
    assert parse(MINIMAL + "[compression]\nalgorithm = \"none\"\nlevel = 99\n").compression.level == 99


def test_zstd_levels_are_zstds_own():
    zstandard = pytest.importorskip("zstandard")
    assert config.ZSTD_LEVELS == range(1, zstandard.MAX_COMPRESSION_LEVEL + 1)


# --- load -------------------------------------------------------------------------------


def test_load_valid_file(tmp_path):
    path = tmp_path / "pitrkit.toml"
    path.write_text(FULL)
    assert config.load(path).repository.retries == 7


def test_load_errors_name_the_file_in_key_errors(tmp_path):
    path = tmp_path / "pitrkit.toml"
    path.write_text(MINIMAL + "retires = 5\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value) == f"{path}: unknown key 'repository.retires' (did you mean 'retries'?)"


def test_load_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(path) in str(caught.value)
    assert "not found" in str(caught.value)


def test_load_unreadable_file(tmp_path):
    # chmod 000 does not stop root; a directory cannot be read as a file by anyone.
    path = tmp_path / "pitrkit.toml"
    path.mkdir()
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(path) in str(caught.value)
    assert "cannot read" in str(caught.value)


@pytest.mark.parametrize("text", ["[repository\nurl = 'x'\n", "repository.url = \n", "= 3\n", "[a]\n[a]\n"])
def test_load_invalid_toml(tmp_path, text):
    path = tmp_path / "pitrkit.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(path) in str(caught.value)
    assert "not valid TOML" in str(caught.value)
    assert "\n" not in str(caught.value)


# A config saved in Latin-1 by an editor is not valid TOML (which is UTF-8). tomllib
# raises UnicodeDecodeError for it, not TOMLDecodeError, so load() lets it escape and the
# CLI reports "internal error: UnicodeDecodeError ..." (exit 70) without naming the file.
def test_load_non_utf8_file(tmp_path):
    path = tmp_path / "pitrkit.toml"
    path.write_bytes(b'[repository]\nurl = "file:///srv/archiv\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(path) in str(caught.value)


# --- locate -----------------------------------------------------------------------------


def test_locate_explicit_wins(monkeypatch):
    monkeypatch.setenv("PITRKIT_CONFIG", "/from/env.toml")
    assert config.locate("/explicit.toml") == Path("/explicit.toml")


def test_locate_environment_over_default(monkeypatch):
    monkeypatch.setenv("PITRKIT_CONFIG", "/from/env.toml")
    assert config.locate(None) == Path("/from/env.toml")


def test_locate_default(monkeypatch):
    monkeypatch.delenv("PITRKIT_CONFIG", raising=False)
    assert config.locate(None) == Path("/etc/pitrkit/pitrkit.toml")


def test_locate_empty_environment_variable_means_unset(monkeypatch):
    monkeypatch.setenv("PITRKIT_CONFIG", "")
    assert config.locate(None) == Path("/etc/pitrkit/pitrkit.toml")


# --- operations sections ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 7 * 86400), ("36h", 36 * 3600), ("90m", 5400), ("30s", 30), ("2w", 14 * 86400), ("1.5h", 5400),
     ("45", 45)],
)
def test_durations_are_written_as_a_dba_writes_them(text, seconds):
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7 days", "d", "-1d", "7y", "1e3"])
def test_a_malformed_duration_is_none(text):
    assert config.parse_duration(text) is None


def test_no_retention_section_means_no_policy():
    assert config.parse(tomllib.loads(MINIMAL), SOURCE).retention is None


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("[retention]\nkeep_last = 0\n", "retention.keep_last must be at least 1"),
        ("[retention]\ndaily = -1\n", "retention.daily must be a whole number from 0 to 100000"),
        ("[retention]\nwindow = \"a week\"\n", "retention.window must be a duration"),
        ("[retention]\ntimezone = \"Mars/Olympus\"\n", "retention.timezone 'Mars/Olympus' is not a time zone"),
        ("[daemon]\nevery = \"0s\"\n", "daemon.every must be a duration"),
        ("[daemon]\nevery = \"6h\"\ncron = \"0 3 * * *\"\n", "daemon.every and daemon.cron are both set"),
        ("[daemon]\nstatus_interval = 0\n", "daemon.status_interval must be a number of seconds above 0"),
        ("[daemon]\nevery = \"6h\"\nfull_every = \"27\"\n",
         "daemon.full_every must be a duration with its unit such as \"7d\" or \"12h\" (units s, m, h, d, w; at most "
         "100 years) or a count such as \"27 incrementals\" (1 to 1000), not '27'"),
        ("[daemon]\ncron = \"0 */6 * * *\"\nfull_every = \"0 incrementals\"\n", "daemon.full_every must be"),
        ("[daemon]\nfull_every = \"7d\"\n", "daemon.full_every is set but there is no backup schedule"),
        ("[daemon]\nevery = \"6h\"\nfull_every = 7\n", "key 'daemon.full_every': expected str | null, got int"),
        ("[status]\nbackup_max_age = \"soon\"\n", "status.backup_max_age must be a duration"),
    ],
)
def test_operations_sections_are_checked_when_loaded(section, expected):
    message = config_error(MINIMAL + section)
    assert expected in message


def test_full_every_is_parsed_once_loaded():
    daemon = config.parse(tomllib.loads(MINIMAL + '[daemon]\nevery = "6h"\nfull_every = "7d"\n'), SOURCE).daemon
    assert daemon.full_every_rule == config.FullEvery(7 * 86400, None)
    assert config.parse(tomllib.loads(MINIMAL), SOURCE).daemon.full_every_rule is None


def test_the_most_incrementals_is_the_longest_chain():
    # config.py cannot import the catalog (which imports it): the two are kept equal here.
    assert config.MAX_INCREMENTALS == documents.MAX_CHAIN


def test_the_example_configuration_names_every_key():
    """conf/pitrkit.toml says it lists every key: hold it to that, section by section
    (optional sections and unset keys appear commented out)."""
    example = (Path(__file__).parents[2] / "conf" / "pitrkit.toml").read_text()
    config.parse(tomllib.loads(example), "conf/pitrkit.toml")
    sections = {"repository": config.RepositoryConfig, "postgres": config.PostgresConfig,
                "compression": config.CompressionConfig, "agent": config.AgentConfig, "backup": config.BackupConfig,
                "receive": config.ReceiveConfig, "encryption": config.EncryptionConfig,
                "retention": config.RetentionConfig, "daemon": config.DaemonConfig, "drill": config.DrillConfig,
                "status": config.StatusConfig}
    headers = list(re.finditer(r"^(?:# )?\[(?P<name>[a-z]+)\]$", example, re.MULTILINE))
    texts = {header["name"]: example[header.end():following.start() if following else None]
             for header, following in zip(headers, [*headers[1:], None], strict=True)}
    assert texts.keys() == sections.keys()
    for name, kind in sections.items():
        text = texts[name]
        for field in kind.__struct_fields__:
            assert f"\n{field} = " in text or f"\n# {field} = " in text, f"[{name}] {field} is not in the example"


def test_a_standby_backup_names_its_primary_and_bounds_the_lag():
    backup = parse(MINIMAL).backup
    assert backup.primary_conninfo is None  # a standby is refused until it is set
    assert backup.standby_max_lag_bytes == 1 << 30
    backup = parse(MINIMAL + '[backup]\nprimary_conninfo = "host=db1 user=backup"\nstandby_max_lag = "64MB"\n').backup
    assert (backup.primary_conninfo, backup.standby_max_lag_bytes) == ("host=db1 user=backup", 64 << 20)
    assert parse(MINIMAL + "[backup]\nstandby_max_lag = 0\n").backup.standby_max_lag_bytes == 0


@pytest.mark.parametrize(("section", "expected"), [
    ('primary_conninfo = ""', "backup.primary_conninfo must be a libpq connection string to the primary, not empty"),
    ('primary_conninfo = "  "', "backup.primary_conninfo must be a libpq connection string"),
    ('primary_conninfo = "host=db1\\u0000"', "backup.primary_conninfo must be a libpq connection string"),
    ("primary_conninfo = 5432", "key 'backup.primary_conninfo': expected str | null, got int"),
    ('standby_max_lag = "1 GiB"', "backup.standby_max_lag must be a number of bytes or a size such as \"1GB\""),
    ("standby_max_lag = -1", "backup.standby_max_lag must be"),
    ('standby_max_lag = "2000000TB"', "at most 1 EiB"),
    ('standby_max_lag = "10s"', "backup.standby_max_lag must be"),
    ('primary_conn_info = "host=db1"', "unknown key 'backup.primary_conn_info' (did you mean 'primary_conninfo'?)"),
])
def test_standby_settings_out_of_range_are_one_line(section, expected):
    assert expected in config_error(f"{MINIMAL}[backup]\n{section}\n")
