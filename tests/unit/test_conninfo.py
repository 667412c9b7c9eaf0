"""A malformed `[postgres] conninfo` is refused without libpq's words, which quote the
text they could not parse: a piece of a password, here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pitrkit.cli import main
from pitrkit.errors import ConfigError
from pitrkit.postgres.conninfo import connection_failure, conninfo_parameters

MALFORMED = [
    "host=/tmp port=1 password=s3cr3t h1dden",
    "host=/tmp port=1 password=s3cr3t h1dden=x",
    "postgresql://dba:s3cr3t%zz@localhost:1/postgres",
]


@pytest.mark.parametrize("conninfo", MALFORMED)
def test_libpq_would_quote_the_password(conninfo):
    """What this module guards against: without it, the error would carry the secret."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    with pytest.raises(psycopg.Error) as caught:
        conninfo_to_dict(conninfo)
    assert "s3cr3t" in str(caught.value) or "h1dden" in str(caught.value)


@pytest.mark.parametrize("conninfo", MALFORMED)
def test_a_malformed_conninfo_is_refused_without_quoting_it(conninfo):
    with pytest.raises(ConfigError) as caught:
        conninfo_parameters(conninfo)
    assert "s3cr3t" not in str(caught.value) and "h1dden" not in str(caught.value)
    assert "[postgres] conninfo is not a valid connection string" in str(caught.value)


def test_a_valid_conninfo_gives_its_parameters():
    assert conninfo_parameters("host=db port=5433 user=dba") == {"host": "db", "port": "5433", "user": "dba"}
    assert conninfo_parameters(None) == {}


@pytest.mark.parametrize("conninfo", MALFORMED)
def test_backup_push_refuses_it_in_one_line_without_the_secret(tmp_path: Path, capsys, conninfo):
    archive = tmp_path / "archive"
    archive.mkdir()
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{archive}"\n[postgres]\npgdata = "{tmp_path}"\n'
                      f"conninfo = '{conninfo}'\n")
    assert main(["--config", str(config), "backup-push"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "conninfo is not a valid connection string" in error, error
    assert "s3cr3t" not in error and "h1dden" not in error


PEER_FAILED = ('connection failed: connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed: '
               'FATAL:  Peer authentication failed for user "postgres"')


def test_a_peer_authentication_failure_says_which_os_user_to_run_as():
    import pwd

    said = connection_failure(PEER_FAILED)
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert "run as the postgres OS user (sudo -u postgres pitrkit ...)" in said
    assert f'this runs as "{me}"' in said and "peer authentication" in said
    assert "\n" not in said and said.endswith('Peer authentication failed for user "postgres")')


def test_other_connection_failures_are_libpqs_words_in_one_line():
    message = 'connection failed: connection to server on socket "/tmp/.s.PGSQL.1" failed:\n\tNo such file'
    assert connection_failure(message) == ('connection failed: connection to server on socket "/tmp/.s.PGSQL.1" '
                                           'failed: No such file')
