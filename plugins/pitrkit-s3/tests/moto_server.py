"""moto in server mode on a free port of 127.0.0.1: a real HTTP S3 endpoint for the tests,
started and stopped by them."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

# moto accepts any credentials; botocore needs some to sign with.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "pitrkit-test", "AWS_SECRET_ACCESS_KEY": "pitrkit-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def s3_url(bucket: str, prefix: str, endpoint: str) -> str:
    """The URL of an archive under `prefix` of `bucket` on the server at `endpoint`."""
    return f"s3://{bucket}/{prefix}?endpoint={endpoint}&region=us-east-1&path_style=true"


@dataclass
class MotoServer:
    endpoint: str
    process: subprocess.Popen

    @classmethod
    def start(cls) -> MotoServer:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = cls(f"http://127.0.0.1:{port}", process)
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"moto's server exited with {process.returncode}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                connection.request("GET", "/moto-api/")
                connection.getresponse().read()
                connection.close()
                return server
            except OSError:
                time.sleep(0.1)
        server.stop()
        raise RuntimeError("moto's server did not answer within 30 s")

    def create_bucket(self, name: str) -> None:
        connection = http.client.HTTPConnection(self.endpoint.removeprefix("http://"), timeout=10)
        connection.request("PUT", f"/{name}")  # moto takes an unsigned request; path style
        response = connection.getresponse()
        response.read()
        connection.close()
        if response.status != 200:
            raise RuntimeError(f"creating bucket {name}: HTTP {response.status}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
