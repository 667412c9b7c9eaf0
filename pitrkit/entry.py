"""The `pitrkit` executable's front door: hand a wal-push or wal-fetch to the agent, or
run the command line in this process.

PostgreSQL starts `pitrkit wal-push` / `wal-fetch` once per WAL segment, so this is the
hot path: a call the agent serves imports only this module and wal/agent_client.py (which
explains the agent). Everything else, the full command line included, is imported only
when the call is not handed over.
"""

from __future__ import annotations

import sys

from pitrkit.wal.agent_client import ask_agent, parse_request


def main() -> int:
    argv = sys.argv[1:]
    request = parse_request(argv)
    if request is not None:
        reply = ask_agent(request)
        if reply is not None:
            code, message = reply
            if message:
                sys.stderr.write(message)
            return code
    # Only when no agent served the call: the command line imports what every command
    # needs, which a handed-over wal-push or wal-fetch must not pay for (the hot path).
    from pitrkit.cli import main as run_in_process

    code = run_in_process(argv, start_agent=request is not None)
    # Only when the command ran here, and the process ends next: interpreter shutdown
    # runs full garbage collections over every object the command's imports made, which
    # with psycopg loaded cost ~100 ms of exit (backup-push: 140-210 ms from the command's
    # return to the process's end, against ~20 ms for --help). Frozen objects are left
    # out of them; the process's end frees them all the same.
    import gc

    gc.freeze()
    return code


def run() -> None:
    """Exit with `main`'s code. `python -P -c 'from pitrkit.entry import run; run()' ARGS`
    is the restore_command restore writes (restore/recovery_conf.py): the console script
    pip generates imports `re` first (~5 ms, a third of a handed-over call) and does
    nothing else of use."""
    sys.exit(main())
