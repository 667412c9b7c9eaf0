"""Azurite's blob service on 127.0.0.1, for the tests, on a free port, in memory.

Azurite comes from the npm registry, pinned: 3.36 and later want Node 22, and the
machines have Node 20. It is installed (once) by `npm` into a cache directory outside
the checkout (~/.cache/pitrkit-tests/azurite-VERSION: the end-to-end tests copy the
plugin's directory into a venv), or taken from $PITRKIT_AZURITE (the path of an
`azurite-blob` executable). The
SDK is newer than the API versions 3.35 knows, hence --skipApiVersionCheck.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VERSION = "3.35.0"
INSTALL_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pitrkit-tests" / f"azurite-{VERSION}"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, in Azurite's documentation): not a secret.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def executable() -> Path:
    if configured := os.environ.get("PITRKIT_AZURITE"):
        return Path(configured)
    binary = INSTALL_DIR / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        INSTALL_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(INSTALL_DIR), "--no-audit", "--no-fund", "--silent",
                        f"azurite@{VERSION}"], check=True, timeout=600)
    return binary


@dataclass
class Azurite:
    process: subprocess.Popen[bytes]
    endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1, the account's blob endpoint
    root: tempfile.TemporaryDirectory[str]

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint={self.endpoint};")

    @classmethod
    def start(cls, attempts: int = 5) -> Azurite:
        binary = executable()
        for _ in range(attempts):
            root = tempfile.TemporaryDirectory(prefix="azurite-")
            port = _free_port()
            process = subprocess.Popen(
                [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                 "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
                cwd=root.name,  # its debug log and the like, if any, go there
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            server = cls(process, f"http://127.0.0.1:{port}/{ACCOUNT}", root)
            if server._wait_ready(timeout=30):
                return server
            server.stop()
        raise RuntimeError(f"Azurite ({binary}) did not start in {attempts} attempts")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                urllib.request.urlopen(f"{self.endpoint}?comp=list", timeout=2).close()
            except urllib.error.HTTPError:
                return True  # it answers (403: the request is not signed)
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
            else:
                return True
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.root.cleanup()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
