"""`pitrkit status` over several repositories (ops/status.collect_all) on synthetic local
archives: a required one that holds everything, an optional one that lags (it misses
the newest WAL and a backup), one that is not there; and the views of that report: the
text, the page, the JSON and /metrics with a `repository` label."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pitrkit.config import Config, RepositoryConfig, RetentionConfig
from pitrkit.ops import status
from pitrkit.ops.status import StatusFailed, StatusReport
from pitrkit.storage.repositories import open_all
from pitrkit.views import json as json_view
from pitrkit.views.html import html_page
from pitrkit.views.metrics import metrics_text
from pitrkit.views.text import status_summary, status_text
from pitrkit.wal import spool as wal_spool
from tests.unit.synthetic_archive import SyntheticArchive, name
from tests.unit.test_status import NOW, levels, message

NOT_ASKED = status.Archiver(reachable=False, problem="[postgres] conninfo is not set")


def entry(root: Path, name: str, required: bool = True, **settings) -> RepositoryConfig:
    spool = {} if required else {"spool": str(root.parent / "spool")}
    return RepositoryConfig(url=f"file://{root}", name=name, retries=0, required=required, **spool, **settings)


def collect(*entries: RepositoryConfig, **sections) -> StatusReport:
    config = Config(repository=list(entries), **sections)
    return status.collect_all(open_all(config), config, now=NOW, archiver=NOT_ASKED)


@pytest.fixture
def local(tmp_path) -> SyntheticArchive:
    store = SyntheticArchive(tmp_path / "local")
    store.segments(1, 1, 20)
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 10, 11)
    return store


@pytest.fixture
def cloud(tmp_path) -> SyntheticArchive:
    """Behind local: segments 18 to 20 and backup B never reached it."""
    store = SyntheticArchive(tmp_path / "cloud")
    store.segments(1, 1, 17)
    store.backup("A", 1, 2, 3)
    return store


def test_an_optional_repository_that_lags_is_a_warn_naming_what_it_misses(local, cloud):
    report = collect(entry(local.root, "local"), entry(cloud.root, "cloud", required=False))
    assert report.overall == "WARN"
    # The report's own figures are the reference's, judged as with one repository.
    assert (report.archive, report.backups, report.last_wal and report.last_wal.name) == (
        f"file://{local.root}", 2, name(1, 20))
    assert levels(report)["repository local"] == "OK"
    assert levels(report)["repository cloud"] == "WARN"
    said = message(report, "repository cloud")
    assert f"behind local: misses 3 WAL files (oldest {name(1, 18)}) and backup B" in said
    assert "optional" in said and f"newest WAL {name(1, 17)}" in said
    first, second = report.repositories
    assert (first.name, first.reference, first.missing, first.level) == ("local", True, None, "OK")
    assert second.missing is not None
    assert (second.missing.compared_with, second.missing.wal_files, second.missing.oldest_wal,
            second.missing.newest_wal, second.missing.backups) == ("local", 3, name(1, 18), name(1, 20), ["B"])
    assert (second.backups, second.last_backup and second.last_backup.backup_id) == (1, "A")
    # The spool's place comes from the configuration; what waits in it, from the spool.
    assert second.spool is not None
    assert (second.spool.directory, second.spool.max_bytes, second.spool.files_waiting, second.spool.behind) == (
        str(cloud.root.parent / "spool" / "cloud"), 4 * 1024**3, 0, False)


def test_wal_waiting_in_an_optional_repositorys_spool_is_a_warn_with_its_figures(local, tmp_path):
    """Even where the comparison finds nothing missing (the repository took the file, or
    a copy landed after the push gave up on it), what waits in the spool is shown."""
    twin = SyntheticArchive(tmp_path / "twin")
    twin.segments(1, 1, 20)
    twin.backup("A", 1, 2, 3)
    twin.backup("B", 1, 10, 11)
    optional = entry(twin.root, "twin", required=False)
    wal_spool.keep(optional, name(1, 21), b"16 bytes of WAL!")
    report = collect(entry(local.root, "local"), optional)
    state = report.repositories[1]
    assert state.missing is not None and not state.missing.behind
    assert state.spool is not None
    assert (state.spool.files_waiting, state.spool.bytes_waiting, state.spool.behind, state.spool.oldest_waiting) == (
        1, 16, False, name(1, 21))
    assert (state.level, levels(report)["repository twin"]) == ("WARN", "WARN")


def test_a_repository_that_holds_everything_is_ok(local, tmp_path):
    twin = SyntheticArchive(tmp_path / "twin")
    twin.segments(1, 1, 20)
    twin.backup("A", 1, 2, 3)
    twin.backup("B", 1, 10, 11)
    report = collect(entry(local.root, "local"), entry(twin.root, "twin", required=False))
    assert report.overall == "OK", report.checks
    missing = report.repositories[1].missing
    assert missing is not None and not missing.behind and missing.wal_files == 0


def test_an_unreachable_optional_repository_is_a_warn_and_a_required_one_a_fail(local, cloud, tmp_path):
    gone = tmp_path / "not-mounted"
    report = collect(entry(local.root, "local"), entry(cloud.root, "cloud", required=False),
                     entry(gone, "dr", required=False))
    assert (report.overall, levels(report)["repository dr"]) == ("WARN", "WARN")
    dr = report.repositories[2]
    assert (dr.reachable, dr.missing, dr.backups) == (False, None, 0)
    assert "optional, cannot be read: " in message(report, "repository dr")

    report = collect(entry(local.root, "local"), entry(gone, "second"))
    assert (report.overall, levels(report)["repository second"]) == ("FAIL", "FAIL")
    assert "repository second: required, cannot be read" in status_summary(report)


def test_the_first_required_repository_that_answers_is_the_reference(local, cloud, tmp_path):
    report = collect(entry(tmp_path / "not-mounted", "first"), entry(cloud.root, "cloud", required=False),
                     entry(local.root, "local"))
    assert report.archive == f"file://{local.root}"
    assert [each.reference for each in report.repositories] == [False, False, True]
    assert report.overall == "FAIL"  # the first, required, cannot be read
    assert report.repositories[1].missing is not None and report.repositories[1].missing.backups == ["B"]


def test_no_required_repository_readable_fails_the_status_naming_each(cloud, tmp_path):
    with pytest.raises(StatusFailed, match="no required repository can be read: repository 'first': "):
        collect(entry(tmp_path / "not-mounted", "first"), entry(cloud.root, "cloud", required=False))


def test_a_required_repositorys_own_failure_fails_and_an_optional_ones_only_warns(local, tmp_path):
    empty = SyntheticArchive(tmp_path / "empty")  # an archive with no backup: nothing restores from it
    report = collect(entry(local.root, "local"), entry(empty.root, "empty", required=False))
    assert levels(report)["repository empty"] == "WARN"
    assert "backup: the archive holds no finished backup" in message(report, "repository empty")
    report = collect(entry(local.root, "local"), entry(empty.root, "empty"))
    assert (report.overall, levels(report)["repository empty"]) == ("FAIL", "FAIL")


def test_with_its_own_retention_what_is_older_than_its_oldest_backup_is_not_missing(local, tmp_path):
    """A cloud repository whose retention removed backup A and the WAL before B holds all
    its policy keeps: not behind. Without a policy, the same repository misses them."""
    trimmed = SyntheticArchive(tmp_path / "trimmed")
    trimmed.segments(1, 10, 20)
    trimmed.backup("B", 1, 10, 11)
    kept = collect(entry(local.root, "local"),
                   entry(trimmed.root, "trimmed", required=False, retention=RetentionConfig(keep_last=1)))
    missing = kept.repositories[1].missing
    assert missing is not None and not missing.behind, missing
    unkept = collect(entry(local.root, "local"), entry(trimmed.root, "trimmed", required=False))
    missing = unkept.repositories[1].missing
    assert missing is not None
    assert (missing.wal_files, missing.oldest_wal, missing.backups) == (9, name(1, 1), ["A"])


def test_one_repository_is_the_one_repository_report(local):
    config = Config(repository=entry(local.root, "repo1"))
    alone = status.collect_all(open_all(config), config, now=NOW, archiver=NOT_ASKED)
    assert alone == status.collect(local.archive, config, now=NOW, archiver=NOT_ASKED)
    assert alone.repositories == []


def test_the_views_show_each_repository(local, cloud, tmp_path):
    report = collect(entry(local.root, "local"), entry(cloud.root, "cloud", required=False),
                     entry(tmp_path / "not-mounted", "dr", required=False))
    text = status_text(report)
    assert "WARN  repository cloud  optional" in text
    assert f"repository local: OK required, file://{local.root}; the figures above are its own" in text
    assert "repository cloud: WARN optional" in text
    assert f"spool {tmp_path / 'spool' / 'cloud'} (at most 4.0 GiB), 0 files waiting" in text
    page = html_page(report, None, refresh_seconds=30)
    assert '<table id="repositories">' in page and "<th>cloud</th>" in page
    document = json.loads(json_view.render(report))
    assert [each["name"] for each in document["repositories"]] == ["local", "cloud", "dr"]
    assert document["repositories"][1]["missing"]["backups"] == ["B"]

    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(metrics_text(report, None)) for sample in family.samples}
    assert samples[("pitrkit_repository_up", (("repository", "dr"),))] == 0
    assert samples[("pitrkit_repository_status", (("repository", "cloud"),))] == 1
    assert samples[("pitrkit_repository_missing_wal_files", (("repository", "cloud"),))] == 3
    assert samples[("pitrkit_repository_missing_backups", (("repository", "cloud"),))] == 1
    assert ("pitrkit_repository_missing_backups", (("repository", "local"),)) not in samples
    # The existing names, one series per repository that answered.
    assert samples[("pitrkit_backups", (("repository", "local"),))] == 2
    assert samples[("pitrkit_backups", (("repository", "cloud"),))] == 1
    assert ("pitrkit_backups", ()) not in samples
    assert samples[("pitrkit_wal_gaps", (("repository", "cloud"), ("timeline", "1")))] == 0
    assert samples[("pitrkit_last_wal_archived_age_seconds", (("repository", "cloud"),))] == \
        (NOW - (NOW - timedelta(minutes=5) - timedelta(minutes=3))).total_seconds()
