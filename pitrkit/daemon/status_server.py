"""The status `pitrkit daemon` serves: a StatusReport refreshed on its own thread every
`[daemon] status_interval`, and an HTTP server on `[daemon] listen` that renders it with
the daemon's own facts (ops/daemon_facts.py) through views/: `/` the HTML page, `/metrics`
Prometheus text, `/status.json` (GET and HEAD; POST, PUT, DELETE and PATCH get 405).

A request never touches the archive: it renders the newest collected report, so a
scraper polling every second costs nothing and a slow or unreachable archive cannot hang
the page (the report then goes stale, and its `generated_at` says so).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pitrkit import events
from pitrkit.config import Config
from pitrkit.errors import ConfigError, PitrkitError
from pitrkit.ops import status
from pitrkit.ops.daemon_facts import DaemonFacts
from pitrkit.ops.status import StatusReport
from pitrkit.storage.repositories import Repository, open_all
from pitrkit.views import html, json, metrics

log = logging.getLogger(__name__)

# A client that has not sent its request, or not read the answer, within this is dropped:
# each connection holds a thread of its own.
_REQUEST_TIMEOUT = 10.0
# The stop does not wait longer for a collection in progress (a storage call in its
# retries): the thread is a daemon thread, the process exits without it.
_COLLECTION_STOP_TIMEOUT = 10.0


class StatusBoard:
    """The newest StatusReport, refreshed every `interval` seconds on a thread."""

    def __init__(self, config: Config, interval: float) -> None:
        self._config = config
        self._interval = interval
        self._lock = threading.Lock()
        self._report: StatusReport | None = None
        self._problem: str | None = "not collected yet"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def refresh_soon(self) -> None:
        """Collect now rather than at the next interval (a backup has just finished)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(_COLLECTION_STOP_TIMEOUT)

    def report(self) -> tuple[StatusReport | None, str | None]:
        """The newest report, and why it could not be refreshed (None when it was)."""
        with self._lock:
            return self._report, self._problem

    def _run(self) -> None:
        # Each repository opened once for the thread's lifetime: storage and ciphers are set up once.
        repositories: list[Repository] | None = None
        while not self._stop.is_set():
            try:
                repositories = repositories or open_all(self._config)
                report = status.collect_all(repositories, self._config)
            except PitrkitError as exc:
                self._failed(str(exc))
            except Exception as exc:  # a bug must not stop the page from saying so
                log.debug("status collection failed", exc_info=True)
                self._failed(f"internal error: {type(exc).__name__}: {exc}")
            else:
                with self._lock:
                    was, self._report, self._problem = self._problem, report, None
                if was is not None:
                    events.emit(log, logging.INFO, "status-collected", overall=report.overall)
            self._wake.wait(self._interval)
            self._wake.clear()

    def _failed(self, problem: str) -> None:
        with self._lock:
            repeated, self._problem = self._problem == problem, problem
        if not repeated:  # once per distinct problem, not every interval
            events.emit(log, logging.WARNING, "status-failed", error=problem, retry_in=f"{self._interval:g}s")


def parse_listen(listen: str) -> tuple[str, int]:
    """("127.0.0.1", 9187) from "127.0.0.1:9187"; IPv6 as "[::1]:9187"."""
    host, colon, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"[daemon] listen {listen!r} must be host:port, e.g. \"127.0.0.1:9187\" "
                          "(or \"\" for no status server)")
    return host, int(port)


class StatusServer:
    """The HTTP server on its own thread (each request on a thread of its own)."""

    def __init__(self, listen: str, board: StatusBoard, facts: Callable[[], DaemonFacts],
                 refresh_seconds: float, request_timeout: float = _REQUEST_TIMEOUT) -> None:
        host, port = parse_listen(listen)
        handler = type("Handler", (_Handler,), {"board": board, "facts": staticmethod(facts),
                                                "refresh_seconds": refresh_seconds, "timeout": request_timeout})
        # http.server takes the address family from the class.
        server_class = type("Server", (_Server,), {"address_family": socket.AF_INET6 if ":" in host
                                                   else socket.AF_INET})
        try:
            self._server = server_class((host, port), handler)
        except OSError as exc:
            raise PitrkitError(f"cannot serve status on {listen}: {exc.strerror}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="status-server", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        events.emit(log, logging.INFO, "server-listening", address=self.address)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        events.emit(log, logging.INFO, "server-stopped", address=self.address)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client that never finishes its request does not block the stop

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        # socketserver would print a traceback into the event stream; this is mostly a
        # client that went away mid-answer.
        error = sys.exc_info()[1]
        events.emit(log, logging.WARNING, "http-failed", client=client_address[0],
                    error=f"{type(error).__name__}: {error}")


_PLAIN_TEXT = "text/plain; charset=utf-8"


class _Handler(BaseHTTPRequestHandler):
    board: StatusBoard
    facts: Callable[[], DaemonFacts]
    refresh_seconds: float
    server_version = "pitrkit"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(send_body=False)

    def _method_not_allowed(self) -> None:
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED, _PLAIN_TEXT, "only GET and HEAD\n", True, allow="GET, HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _serve(self, send_body: bool) -> None:
        path = self.path.partition("?")[0]
        if path not in ("/", "/metrics", "/status.json"):
            self._answer(HTTPStatus.NOT_FOUND, _PLAIN_TEXT, "not found: try /, /metrics or /status.json\n", send_body)
            return
        report, problem = self.board.report()
        if report is None:
            # Before the first collection succeeds there is nothing true to show; a
            # scraper must see a failed scrape, not an empty one.
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, _PLAIN_TEXT, f"pitrkit status is not available: {problem}\n",
                         send_body)
            return
        try:
            content_type, body = self._render(path, report)
        except Exception as exc:  # a bug: one line for the client and the log, not a traceback
            log.debug("rendering %s failed", path, exc_info=True)
            error = f"internal error: {type(exc).__name__}: {exc}"
            events.emit(log, logging.ERROR, "http-failed", client=self.client_address[0], path=path, error=error)
            self._answer(HTTPStatus.INTERNAL_SERVER_ERROR, _PLAIN_TEXT, f"pitrkit: {error}\n", send_body)
            return
        self._answer(HTTPStatus.OK, content_type, body, send_body)

    def _render(self, path: str, report: StatusReport) -> tuple[str, str]:
        facts = self.facts()
        if path == "/":
            return "text/html; charset=utf-8", html.html_page(report, facts, self.refresh_seconds)
        if path == "/metrics":
            return "text/plain; version=0.0.4; charset=utf-8", metrics.metrics_text(report, facts)
        return "application/json", json.status_document(report, facts)

    def _answer(self, code: HTTPStatus, content_type: str, body: str, send_body: bool, allow: str | None = None
                ) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        # HEAD too: the length the GET's body would have.
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        events.emit(log, logging.DEBUG, "http-request", client=self.client_address[0], request=format % args)
