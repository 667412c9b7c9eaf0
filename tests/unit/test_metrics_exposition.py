"""The daemon's /metrics against its consumers, with no Prometheus or Grafana server: the
Grafana dashboard shipped in conf/ (pitrkit/conf/grafana-dashboard.json) queries only
metrics that /metrics exports, and Debian's `promtool check metrics` (package
`prometheus`, which .ci/run installs) passes on the output. The exported names are read
from a real rendering (views/metrics.py) of a status report in which every family has
a value: an archive with backups, a gap and a `.partial`, drill reports, a sidecar's
state file, an answering server's archiver and a daemon's facts with a drill schedule,
and a second, optional repository that lags (its families carry a `repository` label)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pitrkit.config import DrillConfig, ReceiveConfig, RepositoryConfig, RetentionConfig
from pitrkit.ops import status
from pitrkit.storage.repositories import open_all
from pitrkit.views.metrics import metrics_text
from pitrkit.wal import spool as wal_spool
from pitrkit.wal.receiver_health import write_state
from tests.unit.synthetic_archive import SyntheticArchive
from tests.unit.test_status import FACTS, NOW, config_of, drill, health

CHECKOUT = Path(__file__).resolve().parents[2]
DASHBOARD = CHECKOUT / "pitrkit" / "conf" / "grafana-dashboard.json"
# A metric name in PromQL: the families all start with the prefix.
_METRIC = re.compile(r"\bpitrkit_[a-zA-Z0-9_]+")


@pytest.fixture
def exposition(tmp_path: Path) -> str:
    """/metrics as the daemon renders it, every family present."""
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 20)
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 10, 11)
    store.drop_segment(1, 6)
    store.partial(1, 21, 3, at=NOW)
    drill(store, -3, "passed")
    drill(store, -1, "failed", rto=None, reason="stored object backups/A/part is corrupt")
    spool = tmp_path / "spool"
    spool.mkdir()
    write_state(spool, health(NOW - timedelta(seconds=5), running=True))
    archiver = status.Archiver(reachable=True, timeline=1, archived_count=20, failed_count=1,
                               last_archived_wal="000000010000000500000000", last_archived_time=NOW,
                               last_failed_wal="000000010000000400000003",
                               last_failed_time=NOW - timedelta(hours=1), stats_reset=NOW - timedelta(days=1))
    behind = SyntheticArchive(tmp_path / "behind")
    behind.segments(1, 1, 15)
    behind.backup("A", 1, 2, 3)
    config = config_of(store, receive=ReceiveConfig(spool=str(spool)), retention=RetentionConfig(keep_last=2),
                       drill=DrillConfig(every="7d"))
    config = msgspec.structs.replace(config, repository=[
        msgspec.structs.replace(config.first_repository.repository, name="local"),
        RepositoryConfig(url=f"file://{behind.root}", name="cloud", required=False, spool=str(tmp_path / "wait"))])
    wal_spool.keep(config.repositories[1], "000000010000000000000010", b"WAL the cloud could not take")
    facts = msgspec.structs.replace(FACTS, drill_schedule="every 7d", next_drill_at=NOW + timedelta(days=6),
                                    drill_running=True, drills_run=4, drill_failures=1)
    return metrics_text(status.collect_all(open_all(config), config, now=NOW, archiver=archiver), facts)


def exported(text: str) -> set[str]:
    """The sample names a scrape holds (a counter's with its `_total`)."""
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def dashboard() -> dict:
    loaded: dict = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel, rows' panels included."""
    found = []
    for panel in dashboard()["panels"]:
        for each in [panel, *panel.get("panels", [])]:
            found += [(each["title"], target["expr"]) for target in each.get("targets", [])]
    return found


def test_every_family_of_the_exposition_is_rendered(exposition):
    """The fixture is what the other tests rely on: nothing is left out as unknown."""
    names = {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE")}
    for family in ("pitrkit_archiver_archived_total", "pitrkit_receiver_lag_bytes", "pitrkit_wal_gaps",
                   "pitrkit_last_wal_received_age_seconds", "pitrkit_daemon_sidecar_restarts_total",
                   "pitrkit_retention_shortfalls", "pitrkit_restorable_oldest_timestamp_seconds",
                   "pitrkit_drill_rto_seconds", "pitrkit_drill_wal_replayed_bytes", "pitrkit_drill_last_result",
                   "pitrkit_daemon_drill_failures_total", "pitrkit_daemon_next_drill_timestamp_seconds",
                   "pitrkit_repository_status", "pitrkit_repository_missing_wal_files"):
        assert family in names, exposition


def test_every_dashboard_query_names_only_metrics_that_metrics_exports(exposition):
    names = exported(exposition)
    found = queries()
    assert len(found) >= 30
    for title, expr in found:
        used = set(_METRIC.findall(expr))
        assert used, f"panel {title!r}: {expr!r} names no pitrkit metric"
        assert used <= names, f"panel {title!r}: {sorted(used - names)} not in /metrics"
        assert '{instance=~"$instance"}' in expr, f"panel {title!r}: {expr!r} ignores the instance variable"


def test_the_dashboard_charts_the_useful_metrics(exposition):
    """Everything /metrics exports is on the dashboard: the lag and age of the WAL, the
    backups' age and sizes, the restorable window, failures and the receiver."""
    used = {name for _, expr in queries() for name in _METRIC.findall(expr)}
    assert exported(exposition) - used == set()


def test_the_dashboard_has_a_datasource_variable_and_every_panel_uses_it():
    document = dashboard()
    variables = {variable["name"]: variable for variable in document["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    assert variables["instance"]["datasource"]["uid"] == "${datasource}"
    panels = [panel for panel in document["panels"] if panel["type"] != "row"]
    assert panels
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"])
        place = panel["gridPos"]
        assert 0 <= place["x"] and place["x"] + place["w"] <= 24, panel["title"]
    # No two panels overlap on Grafana's 24-column grid.
    cells = [(panel["title"], x, y) for panel in document["panels"] for x in range(
        panel["gridPos"]["x"], panel["gridPos"]["x"] + panel["gridPos"]["w"]) for y in range(
        panel["gridPos"]["y"], panel["gridPos"]["y"] + panel["gridPos"]["h"])]
    assert len({(x, y) for _, x, y in cells}) == len(cells)


def test_the_checkouts_conf_links_to_the_packaged_dashboard():
    assert (CHECKOUT / "conf" / "grafana-dashboard.json").resolve() == DASHBOARD


def test_promtool_check_metrics_passes_on_the_exposition(exposition):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (.ci/run installs Debian's prometheus)")
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    checked = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True,
                             timeout=60, check=False)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", ""), exposition
