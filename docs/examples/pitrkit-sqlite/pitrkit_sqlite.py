"""pitrkit storage plugin: the archive is one SQLite database file.

    [repository]
    url = "sqlite:///srv/pitrkit/archive.db"

The database file is the archive's container: it must exist (`touch` it; an empty file
is an empty database), and its directory must be writable by postgres (SQLite writes a
journal beside it). A missing file is a StorageError, never "object not found". As a
local file, it does not bound its own reads and writes by `timeout` (no more than the
built-in file:// backend does); `timeout` is how long to wait for another writer's lock.
"""

import sqlite3
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

from pitrkit.hookspecs import Folder, ObjectExists, ObjectInfo, ObjectNotFound, Storage, StorageError, hookimpl


class SqliteStorage:
    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"expected sqlite:///absolute/path.db, got {url!r}")
        self.url = url
        self.path = unquote(parts.path)
        self.timeout = timeout

    def _run(self, sql: str, parameters: tuple = ()) -> list:
        try:
            # mode=rw: never create the file, so a missing archive is a fault, not an
            # empty archive. timeout: how long to wait for another writer's lock.
            db = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=self.timeout)
            try:
                db.execute("PRAGMA synchronous = FULL")  # COMMIT returns after fsync
                db.execute("CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, data BLOB NOT NULL)")
                with db:  # one transaction, committed before we return
                    return db.execute(sql, parameters).fetchall()
            finally:
                db.close()
        except sqlite3.IntegrityError:
            raise  # a duplicate key: put() turns it into ObjectExists
        except sqlite3.Error as exc:  # any other fault: StorageError, which pitrkit retries
            raise StorageError(f"{self.url}: {exc}") from None

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        verb = "INSERT OR REPLACE" if overwrite else "INSERT"  # INSERT alone is create-only
        try:
            self._run(f"{verb} INTO objects (key, data) VALUES (?, ?)", (key, data))
        except sqlite3.IntegrityError:
            raise ObjectExists(key) from None

    def get(self, key: str) -> bytes:
        rows = self._run("SELECT data FROM objects WHERE key = ?", (key,))
        if not rows:
            raise ObjectNotFound(key)
        return rows[0][0]

    def stat(self, key: str) -> ObjectInfo:
        rows = self._run("SELECT length(data) FROM objects WHERE key = ?", (key,))
        if not rows:
            raise ObjectNotFound(key)
        return ObjectInfo(key, rows[0][0])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # TEXT keys compare with memcmp() on UTF-8: the byte order the protocol asks for.
        # The keys starting with `prefix` are those from `prefix` up to the prefix with its
        # last character incremented: a range of the primary key's index, so a listing
        # reads what it returns, not the whole archive.
        if not prefix:
            rows = self._run("SELECT key, length(data) FROM objects ORDER BY key")
        else:
            end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            rows = self._run("SELECT key, length(data) FROM objects WHERE key >= ? AND key < ? ORDER BY key",
                             (prefix, end))
        return iter([ObjectInfo(key, size) for key, size in rows])

    def list_folder(self, prefix: str) -> Folder:
        # Simple: every key under the folder, grouped. A segment's folder holds at most
        # one 4 GiB log of WAL, so wal-fetch's call stays small; a store that can list
        # one level itself (S3 and GCS list with a delimiter) should ask it instead.
        # The keys under a folder are one contiguous run of the sorted listing, so each
        # sub-folder is met once, and in key order.
        objects: list[ObjectInfo] = []
        folders: list[str] = []
        for info in self.list(prefix):
            name = info.key[len(prefix):]
            if "/" not in name:
                objects.append(info)
            elif not folders or folders[-1] != prefix + name.partition("/")[0] + "/":
                folders.append(prefix + name.partition("/")[0] + "/")
        return Folder(objects, folders)

    def delete(self, key: str) -> None:
        self._run("DELETE FROM objects WHERE key = ?", (key,))


@hookimpl
def pitrkit_storage(url: str, timeout: float) -> Storage | None:  # a type checker checks the class against it
    if not url.startswith("sqlite:"):
        return None  # not ours: let another plugin answer
    return SqliteStorage(url, timeout)
