"""The client half of the agent protocol (the agent itself is wal/agent.py): the request a
wal-push / wal-fetch command line becomes, the socket that serves its configuration, and
the agent's answer.

PostgreSQL starts `pitrkit wal-push` / `wal-fetch` once per WAL segment, and starting
Python plus importing pitrkit's dependencies (msgspec, pluggy, tomllib, zstandard) costs
more than compressing the segment. So the first call does its work in-process and then
starts an agent: a long-lived `pitrkit agent` process for the same configuration, with
everything imported and the archive open. Later calls connect to its unix socket, hand
over the request, wait for the answer (sent only once the work is durable, or the file
is written) and exit with the agent's exit code. This module is all that such a call
imports besides entry.py, and it imports nothing heavier than the interpreter already
has, so a handed-over call costs little more than `python -c pass`.

Anything unexpected on the way to the agent (no socket, a socket directory that is not
private to this user, a dead agent, a reply cut short) falls back to doing the work
in-process, which is always safe: pushes are idempotent and fetches write atomically.
"""

from __future__ import annotations

# `_socket` rather than `socket`: the wrapper module pulls in enum and selectors, which
# costs ~2 ms here, a tenth of a handed-over call.
import _socket
import os
import zlib

from pitrkit import __version__

PROTOCOL = b"pitrkit-agent-1"
HANDED_OVER = ("wal-push", "wal-fetch")
DEFAULT_CONFIG = "/etc/pitrkit/pitrkit.toml"
# How long a client waits for the agent's answer before doing the work itself. Storage
# calls inside the agent are bounded far below this; it guards against a stuck agent.
REPLY_TIMEOUT = 900.0


def parse_request(argv: list[str]) -> list[bytes] | None:
    """The agent request for `[--config PATH] wal-push P` or `[--config PATH] wal-fetch F P
    [--until SEGMENT] [--era N]`; None for anything else (other commands, -v, unusual
    spellings), which then goes through the full argument parser in-process. wal-fetch's
    options travel as `--until=SEGMENT` and `--era=N` after F and P."""
    config = os.environ.get("PITRKIT_CONFIG") or DEFAULT_CONFIG
    if len(argv) >= 2 and argv[0] == "--config":
        config, argv = argv[1], argv[2:]
    elif argv and argv[0].startswith("--config="):
        config, argv = argv[0].partition("=")[2], argv[1:]
    named: dict[str, str] = {}
    if argv and argv[0] == "wal-fetch":
        argv, rest = argv[:3], argv[3:]
        while len(rest) >= 2 and rest[0] in ("--until", "--era") and rest[0] not in named:
            named[rest[0]] = rest[1]
            rest = rest[2:]
        if rest:
            return None
    if not argv or argv[0] not in HANDED_OVER or len(argv) != (2 if argv[0] == "wal-push" else 3):
        return None
    if any(not arg or arg.startswith("-") for arg in [*argv[1:], *named.values()]):
        return None
    command, *args = argv
    if command == "wal-push":
        args = [os.path.abspath(args[0])]
    else:
        args = [args[0], os.path.abspath(args[1]), *(f"{name}={value}" for name, value in named.items())]
    return [PROTOCOL, os.fsencode(os.path.abspath(config)), command.encode(), *map(os.fsencode, args)]


def prefetch_request(config: str, directory: str, names: list[str], era: int = 1) -> list[bytes]:
    """The request that asks the agent to read the WAL segments `names` of era `era` ahead
    into the spool in `directory` (a restored pg_wal, before its server starts)."""
    return [PROTOCOL, os.fsencode(os.path.abspath(config)), b"wal-prefetch", os.fsencode(directory),
            *map(os.fsencode, names), *([f"--era={era}".encode()] if era != 1 else [])]


def socket_directory() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "pitrkit")
    return f"/tmp/pitrkit-{os.geteuid()}"


def socket_path(config: bytes) -> str:
    """One agent per user, pitrkit version and configuration file. The version is in the
    name so that an upgrade never talks to an agent running the old code."""
    return os.path.join(socket_directory(), f"agent-{__version__}-{zlib.crc32(config):08x}.sock")


def private_directory(path: str) -> bool:
    """True if `path` is a real directory owned by us that nobody else can write to or
    read: a socket in a directory another user controls could be an impostor."""
    try:
        status = os.lstat(path)
    except OSError:
        return False
    return (
        status.st_uid == os.geteuid()
        and (status.st_mode & 0o170000) == 0o040000  # a directory, not a symlink
        and status.st_mode & 0o077 == 0
    )


def ask_agent(request: list[bytes]) -> tuple[int, str] | None:
    """The agent's (exit code, stderr text), or None if there is no usable agent."""
    path = socket_path(request[1])
    if not private_directory(os.path.dirname(path)):
        return None
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        connection.settimeout(REPLY_TIMEOUT)
        connection.connect(path)
        connection.sendall(b"\0".join(request))
        connection.shutdown(_socket.SHUT_WR)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        connection.close()
    return decode_reply(b"".join(chunks))


def decode_reply(reply: bytes) -> tuple[int, str] | None:
    """`<exit code>\\0<stderr text>`; None for anything else (an agent that died
    mid-request, or declined it with an empty reply)."""
    code, separator, message = reply.partition(b"\0")
    if not separator or not code.isdigit():
        return None
    return int(code), message.decode("utf-8", "replace")
