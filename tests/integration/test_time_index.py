"""The WAL time index end to end, on PostgreSQL 15 and 18 (issue 15, item 2): segments
archived through the agent are indexed in the background from their own records; a
plan to a time names the segment where recovery stops, for targets inside, between and
at the edges of segments, with the transactions either side; a restore to such a time
is served no segment past the planned one, with PostgreSQL's prefetcher on (`wal-fetch
--until`), and a plan whose end is wrong fails recovery instead of promoting short of
the target; an archive whose index is gone still plans (to the end of the WAL, as
before) and restores.

Commit times are the server's own (track_commit_timestamp), so that "the right segment"
is known without trusting the reader under test.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

import pgharness
from pitr_workload import (
    archive_everything,
    archiving_primary,
    backup_push,
    restore_into,
    restore_plan,
    succeeded,
    wait_until_promoted,
)

pytestmark = pytest.mark.integration


def commit(primary, batch: int, n: int) -> tuple[int, datetime]:
    """One committed transaction: its xid and commit time (the record's xact_time)."""
    xid = int(primary.sql(f"INSERT INTO marks VALUES ({batch}, {n}); SELECT txid_current()")[0][0])
    moment = primary.sql("SELECT pg_xact_commit_timestamp(%s::text::xid)", [xid])[0][0]
    return xid, moment.astimezone(UTC)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(sep=" ")


def indexed(setup, names: list[str]) -> bool:
    rows = {row["name"]: row for row in json.loads(succeeded(setup.run("wal-list", "--json")))["files"]}
    return all(rows.get(name, {}).get("indexed") for name in names)


def test_a_time_plan_stops_at_the_indexed_segment(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup, wal_segsize=1, track_commit_timestamp=True, autovacuum=False)
    primary.sql("CREATE TABLE marks (batch int, n int)")
    backup_push(setup)
    archive_everything(primary)
    # Four segments, each ending with two commits; a switch (no xid, no commit record)
    # closes each, so the commits of batch b end in segment names[b].
    batches, names = [], []
    for batch in range(4):
        batches.append([commit(primary, batch, n) for n in range(2)])
        names.append(archive_everything(primary))
    pgharness.wait_for(lambda: indexed(setup, names), 90, interval=0.5, what="the agent's time index")

    rows = {row["name"]: row for row in json.loads(succeeded(setup.run("wal-list", "--json")))["files"]}
    for batch, name in enumerate(names):
        assert datetime.fromisoformat(rows[name]["first_commit"]) == batches[batch][0][1]
        assert datetime.fromisoformat(rows[name]["last_commit"]) == batches[batch][1][1]

    (x0, t0), (x1, t1) = batches[1]
    (y0, u0), (y1, u1) = batches[2]
    micro = timedelta(microseconds=1)
    cases = [
        # inside a segment: between its two commits
        (t0 + (t1 - t0) / 2, names[1], (x0, t0), (x1, t1)),
        # between segments: after the last commit of one, before the first of the next
        (t1 + (u0 - t1) / 2, names[2], (x1, t1), (y0, u0)),
        # at the edges: a target equal to a commit time includes it (inclusive)
        (t1, names[2], (x1, t1), (y0, u0)),
        (u0 - micro, names[2], (x1, t1), (y0, u0)),
        (u0, names[2], (y0, u0), (y1, u1)),
    ]
    for target, segment, before, after in cases:
        plan = restore_plan(setup, "--to", stamp(target))
        assert plan["stop"]["segment"] == segment, (stamp(target), plan["stop"])
        assert plan["segments"][-1] == segment
        # Each as [xid, Unix microseconds].
        shown = [plan["stop"]["last_before"], plan["stop"]["first_after"]]
        assert shown == [[xid, round(moment.timestamp() * 1_000_000)] for xid, moment in (before, after)]

    # A restore between segments: restore_command serves nothing past the plan, with
    # PostgreSQL's WAL prefetcher (recovery_prefetch) at its default: it reads up to
    # 512 kB ahead of replay, past the stop, and asks for the next segments of these
    # near-empty ones; `wal-fetch --until` answers them "not archived".
    target = t1 + (u0 - t1) / 2
    restored = recovered_counting(cluster, setup, stamp(target), names[2])
    assert restored.sql("SELECT count(*) FROM marks")[0][0] == 4
    served = [line for line in (restored.directory / "served").read_text().split() if len(line) == 24]
    assert served and max(served) <= names[2], (served, names)

    # A plan that was wrong (here: its end forged one segment early) never promotes
    # short of the target: recovery runs out of WAL before it and PostgreSQL stops.
    short = recovered_counting(cluster, setup, stamp(target), names[1], promote=False)
    reason = "FATAL:  recovery ended before configured recovery target was reached"
    pgharness.wait_for(lambda: reason in short.log_tail(), 120, interval=0.5, what="the short recovery's FATAL")
    pgharness.wait_for(lambda: not short.is_running, 60, interval=0.5, what="the short recovery's server to stop")
    assert "selected new timeline ID" not in short.log_tail(), short.log_tail()

    # Across the timeline switch: the promoted copy archives on timeline 2 (through the
    # agent, as the primary did); a time between its two commits stops in its segment,
    # on a path that runs on timeline 1 up to the switch.
    assert restored.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0].startswith("00000002")
    # The planner dates a timeline from when its history file was stored: commits made
    # before the archiver got to it would seem older than the timeline.
    pgharness.wait_for(lambda: setup.stored("00000002.history").exists(), 60, what="00000002.history archived")
    (z0, v0), (z1, v1) = [commit(restored, 9, n) for n in range(2)]
    on_two = archive_everything(restored)
    pgharness.wait_for(lambda: indexed(setup, [on_two]), 90, interval=0.5, what="the time index on timeline 2")
    plan = restore_plan(setup, "--to", stamp(v0 + (v1 - v0) / 2))
    assert plan["timeline"] == 2 and plan["stop"]["segment"] == on_two == plan["segments"][-1]
    assert plan["stop"]["first_after"] == [z1, round(v1.timestamp() * 1_000_000)]
    assert any(name.startswith("00000001") for name in plan["segments"])

    # Without the index: the plan runs to the end of the WAL, with a note; `catalog
    # rebuild` makes it again from the WAL.
    for key in (setup.archive / "catalog" / "times").iterdir():
        key.unlink()
    plan = restore_plan(setup, "--to", stamp(target), "--timeline", "1")
    assert plan["stop"] is None and any("no time index entry" in note for note in plan["notes"])
    assert plan["segments"][-1] >= names[2]
    rebuilt = succeeded(setup.run("catalog", "rebuild"))
    assert "segments indexed" in rebuilt, rebuilt
    assert restore_plan(setup, "--to", stamp(target), "--timeline", "1")["stop"]["segment"] == names[2]


def recovered_counting(cluster, setup, target: str, until: str, promote: bool = True):
    """`recovered` with restore_command wrapped to note every file it serves, its
    `--until` checked to be the plan's end and then set to `until`."""
    restored, result = restore_into(cluster, setup, "--to", target)
    succeeded(result)
    served = restored.directory / "served"
    served.touch()
    pgharness.give_to_server_user(served)
    auto = restored.pgdata / "postgresql.auto.conf"
    text = auto.read_text()
    planned = restore_plan(setup, "--to", target)["fetch_until"]
    written = f" --config {setup.config} wal-fetch %f %p --until {planned}'\n"
    assert written in text, text
    auto.write_text(text.replace(written, f" --config {setup.config} wal-fetch %f %p --until {until} "
                                          f"&& echo %f >> {served}'\n"))
    restored.start(wait=promote, timeout=180)
    if promote:
        wait_until_promoted(restored)
    return restored
