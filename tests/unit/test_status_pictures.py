"""The status page's pictures (views/svg.py) and the report fields they are drawn from
(ops/status.py: backup_marks, wal_per_hour, the gaps' bounds, retention.window_start),
on synthetic archives (synthetic_archive.py: 1 GiB segments, 4 per folder, segment n
stored at T0 + n minutes). Each picture is parsed as XML, and what it names is read
from its elements, as a browser's DOM would hold it."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from pitrkit.config import DrillConfig, RetentionConfig
from pitrkit.ops.status import WAL_HOURS, BackupMark, StatusReport, WalHour
from pitrkit.progress import show_time
from pitrkit.views.html import html_page
from pitrkit.views.svg import backup_sizes_svg, drills_svg, timelines_svg, wal_per_hour_svg
from tests.unit.synthetic_archive import SyntheticArchive, lsn, name, stored_at
from tests.unit.test_status import FACTS, NOW, collect, drill


@pytest.fixture
def store(tmp_path) -> SyntheticArchive:
    synthetic = SyntheticArchive(tmp_path / "archive")
    synthetic.segments(1, 1, 20)
    return synthetic


def parsed(svg: str) -> ElementTree.Element:
    return ElementTree.fromstring(svg)


def titles(svg: str) -> list[str]:
    return [element.text or "" for element in parsed(svg).iter("title")]


def texts(svg: str) -> list[str]:
    return [element.text or "" for element in parsed(svg).iter("text")]


def test_the_gaps_bounds_and_where_points_restore_again(store):
    store.backup("A", 1, 2, 3)
    after = store.backup("B", 1, 10, 11)
    store.drop_segment(1, 6)
    store.drop_segment(1, 14)  # after the newest backup: nothing after it restores
    [timeline] = collect(store).timelines
    between, last = timeline.gaps
    assert (between.missing_segment, between.resumes_at, between.after_backup) == (name(1, 6), name(1, 7), "A")
    assert (between.missing_lsn, between.resumes_lsn) == (lsn(6), lsn(7))
    assert (between.before_stored_at, between.resumes_stored_at) == (stored_at(5), stored_at(7))
    assert between.restorable_again_at == after.stop_time
    assert (last.missing_segment, last.after_backup, last.restorable_again_at) == (name(1, 14), "B", None)
    assert (last.before_stored_at, last.resumes_stored_at) == (stored_at(13), stored_at(15))


def test_wal_per_hour_counts_the_weeks_segments_by_store_time(tmp_path):
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 8, at=NOW - timedelta(days=9))  # older than the week: not counted
    store.segments(1, 9, 12, at=NOW - timedelta(hours=3))  # 09:25 to 09:28
    store.segments(1, 13, 20)  # 12:13 to 12:20
    report = collect(store)
    per = report.wal_per_hour
    assert per is not None
    assert per.since == datetime(2026, 11, 23, 12, tzinfo=UTC) - timedelta(hours=WAL_HOURS - 1)
    assert [(hour.hour, hour.segments) for hour in per.hours] == [
        (datetime(2026, 11, 23, 9, tzinfo=UTC), 4), (datetime(2026, 11, 23, 12, tzinfo=UTC), 8)]
    assert [hour.stored_bytes for hour in per.hours] == [sum(len(b"segment %d" % n) for n in numbers)
                                                         for numbers in (range(9, 13), range(13, 21))]
    bars = [title for title in titles(wal_per_hour_svg(report)) if " UTC: " in title]
    assert bars == [f"2026-11-23 09:00 UTC: 4 segments, {per.hours[0].stored_bytes} B stored",
                    f"2026-11-23 12:00 UTC: 8 segments, {per.hours[1].stored_bytes} B stored"]


def test_the_timeline_names_each_backup_the_gap_and_the_retention_window(store):
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 10, 11)
    store.backup("C", 1, 14, 15, parent="B", chain=["B"])
    store.drop_segment(1, 6)
    report = collect(store, retention=RetentionConfig(keep_last=3, window="15m"))
    assert report.retention.window_start == NOW - timedelta(minutes=15)
    assert [(mark.backup_id, mark.backup_type, mark.usable) for mark in report.backup_marks] == [
        ("A", "full", True), ("B", "full", True), ("C", "incremental", True)]
    svg = timelines_svg(report)
    root = parsed(svg)
    backups = {element.get("data-backup"): element.get("data-type") for element in root.iter("g")
               if element.get("class") == "backup"}
    assert backups == {"A": "full", "B": "full", "C": "incremental"}
    said = titles(svg)
    for backup_id in "ABC":
        assert any(title.startswith(f"backup {backup_id} (") for title in said), said
    [gap] = [title for title in said if title.startswith("gap: ")]
    assert gap.startswith(f"gap: segment {name(1, 6)} is missing (LSN {lsn(6)} to {lsn(7)}) after backup A; "
                          f"WAL resumes at {name(1, 7)}; nothing restores from 2026-11-23 12:05 UTC to ")
    assert f"gap {name(1, 6)}" in texts(svg)
    assert {"A", "B", "C"} <= set(texts(svg))  # room for every label at this scale
    assert any(title.startswith("retention window from 2026-11-23 12:10 UTC") for title in said)
    assert any(title.startswith("timeline 1 restorable from 2026-11-23 12:02 UTC (backup A)") for title in said)


def test_a_broken_chain_is_drawn_as_not_usable(store):
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 6, 7, parent="A")
    store.backup("C", 1, 10, 11, parent="B")
    (store.root / "backups/B/manifest.json").unlink()
    report = collect(store)
    assert [(mark.backup_id, mark.usable) for mark in report.backup_marks] == [("A", True), ("C", False)]
    assert any(title.startswith("backup C (incremental, chain broken: not usable)")
               for title in titles(timelines_svg(report)))


def test_an_archive_without_wal_or_backups_says_so_in_each_picture(tmp_path):
    report = collect(SyntheticArchive(tmp_path / "archive"))
    assert report.backup_marks == [] and report.timelines == []
    assert texts(timelines_svg(report)) == ["no WAL in the archive: no timeline to draw"]
    assert texts(backup_sizes_svg(report)) == ["no backup in the last 5 weeks"]
    assert parsed(wal_per_hour_svg(report)).tag == "svg"


def test_one_backup_and_hundreds_both_read(store):
    store.backup("A", 1, 2, 3)
    report = collect(store)
    assert "A" in texts(timelines_svg(report)) and "A" in texts(backup_sizes_svg(report))
    [mark] = report.backup_marks
    many = [msgspec.structs.replace(mark, backup_id=f"2026112{n:04d}", start_time=NOW - timedelta(hours=n + 1),
                                    stop_time=NOW - timedelta(hours=n, minutes=30), size_bytes=1000 + n)
            for n in range(300)]
    crowded = msgspec.structs.replace(report, backup_marks=many)
    for svg in (timelines_svg(crowded), backup_sizes_svg(crowded)):
        said = titles(svg)
        # Every backup has its hover title; labels only where there is room for them.
        for mark in many:
            assert any(f"backup {mark.backup_id} (" in title for title in said)
        labels = [text for text in texts(svg) if text.startswith("2026112")]
        assert 3 <= len(labels) < 40, labels


def test_every_value_is_escaped_in_the_pictures(store):
    store.backup("A<img src=x>&", 1, 2, 3)
    report = collect(store)
    report = msgspec.structs.replace(report, wal_per_hour=msgspec.structs.replace(
        report.wal_per_hour, hours=[WalHour(hour=NOW.replace(minute=0), segments=1, stored_bytes=1)]))
    for svg in (timelines_svg(report), backup_sizes_svg(report), wal_per_hour_svg(report)):
        assert "<img" not in svg
        parsed(svg)  # well-formed: every value escaped
    assert "A&lt;img src=x&gt;&amp;" in timelines_svg(report)


def test_the_page_embeds_the_pictures_without_scripts_or_external_assets(store):
    store.backup("A", 1, 2, 3)
    page = html_page(collect(store), None, refresh_seconds=30)
    for svg_id in ("timelines-chart", "wal-chart", "sizes-chart"):
        assert page.count(f'<svg id="{svg_id}"') == 1
    assert "<script" not in page and "href=" not in page and "src=" not in page
    assert "http" not in page.replace("http-equiv", "")


def mark_of(report: StatusReport, backup_id: str) -> BackupMark:
    return next(mark for mark in report.backup_marks if mark.backup_id == backup_id)


def test_backup_sizes_show_each_backups_files_and_stored_bytes(store):
    full = store.backup("A", 1, 2, 3)
    store.backup("B", 1, 6, 7, parent="A")
    report = collect(store)
    assert (mark_of(report, "A").size_bytes, mark_of(report, "A").stored_bytes) == (full.size, full.stored_size)
    said = titles(backup_sizes_svg(report))
    assert f"backup A (full), stopped 2026-11-23 12:02 UTC: 1000 B of files, {full.stored_size / 1024:.1f} KiB " \
           "stored" in said
    assert any(title.startswith("backup B (incremental), stopped") for title in said)


# --- restore drills (drills/<id>.json, ops/drill.py) -----------------------------------------


def drill_marks(svg: str) -> dict[str, tuple[str, ElementTree.Element]]:
    """drill id: (its result, its mark's group)."""
    return {element.get("data-drill") or "": (element.get("data-result") or "", element)
            for element in parsed(svg).iter("g") if element.get("class") == "drill"}


def bar_height(group: ElementTree.Element) -> float:
    [bar] = group.iter("rect")
    return float(bar.get("height") or "nan")


def test_a_scheduled_drill_that_never_ran_says_so_and_no_drill_draws_nothing(store):
    store.backup("b1", 1, 2, 3)
    assert "drills-chart" not in html_page(collect(store), None, refresh_seconds=30)
    report = collect(store, drill=DrillConfig(every="1d"))
    assert texts(drills_svg(report)) == ["no restore drill has run yet"]
    page = html_page(report, None, refresh_seconds=30)
    assert page.count('<svg id="drills-chart"') == 1 and "every 1d" in page


def test_one_passed_drill_shows_its_rto_backup_and_wal_replayed(store):
    store.backup("b1", 1, 2, 3)
    passed = drill(store, -3, "passed", rto=12.5)
    svg = drills_svg(collect(store))
    [(result, group)] = drill_marks(svg).values()
    assert result == "passed" and drill_marks(svg).keys() == {passed.drill_id}
    assert bar_height(group) == 100.0  # the tallest RTO fills the plot
    assert titles(svg)[1:] == [f"drill {passed.drill_id} passed 2026-11-23 12:17 UTC: backup b1, RTO 12.5s, "
                               "1.0 GiB of WAL replayed"]
    assert "passed 12.5s" in texts(svg)


def test_a_failed_drill_without_rto_is_a_cross_naming_its_reason(store):
    store.backup("b1", 1, 2, 3)
    passed = drill(store, -4, "passed", rto=30)
    failed = drill(store, -2, "failed", rto=None, reason="stored object backups/b1/part is corrupt")
    svg = drills_svg(collect(store))
    marks = drill_marks(svg)
    assert {key: result for key, (result, _) in marks.items()} == {passed.drill_id: "passed",
                                                                   failed.drill_id: "failed"}
    cross = marks[failed.drill_id][1]
    assert [element.tag.split("}")[-1] for element in cross] == ["title", "path"]
    assert cross.findtext("title") == (f"drill {failed.drill_id} failed 2026-11-23 12:18 UTC: backup b1, no RTO, "
                                       "1.0 GiB of WAL replayed: stored object backups/b1/part is corrupt")
    assert "failed" in texts(svg) and "passed 30s" in texts(svg)


def test_ten_drills_each_have_a_mark_and_bars_scale_with_their_rto(store):
    store.backup("b1", 1, 2, 3)
    reports = [drill(store, -minute, "passed" if minute % 4 else "failed", rto=10.0 * minute)
               for minute in range(1, 11)]
    report = collect(store)
    assert report.drills is not None and len(report.drills.recent) == 10
    svg = drills_svg(report)
    marks = drill_marks(svg)
    assert marks.keys() == {each.drill_id for each in reports}
    heights = {key: bar_height(group) for key, (_, group) in marks.items()}
    assert [heights[each.drill_id] for each in reports] == [10.0 * minute for minute in range(1, 11)]
    assert [marks[each.drill_id][0] for each in reports] == [each.result for each in reports]
    assert sum(title.startswith("drill ") for title in titles(svg)) == 10
    assert 1 <= len([text for text in texts(svg) if text.startswith(("passed", "failed"))]) <= 10


def test_drill_values_are_escaped_in_the_picture(store):
    store.backup("b1", 1, 2, 3)
    drill(store, -1, "failed", rto=None, reason="<img src=x> & more")
    svg = drills_svg(collect(store))
    assert "<img" not in svg and "&lt;img src=x&gt; &amp; more" in svg
    parsed(svg)


def test_the_page_shows_the_daemons_drill_schedule_next_to_the_picture(store):
    store.backup("b1", 1, 2, 3)
    drill(store, -1, "passed")
    report = collect(store, drill=DrillConfig(every="7d"))
    facts = msgspec.structs.replace(FACTS, drill_schedule="every 7d", next_drill_at=NOW + timedelta(days=6),
                                    drill_running=False, drills_run=4, drill_failures=1)
    page = html_page(report, facts, refresh_seconds=30)
    picture, table = page.index('<svg id="drills-chart"'), page.index('<table id="drills">')
    assert picture < table < page.index('<table id="last-backup">')
    drills_table = page[table:page.index("</table>", table)]
    for said in ("every 7d", show_time(NOW + timedelta(days=6)), "4 ended, 1 failed since the daemon started"):
        assert said in drills_table, drills_table
    running = html_page(report, msgspec.structs.replace(facts, drill_running=True), refresh_seconds=30)
    assert "<th>next drill</th><td>running now</td>" in running
