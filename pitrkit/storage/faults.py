"""A fault-injecting HTTP proxy for storage plugins' tests: part of the plugin author's
kit (docs/plugins.md, "Fault tests"), beside the conformance suite. Only test code
imports it.

`FaultyProxy` listens on 127.0.0.1 in front of an HTTP store (an emulator, a test
server) and injects faults into the requests a test chooses: a status code instead of an
answer, a connection reset part-way through a request body, a reset after the request
reached the server (the write landed, its answer is lost), added latency, a flipped byte
in a response body, a body cut short under headers that match its length, a Range header
dropped on its way to the server (which then answers with the whole object). It records
every request it forwards or answers.

It speaks plain HTTP/1.1, one request per connection (it answers with `Connection:
close`), which is all the SDKs need. What differs between stores is given to it: how the
store words an error (`error_answer`), and whether the Host header must reach the server
as the client sent it (`forward_host`: S3's signatures cover it). Which requests a fault
hits is a `Matcher` on the method, the path with its query, and the lower-cased headers:
the store's API decides what an upload or a download looks like.
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
from typing import NamedTuple
from urllib.parse import urlsplit

Matcher = Callable[[str, str, Mapping[str, str]], bool]
# How the store answers an error status: the headers (Content-Type and any the store's
# SDK reads the error from) and the body.
ErrorAnswer = Callable[[int], tuple[dict[str, str], bytes]]

FAULT_KINDS = frozenset({"status", "reset-mid-body", "reset-after-forward", "delay", "corrupt-body", "short-body",
                         "ignore-range", "ignore-range-corrupt-body"})


class Request(NamedTuple):
    method: str
    path: str  # with its query
    headers: Mapping[str, str]  # names lower-cased


def every_request(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return True


def json_error(status: int) -> tuple[dict[str, str], bytes]:
    """An error as a JSON API (Google Cloud Storage's) words it."""
    return ({"Content-Type": "application/json"},
            b'{"error": {"code": %d, "message": "injected by the test proxy"}}' % status)


@dataclass
class Fault:
    kind: str  # one of FAULT_KINDS
    matches: Matcher
    remaining: float  # how many matching requests it still hits (math.inf: all)
    status: int = 503  # for "status"
    delay: float = 0.0  # seconds, for "delay"


class FaultyProxy:
    """The proxy in front of `upstream` (http://host:port); `endpoint` is its own address.
    Faults are taken in the order injected: a request gets the first fault that matches
    it and has hits left, and `hits` lists the kinds injected, in order."""

    def __init__(self, upstream: str, *, error_answer: ErrorAnswer = json_error, forward_host: bool = False) -> None:
        self.upstream = urlsplit(upstream)
        self.faults: list[Fault] = []
        self.hits: list[str] = []
        self.requests: list[Request] = []  # every request, in order
        self._error_answer = error_answer
        self._dropped = {"connection", "content-length", "transfer-encoding", "expect"}
        if not forward_host:
            self._dropped.add("host")
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

    def inject(self, kind: str, matches: Matcher = every_request, times: float = 1, *, status: int = 503,
               delay: float = 0.0) -> None:
        """Hit the next `times` requests that `matches` with fault `kind`."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}: expected one of {', '.join(sorted(FAULT_KINDS))}")
        with self._lock:
            self.faults.append(Fault(kind, matches, times, status, delay))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take_fault(self, request: Request) -> Fault | None:
        with self._lock:
            self.requests.append(request)
            for fault in self.faults:
                if fault.remaining > 0 and fault.matches(*request):
                    fault.remaining -= 1
                    self.hits.append(fault.kind)
                    return fault
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        fault = self._take_fault(Request(handler.command, handler.path,
                                         {name.lower(): value for name, value in handler.headers.items()}))
        kind = fault.kind if fault else None
        length = int(handler.headers.get("Content-Length") or 0)
        if kind == "reset-mid-body":
            handler.rfile.read(length // 2)
            _reset(handler.connection)
            return
        body = handler.rfile.read(length)
        if fault and kind == "delay":
            time.sleep(fault.delay)
        if fault and kind == "status":
            headers, message = self._error_answer(fault.status)
            handler.send_response(fault.status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(message)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(message)
            return
        upstream = http.client.HTTPConnection(self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=30)
        try:
            dropped = self._dropped | ({"range"} if kind and kind.startswith("ignore-range") else set())
            headers = {name: value for name, value in handler.headers.items() if name.lower() not in dropped}
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            answer = response.read()
        finally:
            upstream.close()
        if kind == "reset-after-forward":
            _reset(handler.connection)
            return
        if kind in ("corrupt-body", "ignore-range-corrupt-body") and answer:
            answer = bytes([answer[0] ^ 0xFF]) + answer[1:]
        if kind == "short-body":
            answer = answer[:-1]  # and a Content-Length that says so: only its other headers tell
        handler.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("connection", "content-length", "transfer-encoding"):
                handler.send_header(name, value)
        # A HEAD's answer has no body but the object's Content-Length.
        sent = (response.getheader("Content-Length") or "0") if handler.command == "HEAD" else str(len(answer))
        handler.send_header("Content-Length", sent)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(answer)


def _reset(connection: socket.socket) -> None:
    """Close with a TCP RST rather than a FIN, as a dying middlebox does."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()
