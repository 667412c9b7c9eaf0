"""What backup-push copies from outside the data directory (backup/config_capture.py),
and the configuration restore writes from it (restore/server_config.py: the rewriting,
on files; the servers are in tests/integration/test_server_config.py)."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import msgspec
import pytest
from psycopg.conninfo import conninfo_to_dict

from pitrkit.backup import config_capture
from pitrkit.backup.config_capture import capture
from pitrkit.catalog.documents import CAPTURED_DIR, ServerConfiguration
from pitrkit.errors import RefusedError
from pitrkit.postgres.config_files import parse_setting
from pitrkit.restore import pgstart, server_config


def test_settings_are_read_as_the_server_reads_them():
    parse = parse_setting
    assert parse("port = 5433   # comment") == ("port", "5433")
    assert parse("  Include_Dir 'conf.d'") == ("include_dir", "conf.d")
    assert parse(r"archive_command = 'it''s \\ here'") == ("archive_command", "it's \\ here")
    assert parse("# port = 5433") is None
    assert parse("") is None


def make_host(tmp_path: Path) -> tuple[Path, Path]:
    """A backed-up host's layout: /etc-like directory with includes, and a data directory."""
    etc, data = tmp_path / "etc", tmp_path / "data"
    (etc / "conf.d").mkdir(parents=True)
    data.mkdir()
    (etc / "postgresql.conf").write_text(
        f"data_directory = '{data}'\nhba_file = '{etc}/pg_hba.conf'\nident_file = '{etc}/pg_ident.conf'\n"
        f"external_pid_file = '/var/run/postgresql/15-main.pid'\nport = 5432\n"
        "unix_socket_directories = '/nonexistent/run'\ncluster_name = '15/main'\n"
        "ssl = on\nssl_cert_file = '/nonexistent/snakeoil.pem'\n"
        "include 'extra.conf'\ninclude_if_exists 'absent.conf'\ninclude_dir = 'conf.d'\n"
        f"include = '{data}/inside.conf'\n")
    (etc / "extra.conf").write_text("work_mem = '7MB'\ninclude 'nested.conf'\n")
    (etc / "nested.conf").write_text("maintenance_work_mem = '77MB'\n"
                                     "promote_trigger_file = '/var/run/postgresql/promote'\n")
    (etc / "conf.d" / "10-a.conf").write_text("log_directory = '/var/log/postgresql'\n")
    (etc / "conf.d" / "20-b.conf").write_text("shared_buffers = '32MB'\n")
    (etc / "conf.d" / "notes.txt").write_text("not read\n")
    (etc / "pg_hba.conf").write_text('local all all peer\ninclude "hba.d/more.conf"\n')
    (etc / "hba.d").mkdir()
    (etc / "hba.d" / "more.conf").write_text("host all all 127.0.0.1/32 trust\n")
    (etc / "pg_ident.conf").write_text("")
    (data / "inside.conf").write_text("temp_buffers = '9MB'\n")
    return etc, data


def capture_and_unpack(tmp_path: Path) -> tuple[Path, Path, ServerConfiguration, Path]:
    """What backup-push copies, laid into a new data directory as unpack would."""
    etc, data = make_host(tmp_path)
    configuration, captured, inside = capture(str(data), str(etc / "postgresql.conf"),
                                              str(etc / "pg_hba.conf"), str(etc / "pg_ident.conf"), {})
    assert inside == ["postgresql.auto.conf", "inside.conf"]  # scrubbed as they are copied
    target = tmp_path / "restored"
    (target / CAPTURED_DIR).mkdir(parents=True)
    (target / "inside.conf").write_text((data / "inside.conf").read_text())
    (target / "postgresql.auto.conf").write_text("port = '6000'\nexternal_pid_file = '/tmp/x.pid'\n")
    for each in captured:
        (target / CAPTURED_DIR / each.record.name).write_bytes(each.content)
    return etc, data, configuration, target


def test_capture_follows_the_include_lines_outside_the_data_directory(tmp_path):
    etc, data, configuration, _ = capture_and_unpack(tmp_path)
    roles = {Path(file.path).relative_to(etc).as_posix(): file.role for file in configuration.files}
    assert roles == {"postgresql.conf": "config_file", "extra.conf": "include", "nested.conf": "include",
                     "conf.d/10-a.conf": "include", "conf.d/20-b.conf": "include", "pg_hba.conf": "hba_file",
                     "hba.d/more.conf": "hba_include", "pg_ident.conf": "ident_file"}
    for file in configuration.files:
        assert file.sha256 == hashlib.sha256(Path(file.path).read_bytes()).hexdigest()
        assert "/" not in file.name
    assert configuration.data_directory == str(data)


def test_the_restored_configuration_points_nowhere_outside_the_data_directory(tmp_path):
    etc, data, configuration, target = capture_and_unpack(tmp_path)
    said: list[str] = []
    server_config.write(target, configuration, server_config.Choices(True, 5499, None), said.append)
    conf = (target / "postgresql.conf").read_text()
    effective, files = server_config._effective(target)
    values = {name: setting.value for name, setting in effective.items()}
    # Nothing of the backed-up host is read, pointed at or overwritten.
    for path in files + [target / "pg_hba.conf", target / "pg_ident.conf"]:
        for line in path.read_text().splitlines():
            active = line.partition("#")[0]
            assert str(etc) not in active and str(data) not in active and "/var/" not in active, (path, line)
    for name in ("data_directory", "hba_file", "ident_file", "external_pid_file", "log_directory"):
        assert name not in values
    # The settings of every file read still apply, in the restored copies.
    assert values["work_mem"] == "7MB" and values["maintenance_work_mem"] == "77MB"
    assert values["shared_buffers"] == "32MB" and values["temp_buffers"] == "9MB"
    assert "include_if_exists 'absent.conf'" in conf and "commented out" in " ".join(said)
    # The restored copy's own settings, once each, and said.
    assert values["port"] == "5499" and "port = '6000'" not in (target / "postgresql.auto.conf").read_text().split(
        "#")[0]
    assert values["unix_socket_directories"] == str(target)
    assert values["cluster_name"] == "15/main-restored"
    assert values["ssl"] == "off" and "ssl_cert_file" not in values
    assert any("ssl = 'off'" in line and "/nonexistent/snakeoil.pem" in line for line in said)
    # pg_hba.conf's include (PostgreSQL 16+) reads the restored copy.
    hba = (target / "pg_hba.conf").read_text()
    assert f'include "{server_config.INCLUDE_DIR}/' in hba and "hba.d" not in hba.partition("#")[0]
    assert not (target / CAPTURED_DIR).exists()
    assert sorted(os.listdir(target / server_config.INCLUDE_DIR)) == sorted(
        file.name for file in configuration.files if file.role.endswith("include"))


def test_postgresql_auto_conf_includes_nothing_from_outside_the_restored_directory(tmp_path):
    # postgresql.auto.conf is restored as it was, and a hand edit can include any file:
    # the restored copy must not read it, nor restore rewrite it (the port block would).
    _, _, configuration, target = capture_and_unpack(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = "port = 5432\ncluster_name = 'other'\nexternal_pid_file = '/x.pid'\n"
    (elsewhere / "other.conf").write_text(other)
    (target / "postgresql.auto.conf").write_text(
        f"port = '6000'\ninclude = '{elsewhere}/other.conf'\ninclude_if_exists = '../elsewhere/other.conf'\n"
        f"include_dir = '{elsewhere}'\ninclude = 'inside.conf'\n")
    said: list[str] = []
    server_config.write(target, configuration, server_config.Choices(True, 5499, None), said.append)
    assert (elsewhere / "other.conf").read_text() == other
    assert not [line for line in (target / "postgresql.auto.conf").read_text().splitlines()
                if "elsewhere" in line.partition("#")[0]]
    assert [line for line in said if line.startswith("  postgresql.auto.conf: include")] == [
        f"  postgresql.auto.conf: include '{elsewhere}/other.conf' commented out: the file is not in the backup",
        "  postgresql.auto.conf: include_if_exists '../elsewhere/other.conf' commented out: the file is not in "
        "the backup",
        f"  postgresql.auto.conf: include_dir '{elsewhere}' commented out: nothing of it is in the backup"]
    effective, files = server_config._effective(target)
    assert all(path.is_relative_to(target) for path in files)
    assert effective["port"].value == "5499" and effective["cluster_name"].value == "15/main-restored"
    assert effective["temp_buffers"].value == "9MB"  # inside.conf, in the restored directory: still included


def test_no_file_is_read_or_rewritten_through_a_link_out_of_the_restored_directory(tmp_path):
    # A backup's tablespace links (pg_tblspc/<oid>) lead out of the target; a link to a
    # file is followed by nothing either.
    etc, data, configuration, target = capture_and_unpack(tmp_path)
    space = tmp_path / "space"
    space.mkdir()
    (space / "x.conf").write_text("port = 5432\nexternal_pid_file = '/x.pid'\n")
    (target / "pg_tblspc").mkdir()
    (target / "pg_tblspc" / "16390").symlink_to(space)
    (target / "linked.conf").symlink_to(space / "x.conf")
    (target / "postgresql.auto.conf").write_text(
        "include = 'pg_tblspc/16390/x.conf'\ninclude_dir = 'pg_tblspc/16390'\ninclude 'linked.conf'\n")
    # ... nor is an hba_file that the link leads to copied in as pg_hba.conf.
    configuration = msgspec.structs.replace(configuration, hba_file=f"{data}/pg_tblspc/16390/x.conf",
                                            files=[file for file in configuration.files if file.role != "hba_file"])
    said: list[str] = []
    server_config.write(target, configuration, server_config.Choices(True, 5499, None), said.append)
    assert (space / "x.conf").read_text() == "port = 5432\nexternal_pid_file = '/x.pid'\n"
    assert (target / "linked.conf").is_symlink() and os.listdir(space) == ["x.conf"]
    assert "x.pid" not in (target / "pg_hba.conf").read_text()
    assert len([line for line in said if line.startswith("  postgresql.auto.conf: include")
                and "commented out" in line]) == 3
    effective, files = server_config._effective(target)
    assert not [path for path in files if path.is_symlink() or not path.resolve().is_relative_to(target)]
    assert effective["port"].value == "5499" and "external_pid_file" not in effective


def test_a_backup_without_a_recorded_configuration_keeps_its_includes_inside_the_data_directory(tmp_path):
    # A backup taken before pitrkit recorded the configuration: the lines are read
    # relative to the restored directory, where the server reads them.
    target = tmp_path / "restored"
    (target / "conf.d").mkdir(parents=True)
    (target / "postgresql.conf").write_text("include 'memory.conf'\ninclude_dir 'conf.d'\n")
    (target / "memory.conf").write_text("work_mem = '7MB'\n")
    (target / "conf.d" / "a.conf").write_text("temp_buffers = '9MB'\n")
    (target / "postgresql.auto.conf").write_text("include_if_exists = 'more.conf'\ninclude '/etc/elsewhere.conf'\n")
    (target / "more.conf").write_text("maintenance_work_mem = '77MB'\n")
    said: list[str] = []
    server_config.write(target, None, server_config.Choices(True, None, None), said.append)
    values = {name: setting.value for name, setting in server_config._effective(target)[0].items()}
    assert values == {"work_mem": "7MB", "temp_buffers": "9MB", "maintenance_work_mem": "77MB"}
    assert "  postgresql.auto.conf: include '/etc/elsewhere.conf' commented out: the file is not in the backup" in said


def test_promote_trigger_file_is_commented_out_wherever_it_is_set(tmp_path):
    # PostgreSQL 15 and older promote a server in recovery when this file appears: a path
    # the primary chose would have the restored copy promote on someone else's cue.
    _, _, configuration, target = capture_and_unpack(tmp_path)
    (target / "postgresql.auto.conf").write_text("promote_trigger_file = 'promote.auto'\n")
    said: list[str] = []
    server_config.write(target, configuration, server_config.Choices(True, None, None), said.append)
    assert "promote_trigger_file" not in server_config._effective(target)[0]
    nested = next(file.name for file in configuration.files if file.path.endswith("/nested.conf"))
    assert [line for line in said if ": promote_trigger_file" in line] == [
        f"  {server_config.INCLUDE_DIR}/{nested}: promote_trigger_file = '/var/run/postgresql/promote' commented "
        "out (the backed-up server's)",
        "  postgresql.auto.conf: promote_trigger_file = 'promote.auto' commented out (the backed-up server's)"]
    # The data directory's own postgresql.conf, here of a backup that recorded no configuration.
    own = tmp_path / "own"
    own.mkdir()
    (own / "postgresql.conf").write_text("promote_trigger_file = '/var/lib/postgresql/promote'\n")
    server_config.write(own, None, server_config.Choices(True, None, None), said.append)
    assert "promote_trigger_file" not in server_config._effective(own)[0]
    assert said[-1] == ("  postgresql.conf: promote_trigger_file = '/var/lib/postgresql/promote' commented out "
                        "(the backed-up server's)")


def test_config_files_none_writes_a_minimal_configuration(tmp_path):
    _, _, configuration, target = capture_and_unpack(tmp_path)
    said: list[str] = []
    server_config.write(target, configuration, server_config.Choices(False, 5499, None), said.append)
    effective, _ = server_config._effective(target)
    assert {name: setting.value for name, setting in effective.items()} == {"port": "5499"}
    assert "local   all       all                 peer" in (target / "pg_hba.conf").read_text()
    assert not (target / CAPTURED_DIR).exists() and not (target / server_config.INCLUDE_DIR).exists()
    assert "external_pid_file" in " ".join(said)  # postgresql.auto.conf's, commented out


def test_a_copy_that_does_not_match_the_manifest_is_refused(tmp_path):
    _, _, configuration, target = capture_and_unpack(tmp_path)
    name = configuration.files[0].name
    (target / CAPTURED_DIR / name).write_text("port = 1\n")
    with pytest.raises(Exception, match="does not match its size and checksum"):
        server_config.write(target, configuration, server_config.Choices(True, None, None), print)


def test_capture_leaves_out_a_file_whose_path_has_a_newline(tmp_path):
    # restore shows each path on a line of its own: such a record would be refused.
    etc, data = make_host(tmp_path)
    odd = etc / "odd\nname.conf"
    odd.write_text("work_mem = '1MB'\n")
    configuration, captured, _ = capture(str(data), str(etc / "postgresql.conf"),
                                                    str(etc / "pg_hba.conf"), str(etc / "pg_ident.conf"),
                                                    {"include": [str(odd)]})
    assert str(odd) not in [file.path for file in configuration.files]
    assert len(captured) == len(configuration.files) == 8


# --- --start: the server's own words, and the port ------------------------------------------

NO_CONFIG_LOG = """\
postgres: could not access the server configuration file "/srv/restored/postgresql.conf": No such file or directory
"""
BUSY_PORT_LOG = """\
2026-12-06 04:10:01.100 UTC [100] LOG:  starting PostgreSQL 15.18
2026-12-06 04:10:01.101 UTC [100] LOG:  could not bind IPv4 address "127.0.0.1": Address already in use
2026-12-06 04:10:01.101 UTC [100] HINT:  Is another postmaster already running on port 5499? If not, wait a few \
seconds and retry.
2026-12-06 04:10:01.101 UTC [100] WARNING:  could not create listen socket for "localhost"
2026-12-06 04:10:01.102 UTC [100] FATAL:  could not create any TCP/IP sockets
2026-12-06 04:10:01.103 UTC [100] LOG:  database system is shut down
"""


def test_a_server_that_does_not_start_is_quoted():
    assert pgstart.failure_reason(NO_CONFIG_LOG) == (
        'could not access the server configuration file "/srv/restored/postgresql.conf": No such file or directory')
    reason = pgstart.failure_reason(BUSY_PORT_LOG)
    assert reason is not None and reason.startswith("could not create any TCP/IP sockets (")
    assert "Address already in use" in reason and "port 5499" in reason


def test_a_busy_port_is_refused():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert pgstart.port_in_use(port)
        with pytest.raises(RefusedError, match=f"--port {port} is in use"):
            pgstart.choose_port(port)
    assert not pgstart.port_in_use(port)


# --- a standby's primary_conninfo: its password never stored -------------------------------

SECRET = "s3cr3t"


@pytest.mark.parametrize(("line", "kept"), [
    # As pg_basebackup -R writes it into postgresql.auto.conf (libpq's quoting inside the GUC's).
    (f"primary_conninfo = 'user=rep password={SECRET} host=''/run/pg'' port=5432 sslmode=prefer "
     "application_name=standby1'", "user=rep host=/run/pg port=5432 sslmode=prefer application_name=standby1"),
    (f"PRIMARY_CONNINFO='postgresql://rep:{SECRET}@db1:5433/?sslpassword={SECRET}x'",
     "user=rep host=db1 port=5433"),
])
def test_a_primary_conninfo_keeps_everything_but_its_secrets(line, kept):
    text = f"# written by pg_basebackup\n{line}\r\nhot_standby = on\n".encode()
    clean = config_capture.scrubbed(text)
    assert SECRET.encode() not in clean
    first, setting, last, end = clean.split(b"\n")
    assert (first, last, end) == (b"# written by pg_basebackup", b"hot_standby = on", b"")
    assert setting.endswith(b"removed by pitrkit backup-push\r")
    parsed = parse_setting(setting.decode().rstrip("\r"))
    assert parsed is not None and parsed.name == "primary_conninfo"
    assert conninfo_to_dict(parsed.value) == conninfo_to_dict(kept)


@pytest.mark.parametrize("line", [
    f"#primary_conninfo = 'host=db1 password={SECRET}'",  # commented out: a secret all the same
    f"primary_conninfo = 'host=db1 password={SECRET} h1dden'",  # libpq cannot read it
])
def test_a_primary_conninfo_line_that_cannot_be_read_goes_whole(line):
    clean = config_capture.scrubbed(f"port = 5432\n{line}\n".encode())
    assert clean == b"port = 5432\n# a line setting primary_conninfo with a password, removed by pitrkit backup-push\n"


@pytest.mark.parametrize("text", [
    b"primary_conninfo = 'host=db1 user=rep passfile=''/var/lib/postgresql/.pgpass'''\n",
    b"#primary_conninfo = ''\t# the sample's line\n",
    b"\xff\xfe not UTF-8, no setting\n",
])
def test_a_file_without_a_password_is_stored_as_it_is(text):
    assert config_capture.scrubbed(text) == text


def test_captured_settings_files_are_stored_scrubbed(tmp_path):
    etc, data = make_host(tmp_path)
    (etc / "conf.d" / "20-b.conf").write_text(f"primary_conninfo = 'host=db1 password={SECRET}'\n")
    (etc / "pg_hba.conf").write_text(f"# primary_conninfo password={SECRET}: pg_hba.conf has no settings\n")
    _, captured, _ = capture(str(data), str(etc / "postgresql.conf"), str(etc / "pg_hba.conf"),
                             str(etc / "pg_ident.conf"), {})
    stored = {Path(each.record.path).name: each for each in captured}
    assert SECRET.encode() not in stored["20-b.conf"].content
    assert stored["20-b.conf"].record.sha256 == hashlib.sha256(stored["20-b.conf"].content).hexdigest()
    assert stored["20-b.conf"].record.size == len(stored["20-b.conf"].content)
    assert SECRET.encode() in stored["pg_hba.conf"].content  # only settings files are rewritten
