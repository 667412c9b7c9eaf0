"""The plugin manager: built-in plugins and, on demand, third-party ones by name.

Built-ins register through the same hooks as anyone else. A third-party plugin is
imported only when the configuration asks for something no registered plugin provides
(a URL scheme, a compression algorithm): then the `pitrkit.plugins` entry point of that
name is loaded. Nothing scans installed distributions on the way to a local archive,
because `wal-push` runs once per WAL segment and its start-up time is the budget.
"""

from __future__ import annotations

import importlib

import pluggy

from pitrkit import hookspecs
from pitrkit.errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "pitrkit.plugins"
BUILTIN_PLUGINS = (
    "pitrkit.storage.plugins.local",
    "pitrkit.storage.plugins.compression",
    "pitrkit.storage.plugins.encryption",
)


# What `hookspecs.Storage` requires: its methods, and `url`.
STORAGE_METHODS = tuple(name for name, value in vars(hookspecs.Storage).items()
                        if callable(value) and not name.startswith("_"))


def missing_storage_members(backend: object) -> list[str]:
    """The members of `hookspecs.Storage` that `backend` lacks (a method that is not
    callable counts as missing, and so does a `url` that is not a string), in the
    protocol's order: what `isinstance(backend, Storage)` checks, but naming them."""
    missing = [name for name in STORAGE_METHODS if not callable(getattr(backend, name, None))]
    if not isinstance(getattr(backend, "url", None), str):
        missing.insert(0, "url")
    return missing


class Plugins:
    def __init__(self) -> None:
        self.manager = pluggy.PluginManager("pitrkit")
        self.manager.add_hookspecs(hookspecs)
        for module in BUILTIN_PLUGINS:
            self.manager.register(importlib.import_module(module), name=module)
        # Compressors asked for, kept: a restore looks one up for each of tens of
        # thousands of super-blocks, and a new one costs more than decoding 64 KiB (it
        # also starts without the decompression context a kept one has per thread).
        self._compressors: dict[tuple[str, int, int], hookspecs.Compressor] = {}

    def storage(self, url: str, timeout: float) -> hookspecs.Storage:
        if "://" in url:
            scheme = url.partition("://")[0]
        elif url.startswith("/"):
            scheme = "file"
        else:
            raise ConfigError(f"repository.url must be a URL such as file:///var/lib/pitrkit/archive "
                              f"or an absolute path, not {url!r}")
        try:
            backend = self._first(lambda: self.manager.hook.pitrkit_storage(url=url, timeout=timeout), scheme)
        except ValueError as exc:
            raise ConfigError(f"repository.url: {exc}") from None
        if backend is None:
            raise PluginError(f"the plugin {scheme!r} does not handle the URL {url!r}")
        if missing := missing_storage_members(backend):
            raise PluginError(f"the plugin {scheme!r} returned an incomplete storage backend "
                              f"({type(backend).__module__}.{type(backend).__qualname__}): it has no "
                              f"{', '.join(missing)} (see pitrkit.hookspecs.Storage)")
        return backend

    def compressor(self, name: str, level: int = 3, threads: int = 0) -> hookspecs.Compressor:
        kept = self._compressors.get((name, level, threads))
        if kept is not None:
            return kept
        try:
            compressor = self._first(
                lambda: self.manager.hook.pitrkit_compressor(name=name, level=level, threads=threads), name
            )
        except ValueError as exc:
            raise ConfigError(f"compression: {exc}") from None
        if compressor is None:
            raise PluginError(f"the plugin {name!r} provides no compressor of that name")
        self._compressors[name, level, threads] = compressor  # two threads racing here keep either: both work
        return compressor

    def cipher(self, settings: dict, archive_parameters: dict) -> hookspecs.Cipher:
        """The cipher for an `[encryption]` section whose mode is not "off"."""
        try:
            cipher = self.manager.hook.pitrkit_cipher(settings=settings, archive_parameters=archive_parameters)
        except ValueError as exc:
            raise ConfigError(f"encryption: {exc}") from None
        if cipher is None:
            raise PluginError(f"no plugin provides encryption mode {settings.get('mode')!r}")
        return cipher

    def _first(self, call, name: str):
        """Ask the registered plugins; if none answers, load the entry point `name` and ask again."""
        result = call()
        if result is None:
            self._load_entry_point(name)
            result = call()
        return result

    def _load_entry_point(self, name: str) -> None:
        try:
            loaded = self.manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        except Exception as exc:  # a broken third-party plugin must not become a traceback
            raise PluginError(f"plugin {name!r} failed to load: {type(exc).__name__}: {exc}") from None
        if not loaded:
            raise PluginError(
                f"no plugin for {name!r}: install a distribution that provides the "
                f"'{ENTRY_POINT_GROUP}' entry point {name!r}"
            )
