"""tests/compose_local.py's reading of compose.yaml: compose's variable interpolation, its
durations, the host-name mapping, the start order, and the refusal of what it does not
map (so that compose.yaml cannot use a feature the local run would silently ignore)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compose_local import ComposeError, LocalHost, Topology, interpolate, seconds, variables_used

VARIABLES = {"PORT": "15432", "EMPTY": ""}


@pytest.mark.parametrize(("text", "expected"), [
    ("${PORT}", "15432"),
    ("$PORT", "15432"),
    ("${PORT:-5432}", "15432"),
    ("${UNSET:-5432}", "5432"),
    ("${EMPTY:-5432}", "5432"),  # :- also replaces an empty value
    ("${EMPTY-5432}", ""),  # - only an unset one
    ("${UNSET-5432}", "5432"),
    ("${UNSET}", ""),
    ("http://gcs:${PORT:-4443}/x", "http://gcs:15432/x"),
    ("$$PORT", "$PORT"),
])
def test_interpolation_follows_compose(text: str, expected: str) -> None:
    assert interpolate(text, VARIABLES) == expected


def test_interpolation_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ComposeError, match="unsupported interpolation"):
        interpolate("${PORT:?must be set}", VARIABLES)


def test_variables_used() -> None:
    assert variables_used("a ${A:-1} $B $$C ${D}") == {"A", "B", "D"}


def test_durations() -> None:
    assert seconds("2s") == 2 and seconds("1m30s") == 90 and seconds("500ms") == 0.5 and seconds(3) == 3
    with pytest.raises(ComposeError):
        seconds("2 seconds")


def local(root: Path) -> LocalHost:
    return LocalHost(root=root, hosts={"primary": "127.0.0.1", "0.0.0.0": "127.0.0.1"}, image_paths={},
                     image_path_variable="/usr/bin:/bin", images={"x:1": ["/bin/true"]})


def test_host_names_are_mapped_only_where_they_name_a_host(tmp_path: Path) -> None:
    host = local(tmp_path).host
    assert host("primary") == "127.0.0.1"
    assert host("primary:5432") == "127.0.0.1:5432"
    assert host("http://primary:80/path") == "http://127.0.0.1:80/path"
    assert host("0.0.0.0:9187") == "127.0.0.1:9187"
    assert host("primary_slot") == "primary_slot"
    assert host("gs://primary-bucket/x") == "gs://primary-bucket/x"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "compose.yaml"
    path.write_text(text)
    return path


def test_start_order_follows_depends_on(tmp_path: Path) -> None:
    compose = write(tmp_path, """
services:
  c: {image: "x:1", depends_on: [b]}
  b: {image: "x:1", depends_on: {a: {condition: service_started}}}
  a: {image: "x:1"}
""")
    assert Topology.from_file(compose, {}, local(tmp_path)).start_order() == ["a", "b", "c"]


@pytest.mark.parametrize(("service", "refusal"), [
    ('{image: "x:1", restart: always}', "does not map"),
    ('{image: "y:2"}', "no local program"),
    ('{image: "x:1", command: "sh -c true"}', "as a list"),
    ('{image: "x:1", ports: ["5432:5433"]}', "publish a port as itself"),
    ('{image: "x:1", healthcheck: {test: "true"}}', "healthcheck"),
    ('{image: "x:1", user: root}', "not mapped"),
    ('{image: "x:1", depends_on: [t]}', "not a service"),
    ('{image: "x:1", depends_on: {s: {condition: service_healthy}}}', "has no healthcheck"),
    ('{image: "x:1", depends_on: {s: {condition: service_completed_successfully}}}', "is not mapped"),
])
def test_what_the_local_run_does_not_map_is_refused(tmp_path: Path, service: str, refusal: str) -> None:
    compose = write(tmp_path, f"services:\n  s: {service}\n")
    with pytest.raises(ComposeError, match=refusal):
        Topology.from_file(compose, {}, local(tmp_path))
