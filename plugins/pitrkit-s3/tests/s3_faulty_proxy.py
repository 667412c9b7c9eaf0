"""A loopback HTTP proxy in front of moto's server (the same approach as the GCS plugin's
tests, its own copy: each plugin's tests stand alone) that injects faults into chosen requests:
a status code instead of an answer, a connection reset part-way through a request body,
a reset after the request reached the server (the write landed, its answer is lost),
added latency, a flipped byte in a response body, a body cut short under headers that
match its length, a Range header dropped on its way to the server (which then answers
with the whole object). It records every request it forwards or answers.

botocore reaches it as the URL's `endpoint`; it speaks plain HTTP/1.1, one request per
connection (it answers with `Connection: close`), which is all botocore needs. A fault
chooses its requests by method, path-style path and headers.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Matcher = Callable[[str, str, dict[str, str]], bool]


def _is_object(path: str) -> bool:
    """A path-style path naming an object (/bucket/key), not a bucket's listing."""
    return path.lstrip("/").split("?", 1)[0].count("/") >= 1


UPLOADS: Matcher = lambda method, path, headers: (  # noqa: E731  PutObject, UploadPart
    method == "PUT" and _is_object(path) and "x-amz-copy-source" not in headers)
COMPLETES: Matcher = lambda method, path, headers: method == "POST" and "uploadId=" in path  # noqa: E731
DOWNLOADS: Matcher = lambda method, path, headers: method == "GET" and _is_object(path)  # noqa: E731
COPIES: Matcher = lambda method, path, headers: method == "PUT" and "x-amz-copy-source" in headers  # noqa: E731
_S3_CODES = {412: "PreconditionFailed", 500: "InternalError", 503: "SlowDown"}
EVERY_REQUEST: Matcher = lambda method, path, headers: True  # noqa: E731

@dataclass
class Fault:
    # "status", "reset-mid-body", "reset-after-forward", "delay", "corrupt-body", "short-body",
    # "ignore-range", "ignore-range-corrupt-body"
    kind: str
    matches: Matcher
    remaining: float  # how many matching requests it still hits (math.inf: all)
    status: int = 503
    delay: float = 0.0


class FaultyProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.faults: list[Fault] = []
        self.hits: list[str] = []  # the kinds of the faults injected, in order
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers), in order
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._serve(self)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a reset we injected ends its handler with an OSError: expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def inject(self, kind: str, matches: Matcher = EVERY_REQUEST, times: float = 1,
               **options: float) -> None:
        with self._lock:
            self.faults.append(Fault(kind, matches, times, **options))  # type: ignore[arg-type]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take_fault(self, method: str, path: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            self.requests.append((method, path, headers))
            for fault in self.faults:
                if fault.remaining > 0 and fault.matches(method, path, headers):
                    fault.remaining -= 1
                    self.hits.append(fault.kind)
                    return fault
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        fault = self._take_fault(handler.command, handler.path,
                                 {name.lower(): value for name, value in handler.headers.items()})
        length = int(handler.headers.get("Content-Length") or 0)
        if fault and fault.kind == "reset-mid-body":
            handler.rfile.read(length // 2)
            _reset(handler.connection)
            return
        body = handler.rfile.read(length)
        if fault and fault.kind == "delay":
            time.sleep(fault.delay)
        if fault and fault.kind == "status":
            handler.send_response(fault.status)
            handler.send_header("Content-Type", "application/xml")
            code = _S3_CODES.get(fault.status, "InjectedFault")  # as S3 names the status
            message = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>%s</Code>"
                       b"<Message>injected by the test proxy</Message></Error>" % code.encode())
            handler.send_header("Content-Length", str(len(message)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(message)
            return
        upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            dropped = {"connection", "content-length", "transfer-encoding", "expect"}
            if fault and fault.kind.startswith("ignore-range"):
                dropped.add("range")
            headers = {name: value for name, value in handler.headers.items() if name.lower() not in dropped}
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            answer = response.read()
        finally:
            upstream.close()
        if fault and fault.kind == "reset-after-forward":
            _reset(handler.connection)
            return
        if fault and fault.kind in ("corrupt-body", "ignore-range-corrupt-body") and answer:
            answer = bytes([answer[0] ^ 0xFF]) + answer[1:]
        if fault and fault.kind == "short-body":
            answer = answer[:-1]  # and a Content-Length that says so: only its other headers tell
        handler.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("connection", "content-length", "transfer-encoding"):
                handler.send_header(name, value)
        # A HEAD's answer has no body but the object's Content-Length.
        length = response.getheader("Content-Length", "0") if handler.command == "HEAD" else str(len(answer))
        handler.send_header("Content-Length", length)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(answer)


def _reset(connection: socket.socket) -> None:
    """Close with a TCP RST rather than a FIN, as a dying middlebox does."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()
