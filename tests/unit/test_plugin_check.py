"""An incomplete storage backend is refused when the archive is opened, in one line that
names the plugin and what it lacks: a fault for wal-fetch (exit 126, never 1, never
"internal error"), a plugin error for wal-push (exit 2).

The plugin is a real third-party one: a distribution on sys.path (a `.dist-info` with
its `pitrkit.plugins` entry point, as pip installs it), loaded by pitrkit's own entry
point lookup.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pitrkit.cli import main
from pitrkit.hookspecs import Storage
from pitrkit.storage.plugins import STORAGE_METHODS, Plugins, missing_storage_members
from pitrkit.storage.plugins.local import LocalStorage

# A backend written against an older guide: no list_folder, and a stat that is not a method.
PLUGIN = '''
from pitrkit.hookspecs import hookimpl


class HalfStorage:
    stat = None

    def __init__(self, url):
        self.url = url

    def put(self, key, data, *, overwrite=False): ...
    def get(self, key): ...
    def list(self, prefix=""): ...
    def delete(self, key): ...


@hookimpl
def pitrkit_storage(url):
    return HalfStorage(url) if url.startswith("half:") else None
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch) -> None:
    site = tmp_path / "site"
    (site / "pitrkit_half-0.1.dist-info").mkdir(parents=True)
    (site / "pitrkit_half-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: pitrkit-half\n"
                                                                 "Version: 0.1\n")
    (site / "pitrkit_half-0.1.dist-info" / "entry_points.txt").write_text("[pitrkit.plugins]\nhalf = pitrkit_half\n")
    (site / "pitrkit_half.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("PITRKIT_CONFIG", raising=False)


def config(tmp_path: Path) -> Path:
    path = tmp_path / "pitrkit.toml"
    path.write_text(f'[repository]\nurl = "half://{tmp_path}/archive"\nretries = 0\n')
    return path


EXPECTED = ("pitrkit: the plugin 'half' returned an incomplete storage backend (pitrkit_half.HalfStorage): it has "
            "no stat, list_folder (see pitrkit.hookspecs.Storage)\n")


def test_wal_fetch_through_an_incomplete_backend_is_a_fault_naming_what_is_missing(installed_plugin, tmp_path,
                                                                                    capsys):
    code = main(["--config", str(config(tmp_path)), "wal-fetch", "000000010000000000000001", str(tmp_path / "x")])
    assert (code, capsys.readouterr().err) == (126, EXPECTED)


def test_wal_push_through_an_incomplete_backend_is_a_plugin_error(installed_plugin, tmp_path, capsys):
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(b"\0" * 8192)
    code = main(["--config", str(config(tmp_path)), "wal-push", str(segment)])
    assert (code, capsys.readouterr().err) == (2, EXPECTED)


def test_the_check_is_the_protocols(tmp_path):
    assert STORAGE_METHODS == ("put", "get", "stat", "list", "list_folder", "delete")
    local = Plugins().storage(f"file://{tmp_path}", 5)
    assert isinstance(local, LocalStorage) and isinstance(local, Storage)
    assert missing_storage_members(local) == []

    class NoUrl:
        put = get = stat = list = list_folder = delete = print

    assert not isinstance(NoUrl(), Storage) and missing_storage_members(NoUrl()) == ["url"]
    assert missing_storage_members(object()) == ["url", *STORAGE_METHODS]
