"""`pitrkit status` against real PostgreSQL 15 and 18, run as the server user through the
installed `pitrkit`: its figures against what the archive and the server say, and its
verdicts when the archive loses a segment, when the server's archiver fails, and when the
server stops answering."""

from __future__ import annotations

import json
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pitrkit.config import load
from pitrkit.demo.localpg import wait_for
from pitrkit.ops.status import collect
from pitrkit.storage.archive import Archive
from pitrkit.views.metrics import metrics_text

from pitr_workload import (
    archive_everything,
    archiving_primary,
    backup_push,
    primary_with_a_backup,
    succeeded,
    write_round,
)

pytestmark = pytest.mark.integration


def status(setup) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = setup.run("status", "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result, json.loads(result.stdout)


def check(report: dict, name: str) -> dict:
    return next(found for found in report["checks"] if found["name"] == name)


def stored_segments(setup) -> list[str]:
    return sorted(path.name for path in (setup.archive / "wal").glob("*/*") if len(path.name) == 24)


def archiver_row(primary) -> tuple:
    return primary.sql("SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver")[0]


def test_status_figures_of_a_known_archive_and_fail_on_a_wal_gap(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary, backup = primary_with_a_backup(cluster, setup)
    last = archive_everything(primary)

    result, report = status(setup)
    assert result.returncode == 0, result.stderr
    assert report["overall"] == "OK", report["checks"]
    assert (report["last_backup"]["backup_id"], report["last_backup"]["size_bytes"],
            report["last_backup"]["stored_bytes"]) == (backup["backup_id"], backup["size"], backup["stored_size"])
    assert report["last_wal"]["name"] == last
    assert report["backups"] == 1
    # The archiver's figures are the server's own (nothing archives in between: no
    # archive_timeout, and no segment is switched).
    archived, failed, last_archived = archiver_row(primary)
    assert report["archiver"]["reachable"] is True
    assert (report["archiver"]["archived_count"], report["archiver"]["failed_count"],
            report["archiver"]["last_archived_wal"]) == (archived, failed, last_archived)
    assert last_archived == last
    segments = stored_segments(setup)
    assert report["size"]["wal_segments"] == len(segments)
    assert report["size"]["wal_original_bytes"] == len(segments) * 16 * 1024 * 1024
    [timeline] = report["timelines"]
    assert timeline["oldest"]["backup_id"] == backup["backup_id"]
    assert timeline["newest"]["segment"] == last
    assert timeline["gaps"] == []

    # What the daemon would serve from the same archive and server, as Prometheus text.
    config = load(setup.config)
    values = {sample.name: sample.value for family in text_string_to_metric_families(
        metrics_text(collect(Archive(config), config), None)) for sample in family.samples if not sample.labels}
    assert values["pitrkit_status"] == 0
    assert (values["pitrkit_archiver_up"], values["pitrkit_archiver_archived_total"],
            values["pitrkit_archiver_failed_total"]) == (1, archived, failed)
    assert values["pitrkit_last_backup_size_bytes"] == backup["size"]
    assert values["pitrkit_wal_segments"] == len(segments)

    # The newest WAL is older than a zero wal_max_age: WARN, still exit 0.
    with open(setup.config, "a") as config:  # appending keeps the server user's ownership
        config.write('[status]\nwal_max_age = "0s"\n')
    result, report = status(setup)
    assert result.returncode == 0, result.stderr
    assert report["overall"] == "WARN" and check(report, "wal")["level"] == "WARN"

    # A segment after the backup goes missing, with WAL after it: the latest point is
    # out of reach.
    write_round(primary, 3)
    archive_everything(primary)
    write_round(primary, 4)
    archive_everything(primary)
    after_backup = [name for name in stored_segments(setup) if name > backup["last_segment"]]
    lost, resumes = after_backup[0], after_backup[1]
    setup.stored(lost).unlink()
    result, report = status(setup)
    assert result.returncode == 2
    assert report["overall"] == "FAIL"
    assert check(report, "restorable")["level"] == "FAIL"
    assert f"segment {lost} is missing; WAL resumes at {resumes}" in check(report, "restorable")["message"]
    [gap] = report["timelines"][0]["gaps"]
    assert (gap["missing_segment"], gap["resumes_at"], gap["after_backup"]) == (lost, resumes, backup["backup_id"])
    # Its bounds, for the page's timeline: no backup after it restores.
    assert (gap["missing_lsn"], gap["resumes_lsn"], gap["restorable_again_at"]) == (
        f"{int(lost[8:16], 16):X}/{int(lost[16:], 16) << 24:X}", f"{int(resumes[8:16], 16):X}/"
        f"{int(resumes[16:], 16) << 24:X}", None)
    assert gap["before_stored_at"] is not None and gap["resumes_stored_at"] is not None
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("pitrkit: status FAIL: restorable: the latest point is not restorable")
    # The text report says the same.
    text = setup.run("status")
    assert text.returncode == 2 and text.stdout.startswith("FAIL")
    assert lost in text.stdout


def test_status_fails_while_the_archiver_fails_and_recovers_with_it(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup)
    backup_push(setup)
    archive_everything(primary)
    succeeded(setup.run("status"))

    primary.sql("ALTER SYSTEM SET archive_command = 'false'")
    primary.sql("SELECT pg_reload_conf()")
    failing = primary.switch_wal()
    wait_for(lambda: archiver_row(primary)[1] > 0, 60, interval=0.2, what="a failed archive attempt")
    result, report = status(setup)
    assert result.returncode == 2
    archiver = check(report, "archiver")
    assert archiver["level"] == "FAIL", report["checks"]
    assert f"archiving is failing: {failing} failed" in archiver["message"]
    assert report["archiver"]["last_failed_wal"] == failing
    assert report["archiver"]["failed_count"] >= 1

    primary.sql("ALTER SYSTEM RESET archive_command")
    primary.sql("SELECT pg_reload_conf()")
    primary.wait_for_archived(failing)
    result, report = status(setup)
    assert result.returncode == 0, result.stdout
    assert check(report, "archiver")["level"] == "OK"
    assert report["archiver"]["last_archived_wal"] == failing

    # The server in [postgres] conninfo stops: a WARN in one line, not an OK.
    primary.stop()
    result, report = status(setup)
    assert result.returncode == 0, result.stderr
    assert report["overall"] == "WARN" and report["archiver"]["reachable"] is False
    archiver = check(report, "archiver")
    assert archiver["level"] == "WARN", report["checks"]
    assert archiver["message"].startswith("server unreachable through [postgres] conninfo: ")
    assert "\n" not in archiver["message"]
