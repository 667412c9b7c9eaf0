"""The progress line: what it says, and that it stays off the output unless asked."""

from __future__ import annotations

import io

from pitrkit.progress import Progress, human_bytes, human_seconds


def test_units():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(770 << 20) == "770.0 MiB"
    assert human_seconds(59.6) == "1m00s"
    assert human_seconds(3725) == "1h02m"
    assert human_seconds(3 * 86400 + 4 * 3600 + 59 * 60) == "3d04h"
    assert human_seconds(-5) == "0s"  # an age against a clock behind the archive's


def test_line_with_a_total_has_share_rate_and_time_left():
    progress = Progress("backup", total=100 << 20, enabled=False)
    progress.advance(25 << 20)
    started = progress._started
    line = progress.line(now=started + 1.0)
    assert line == "backup: 25.0 MiB of 100.0 MiB ( 25%), 25.0 MiB/s, 3s left"


def test_not_a_terminal_means_not_a_byte_written():
    stream = io.StringIO()
    with Progress("restoring", 10, stream=stream) as progress:  # StringIO is not a TTY
        progress.advance(10)
    assert stream.getvalue() == ""


def test_on_a_terminal_the_line_is_redrawn_in_place_and_ended():
    stream = io.StringIO()
    with Progress("restoring", 10, stream=stream, enabled=True) as progress:
        progress.advance(5)
        progress.advance(5)
    text = stream.getvalue()
    assert text.startswith("\r\x1b[Krestoring: 5 B of 10 B ( 50%)")
    assert text.rsplit("\r\x1b[K", 1)[1].startswith("restoring: 10 B of 10 B (100%), ")  # the last redraw
    assert text.endswith("\n") and text.count("\n") == 1
