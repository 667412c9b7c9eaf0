"""A loopback HTTP proxy in front of the emulator that injects faults into chosen requests:
a status code instead of an answer, a connection reset part-way through a request body,
a reset after the request reached the server (the write landed, its answer is lost),
added latency, a flipped byte in a response body, a body cut short under headers that
match its length, a Range header dropped on its way to the server (which then answers
with the whole object). It records every request it forwards or answers.

The SDK reaches it through the BlobEndpoint of Azurite's connection string; it speaks
plain HTTP/1.1, one request per connection (it answers with `Connection: close`), which is
all the SDK needs. Shared Key signatures do not cover the Host header, so Azurite accepts
the forwarded requests. The approach of pitrkit-gcs's proxy, with a matcher that also sees
the request's headers (a copy is a PUT like an upload, told apart by x-ms-copy-source).
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Matcher = Callable[[str, str, Mapping[str, str]], bool]


def UPLOADS(method: str, path: str, headers: Mapping[str, str]) -> bool:
    """Put Blob and Put Block List: the requests that create an object."""
    return (method == "PUT" and "x-ms-copy-source" not in headers and "comp=block&" not in path + "&"
            and "restype=container" not in path)


def COMMITS(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return method == "PUT" and "comp=blocklist" in path


def DOWNLOADS(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return method == "GET" and "comp=" not in path and "restype=" not in path


def COPIES(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return method == "PUT" and "x-ms-copy-source" in headers


def EVERY_REQUEST(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return True


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
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
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

    def _take_fault(self, method: str, path: str, headers: Mapping[str, str]) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
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
            code = "ConditionNotMet" if fault.status == 412 else "ServerBusy"
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("x-ms-error-code", code)
            message = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                       "<Message>injected by the test proxy</Message></Error>").encode()
            handler.send_header("Content-Length", str(len(message)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(message)
            return
        upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            dropped = {"host", "connection", "content-length", "transfer-encoding"}
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
        if handler.command == "HEAD":  # its Content-Length is the object's, and it has no body
            handler.send_header("Content-Length", response.getheader("Content-Length") or "0")
        else:
            handler.send_header("Content-Length", str(len(answer)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(answer)


def _reset(connection: socket.socket) -> None:
    """Close with a TCP RST rather than a FIN, as a dying middlebox does."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()
