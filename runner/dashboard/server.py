"""The dashboard process: polls the broker once a second and serves one page and its JSON over HTTP.

The standard library's ThreadingHTTPServer is enough for one read-only page watched by a few
browsers on a trusted network, and adds no dependency. Every request reads the shared
``DashboardState`` under a lock; only the poller thread talks to the broker, one status request
a second (and the failures list when the failed count moved), so any number of open pages cost
the broker nothing more.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from importlib import resources
from typing import Any, Callable

from loguru import logger

from runner.client import Client
from runner.dashboard.state import FAILURES_SHOWN, DashboardState, failure_row

POLL_INTERVAL = 1.0  # seconds between two status requests to the broker
REQUEST_TIMEOUT = 5.0  # seconds one status request may take before the page says the broker is away
STATIC = {  # path -> (file under static/, content type); nothing else is served
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def latest_failures(client: Client, known: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The latest failed and dead jobs, newest first, with their errors and remote tracebacks.

    Two listings of the broker's journal (failed, dead), then one ``job`` request for each
    failure not already in ``known`` (rows by id from the last call: a final outcome does
    not change), so a steady trickle of failures costs a request or two, not twenty.
    """
    listed = [*client.jobs(state="failed", limit=FAILURES_SHOWN, timeout=REQUEST_TIMEOUT),
              *client.jobs(state="dead", limit=FAILURES_SHOWN, timeout=REQUEST_TIMEOUT)]
    listed.sort(key=lambda row: row["created"] or 0.0, reverse=True)
    rows = []
    for row in listed[:FAILURES_SHOWN]:
        kept = (known or {}).get(row["id"])
        if kept is not None and kept["state"] == row["state"]:
            rows.append(kept)
            continue
        job = client.job(row["id"], timeout=REQUEST_TIMEOUT)
        if job is not None and "error" in job:  # None: expired (or requeued) since the listing
            rows.append(failure_row(job))
    return rows


class Poller:
    """A thread asking the broker for its status every ``interval`` seconds into ``state``."""

    def __init__(self, client: Client, state: DashboardState, lock: threading.Lock,
                 interval: float = POLL_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.state, self.lock, self.interval, self.clock = client, state, lock, interval, clock
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dashboard-poller", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(REQUEST_TIMEOUT + self.interval)

    def poll_once(self) -> None:
        """One status request (and the failures' requests when their count moved), recorded in the state."""
        try:
            status = self.client.status(timeout=REQUEST_TIMEOUT)
            with self.lock:
                wanted = self.state.failures_changed(status)
                known = self.state.reusable_failures(status)
            failures = latest_failures(self.client, known) if wanted else None
        except Exception as exc:  # the broker away, or a refusal: shown on the page, polling goes on
            reason = f"{type(exc).__name__}: {exc}"
            with self.lock:
                if self.state.error is None:  # logged once a spell, not every second
                    logger.warning("dashboard: no answer from the broker at {}: {}", self.client.address, reason)
                self.state.unreachable(reason)
            return
        with self.lock:
            self.state.observe(status)
            if failures is not None:
                self.state.set_failures(status, failures)

    def _run(self) -> None:
        next_poll = self.clock()
        while not self.stopped.is_set():
            self.poll_once()
            next_poll = max(next_poll + self.interval, self.clock())  # no burst after a slow request
            self.stopped.wait(max(0.0, next_poll - self.clock()))


class Dashboard:
    """The HTTP server of one dashboard, with its poller; ``serve_forever`` until ``stop``."""

    def __init__(self, client: Client, bind: str = "127.0.0.1", port: int = 8787) -> None:
        self.state = DashboardState()
        self.lock = threading.Lock()
        self.poller = Poller(client, self.state, self.lock)
        self.http = http.server.ThreadingHTTPServer((bind, port), _handler(self))
        self.http.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host}:{port}/"

    def state_json(self) -> bytes:
        with self.lock:
            return json.dumps(self.state.view(), default=str).encode()

    def serve_forever(self) -> None:
        self.poller.start()
        try:
            self.http.serve_forever(poll_interval=0.2)
        finally:
            self.poller.stop()
            self.http.server_close()

    def stop(self) -> None:
        """End ``serve_forever`` (from another thread or a signal handler's thread)."""
        threading.Thread(target=self.http.shutdown, daemon=True).start()


def _handler(dashboard: Dashboard) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        """GET the page, its script and style, or /api/state; nothing else (read-only)."""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/api/state":
                self._send(200, "application/json", dashboard.state_json())
            elif path in STATIC:
                name, content_type = STATIC[path]
                self._send(200, content_type, resources.files("runner.dashboard").joinpath("static").joinpath(name).read_bytes())
            else:
                self._send(404, "text/plain; charset=utf-8", f"no page at {path}; the dashboard is at /\n".encode())

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
            logger.debug("dashboard {}: {}", self.address_string(), format % args)

    return Handler
