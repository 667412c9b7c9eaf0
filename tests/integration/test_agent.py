"""The agent (pitrkit/wal/agent.py, pitrkit/wal/agent_client.py, pitrkit/entry.py) as
PostgreSQL meets it: the installed `pitrkit` executable run as the server user, first
in-process, then handing over to a long-lived agent. What must hold: the agent really
serves, a dead or stale agent never costs a WAL file, configuration changes apply to the
next request, and nothing but the user's own private socket is ever trusted."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from pitrkit.storage import objects
from pitrkit.wal import agent_client
from tests.unit.segments import SYSID, segment

import pgharness

pytestmark = pytest.mark.integration

SEGMENT_SIZE = 16 << 20


@pytest.fixture(autouse=True)
def initialised(pitrkit_setup):
    """The archive, created for the cluster tests/unit/segments.py's WAL comes from."""
    pitrkit_setup.init_for_synthetic_wal(SYSID, SEGMENT_SIZE)


@pytest.fixture
def pg_wal(server_tmp):
    return pgharness.make_server_dir(server_tmp / "pg_wal")


def write_segment(directory, segno: int) -> str:
    name = f"00000001{0:08X}{segno:08X}"
    (directory / name).write_bytes(segment(segno, filler=os.urandom(64 << 10)))
    pgharness.give_to_server_user(directory / name)
    return name


def run(setup, *args, cwd):
    return pgharness.run_as_server_user(["/bin/sh", "-c", setup.command(*args)], cwd=cwd,
                                        env=setup.env, check=False)


def push(setup, directory, name):
    result = run(setup, "wal-push", name, cwd=directory)  # relative %p, as the archiver gives it
    assert result.returncode == 0, result.stderr
    return result


def started_agent(setup) -> int:
    """The agent's pid, once it accepts connections (it is started in the background, so
    a process may exist a moment before its socket listens)."""
    path = setup.runtime_dir / "pitrkit" / os.path.basename(agent_client.socket_path(os.fsencode(str(setup.config))))

    def listening() -> bool:
        with socket.socket(socket.AF_UNIX) as probe:  # an empty request: the agent declines it
            try:
                probe.connect(str(path))
            except OSError:
                return False
            return True

    pgharness.wait_for(listening, 20, what="the agent to listen")
    # Calls made before it listened may have started more agents; those find the lock
    # taken and exit at once.
    pids = pgharness.wait_for(lambda: len(setup.agent_pids()) == 1 and setup.agent_pids(), 20,
                              what="exactly one agent")
    return pids[0]


def bytes_read(pid: int) -> int:
    with open(f"/proc/{pid}/io") as io:
        return int(next(line for line in io if line.startswith("rchar:")).split()[1])


def test_agent_serves_push_and_fetch(pitrkit_setup, pg_wal):
    push(pitrkit_setup, pg_wal, write_segment(pg_wal, 1))
    agent = started_agent(pitrkit_setup)

    # The agent, not the client, read the next segment: its read counter grows by it.
    before = bytes_read(agent)
    second = write_segment(pg_wal, 2)
    push(pitrkit_setup, pg_wal, second)
    assert bytes_read(agent) - before >= SEGMENT_SIZE // 100  # the compressed object at least
    assert pitrkit_setup.stored(second).exists()

    destination = pgharness.make_server_dir(pg_wal.parent / "restore")
    before = bytes_read(agent)
    result = run(pitrkit_setup, "wal-fetch", second, str(destination / "RECOVERYXLOG"), cwd=destination)
    assert result.returncode == 0, result.stderr
    assert (destination / "RECOVERYXLOG").read_bytes() == (pg_wal / second).read_bytes()
    assert bytes_read(agent) > before

    missing = run(pitrkit_setup, "wal-fetch", "000000010000000000000077", str(destination / "x"), cwd=destination)
    assert missing.returncode == 1 and "not in the archive" in missing.stderr


def test_agent_answers_refusals_like_the_process_would(pitrkit_setup, pg_wal):
    push(pitrkit_setup, pg_wal, write_segment(pg_wal, 1))
    started_agent(pitrkit_setup)
    name = write_segment(pg_wal, 1)  # same name, new random content
    result = run(pitrkit_setup, "wal-push", name, cwd=pg_wal)
    assert result.returncode == 1
    assert result.stderr.startswith("pitrkit: ") and "different content" in result.stderr


def test_killed_agent_costs_nothing(pitrkit_setup, pg_wal):
    push(pitrkit_setup, pg_wal, write_segment(pg_wal, 1))
    first = started_agent(pitrkit_setup)
    os.kill(first, 9)
    pgharness.wait_for(lambda: not pitrkit_setup.agent_pids(), 10, what="the agent to die")

    # Its stale socket is still there; the next call falls back, then starts a new agent.
    name = write_segment(pg_wal, 2)
    push(pitrkit_setup, pg_wal, name)
    assert pitrkit_setup.stored(name).exists()
    assert started_agent(pitrkit_setup) != first


def test_configuration_change_applies_to_the_next_request(pitrkit_setup, pg_wal):
    # An idle timeout no pause of a loaded machine reaches: the agent must be the same one
    # because it reloaded, not by luck of timing.
    pitrkit_setup.write_config(idle_timeout=300)
    push(pitrkit_setup, pg_wal, write_segment(pg_wal, 1))
    agent = started_agent(pitrkit_setup)

    pitrkit_setup.write_config(compression="none")
    name = write_segment(pg_wal, 2)
    push(pitrkit_setup, pg_wal, name)
    header, _ = objects.read_header(name, pitrkit_setup.stored(name).read_bytes())
    assert header.compression == "none"
    assert pitrkit_setup.agent_pids() == [agent]  # the same agent, reloaded


def test_disabling_the_agent_stops_it(pitrkit_setup, pg_wal):
    push(pitrkit_setup, pg_wal, write_segment(pg_wal, 1))
    started_agent(pitrkit_setup)

    pitrkit_setup.write_config(agent=False)
    name = write_segment(pg_wal, 2)
    push(pitrkit_setup, pg_wal, name)  # declined by the agent, done in-process
    assert pitrkit_setup.stored(name).exists()
    pgharness.wait_for(lambda: not pitrkit_setup.agent_pids(), 10, what="the agent to stop")
    push(pitrkit_setup, pg_wal, write_segment(pg_wal, 3))
    assert not pitrkit_setup.agent_pids()  # and none is started while disabled


def test_idle_agent_exits(pitrkit_setup, pg_wal):
    push(pitrkit_setup, pg_wal, write_segment(pg_wal, 1))
    started_agent(pitrkit_setup)
    # idle_timeout is 5 s in the test configuration
    pgharness.wait_for(lambda: not pitrkit_setup.agent_pids(), 30, what="the idle agent to exit")
    assert not list((pitrkit_setup.runtime_dir / "pitrkit").glob("*.sock"))


def test_socket_in_a_shared_directory_is_never_trusted(pitrkit_setup, pg_wal):
    """An impostor that answers "0" without archiving anything must not be believed:
    the client only talks to sockets in a directory private to its own user."""
    pitrkit_setup.write_config(agent=False)  # no real agent to compete with the impostor
    directory = pitrkit_setup.runtime_dir / "pitrkit"
    directory.mkdir(mode=0o755)
    pgharness.give_to_server_user(directory)
    os.chmod(directory, 0o755)  # owned by the right user, but readable by everyone
    path = agent_client.socket_path(os.fsencode(str(pitrkit_setup.config)))
    path = str(directory / os.path.basename(path))
    impostor = socket.socket(socket.AF_UNIX)
    impostor.bind(path)
    os.chmod(path, 0o777)
    impostor.listen()
    served, done = [], threading.Event()

    def lie():
        impostor.settimeout(0.1)
        while not done.is_set():
            try:
                connection, _ = impostor.accept()
            except TimeoutError:
                continue
            with connection:
                served.append(connection.recv(65536))
                connection.sendall(b"0\0")

    thread = threading.Thread(target=lie)
    thread.start()
    name = write_segment(pg_wal, 1)
    try:
        push(pitrkit_setup, pg_wal, name)
    finally:
        done.set()
        thread.join()
        impostor.close()
    assert not served
    assert pitrkit_setup.stored(name).exists()


# --- look-ahead ---------------------------------------------------------------------------


def mark_ready(directory, name: str) -> None:
    status = directory / "archive_status"
    if not status.exists():
        pgharness.make_server_dir(status)
    (status / f"{name}.ready").touch()
    pgharness.give_to_server_user(status / f"{name}.ready")


def test_backlog_is_pushed_before_it_is_asked_for(pitrkit_setup, pg_wal):
    names = [write_segment(pg_wal, segno) for segno in range(1, 6)]
    for name in names:
        mark_ready(pg_wal, name)
    push(pitrkit_setup, pg_wal, names[0])  # in-process; starts the agent
    started_agent(pitrkit_setup)
    push(pitrkit_setup, pg_wal, names[1])  # served by the agent, which sees 3, 4, 5 ready

    # Nobody asked for these yet; the agent pushed them on its own.
    pgharness.wait_for(lambda: all(pitrkit_setup.stored(n).exists() for n in names[2:]), 30,
                       what="segments pushed ahead")
    for name in names[2:]:
        push(pitrkit_setup, pg_wal, name)


def test_file_changed_after_push_ahead_is_checked_again(pitrkit_setup, pg_wal):
    names = [write_segment(pg_wal, segno) for segno in range(1, 4)]
    for name in names:
        mark_ready(pg_wal, name)
    push(pitrkit_setup, pg_wal, names[0])
    started_agent(pitrkit_setup)
    push(pitrkit_setup, pg_wal, names[1])
    pgharness.wait_for(lambda: pitrkit_setup.stored(names[2]).exists(), 30, what="push ahead")

    write_segment(pg_wal, 3)  # new content under the name already pushed ahead
    result = run(pitrkit_setup, "wal-push", names[2], cwd=pg_wal)
    assert result.returncode == 1 and "different content" in result.stderr


def test_object_removed_after_push_ahead_is_pushed_again(pitrkit_setup, pg_wal):
    names = [write_segment(pg_wal, segno) for segno in range(1, 4)]
    for name in names:
        mark_ready(pg_wal, name)
    push(pitrkit_setup, pg_wal, names[0])
    started_agent(pitrkit_setup)
    push(pitrkit_setup, pg_wal, names[1])
    stored = pitrkit_setup.stored(names[2])
    pgharness.wait_for(stored.exists, 30, what="push ahead")

    stored.unlink()  # e.g. the archive was wiped after the push ahead
    push(pitrkit_setup, pg_wal, names[2])  # exit 0 must mean: it is in the archive now
    assert stored.exists()


@pytest.mark.parametrize("swap", ["unmounted", "another archive"])
def test_a_push_done_ahead_is_not_trusted_once_the_archive_is_swapped(pitrkit_setup, pg_wal, swap):
    """Segment 3 was pushed ahead; then the archive's file system went away (an empty
    mount point) or another archive was mounted in its place, one that happens to hold
    a segment 3 (another cluster's: names repeat across clusters). Exit 0 would let
    PostgreSQL recycle a segment that is in no archive of this cluster."""
    names = [write_segment(pg_wal, segno) for segno in range(1, 4)]
    for name in names:
        mark_ready(pg_wal, name)
    push(pitrkit_setup, pg_wal, names[0])
    agent = started_agent(pitrkit_setup)
    push(pitrkit_setup, pg_wal, names[1])
    pgharness.wait_for(pitrkit_setup.stored(names[2]).exists, 30, what="push ahead")

    moved = pitrkit_setup.unmount()
    if swap == "another archive":
        pitrkit_setup.init_for_synthetic_wal(SYSID + 1, SEGMENT_SIZE)
        stored = pitrkit_setup.stored(names[2])
        pgharness.make_server_dir(stored.parent.parent)
        pgharness.make_server_dir(stored.parent)
        stored.write_bytes((moved / stored.relative_to(pitrkit_setup.archive)).read_bytes())
        pgharness.give_to_server_user(stored)
    result = run(pitrkit_setup, "wal-push", names[2], cwd=pg_wal)
    assert result.returncode == 1, result.stderr
    assert ("pitrkit init" if swap == "unmounted" else str(SYSID + 1)) in result.stderr
    assert pitrkit_setup.agent_pids() == [agent]  # the agent answered, and lives on


def test_the_agent_answers_for_the_archive_as_it_is_now(pitrkit_setup, pg_wal):
    """The agent read archive.json a moment ago; the archive's file system then went
    away. A push must be refused (not stored on the empty mount point) and a fetch must
    be a fault (exit 126, not "not archived", which would end recovery early)."""
    first, second = write_segment(pg_wal, 1), write_segment(pg_wal, 2)
    push(pitrkit_setup, pg_wal, first)
    agent = started_agent(pitrkit_setup)
    destination = pgharness.make_server_dir(pg_wal.parent / "restore")
    fetched = run(pitrkit_setup, "wal-fetch", first, str(destination / "RECOVERYXLOG"), cwd=destination)
    assert fetched.returncode == 0, fetched.stderr

    pitrkit_setup.unmount()
    pushed = run(pitrkit_setup, "wal-push", second, cwd=pg_wal)
    assert pushed.returncode == 1 and "pitrkit init" in pushed.stderr, pushed.stderr
    assert list(pitrkit_setup.archive.iterdir()) == []
    for name in (first, second, "00000002.history"):
        fetched = run(pitrkit_setup, "wal-fetch", name, str(destination / "RECOVERYXLOG"), cwd=destination)
        assert fetched.returncode >= 126 and "archive.json" in fetched.stderr, fetched.stderr
    assert pitrkit_setup.agent_pids() == [agent]


def archived_through_an_agent(setup, pg_wal: Path, count: int) -> tuple[list[str], int, Path]:
    """Segments 1..count archived (the first starts the agent, which pushes the rest), the
    agent's pid, and an empty directory for recovery to fetch into."""
    names = [write_segment(pg_wal, segno) for segno in range(1, count + 1)]
    push(setup, pg_wal, names[0])
    agent = started_agent(setup)
    for name in names[1:]:
        push(setup, pg_wal, name)
    return names, agent, pgharness.make_server_dir(pg_wal.parent / "restore")


def test_recovery_reads_ahead_but_never_trusts_an_absence(pitrkit_setup, pg_wal):
    names, agent, destination = archived_through_an_agent(pitrkit_setup, pg_wal, 4)

    def fetch(name):
        return run(pitrkit_setup, "wal-fetch", name, str(destination / "RECOVERYXLOG"), cwd=destination)

    leftover = destination / ".pitrkit-ahead.000000010000000000000099"  # of an agent killed earlier
    leftover.write_bytes(b"stale")
    before = bytes_read(agent)
    assert fetch(names[0]).returncode == 0
    # Segments 2-4 are read ahead into spool files beside the destination (and 5, which
    # is not archived yet, is not).
    ahead = sum(pitrkit_setup.stored(name).stat().st_size for name in names[1:])
    pgharness.wait_for(lambda: bytes_read(agent) - before >= ahead, 4, what="read-ahead")
    spooled = [destination / f".pitrkit-ahead.{name}" for name in names[1:]]
    pgharness.wait_for(lambda: all(path.exists() for path in spooled), 4, what="spool files")
    assert not leftover.exists()
    for name, path in zip(names[1:], spooled, strict=True):
        result = fetch(name)
        assert result.returncode == 0, result.stderr
        assert (destination / "RECOVERYXLOG").read_bytes() == (pg_wal / name).read_bytes()
        assert not path.exists()  # served by a rename

    # Segment 5 was absent when read ahead; archived since, it must be found.
    fifth = write_segment(pg_wal, 5)
    push(pitrkit_setup, pg_wal, fifth)
    result = fetch(fifth)
    assert result.returncode == 0, result.stderr
    assert (destination / "RECOVERYXLOG").read_bytes() == (pg_wal / fifth).read_bytes()


def test_segments_spooled_but_never_asked_for_are_removed_when_the_agent_exits(pitrkit_setup, pg_wal):
    names, agent, destination = archived_through_an_agent(pitrkit_setup, pg_wal, 3)
    result = run(pitrkit_setup, "wal-fetch", names[0], str(destination / "RECOVERYXLOG"), cwd=destination)
    assert result.returncode == 0, result.stderr
    spooled = [destination / f".pitrkit-ahead.{name}" for name in names[1:]]
    pgharness.wait_for(lambda: all(path.exists() for path in spooled), 4, what="spool files")

    # Recovery ended (say, at its target) and asks for nothing more: the agent idles out.
    pgharness.wait_for(lambda: not os.path.exists(f"/proc/{agent}"), 30, what="the agent to exit")
    assert [path.name for path in destination.iterdir()] == ["RECOVERYXLOG"]


# --- who the agent serves -------------------------------------------------------------------


def squat_by_another_user(directory: Path) -> None:
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)  # nobody's


def squat_with_a_symlink(directory: Path) -> None:
    target = pgharness.make_server_dir(directory.with_name("elsewhere"), mode=0o700)
    directory.symlink_to(target)


def squat_open_to_others(directory: Path) -> None:
    pgharness.make_server_dir(directory, mode=0o700)
    os.chmod(directory, 0o777)


@pytest.mark.parametrize("squat", [squat_by_another_user, squat_with_a_symlink, squat_open_to_others])
def test_squatted_socket_directory_means_in_process_with_one_warning(pitrkit_setup, pg_wal, squat):
    """A socket directory the user cannot trust: every call works in-process, says so
    once, and starts no agent (one that could only refuse to serve from there)."""
    squat(pitrkit_setup.runtime_dir / "pitrkit")
    for segno in (1, 2):
        name = write_segment(pg_wal, segno)
        result = push(pitrkit_setup, pg_wal, name)
        assert pitrkit_setup.stored(name).exists()
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "not a directory private to uid" in lines[0], result.stderr
    assert not pitrkit_setup.agent_pids()


def test_agent_socket_is_private_whatever_the_umask(pitrkit_setup, pg_wal):
    name = write_segment(pg_wal, 1)
    result = run(pitrkit_setup, "wal-push", name, cwd=pg_wal)
    assert result.returncode == 0, result.stderr
    # The next call, from a shell with a permissive umask, starts nothing new; the agent
    # started by the first call (which inherited umask 022 from this shell) must not care.
    started_agent(pitrkit_setup)
    directory = pitrkit_setup.runtime_dir / "pitrkit"
    created = list(directory.iterdir())
    assert created
    for path in created:
        assert os.lstat(path).st_mode & 0o077 == 0, f"{path.name}: {oct(os.lstat(path).st_mode)}"


def test_agent_refuses_a_peer_of_another_user(pitrkit_setup, pg_wal):
    """Even when its directory and socket are opened up to everyone, the agent answers
    only its own user: another user's request gets no reply (its client would then work
    in-process, with its own permissions)."""
    push(pitrkit_setup, pg_wal, write_segment(pg_wal, 1))
    started_agent(pitrkit_setup)
    name = write_segment(pg_wal, 2)
    directory = pitrkit_setup.runtime_dir / "pitrkit"
    socket_path = directory / os.path.basename(agent_client.socket_path(os.fsencode(str(pitrkit_setup.config))))
    os.chmod(pitrkit_setup.runtime_dir, 0o711)
    os.chmod(directory, 0o711)
    os.chmod(socket_path, 0o777)
    request = agent_client.parse_request(["--config", str(pitrkit_setup.config), "wal-push", str(pg_wal / name)])
    assert request is not None
    payload = b"\0".join(request)
    client = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"s.connect({str(socket_path)!r})\n"
        "reply = b''\n"
        "try:\n"
        f"    s.sendall({payload!r})\n"
        "    s.shutdown(socket.SHUT_WR)\n"
        "    while chunk := s.recv(65536):\n"
        "        reply += chunk\n"
        "except (ConnectionResetError, BrokenPipeError):\n"
        "    pass  # closed unanswered, as agent_client.ask_agent takes it\n"
        "sys.stdout.write(repr(reply))\n"
    )
    # Debian's interpreter, not sys.executable: the test's venv may sit under a
    # directory that user 65534 cannot enter (a CI checkout under a 0700 home).
    result = subprocess.run(["/usr/bin/python3", "-c", client], user=65534, group=65534, capture_output=True,
                            text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "b''"
    assert not pitrkit_setup.stored(name).exists()
