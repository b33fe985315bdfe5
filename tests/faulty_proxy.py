"""A fault-injecting HTTP proxy for S3 tests: forwards to the moto server, except requests that match
a rule, which it answers with a 503 / 403, drops (closes the connection without a reply), or delays;
a "down" rule makes the proxy die like a killed server at the first request it matches: that request
and every later one are dropped, and the port stops accepting connections (refused).

Deterministic on purpose: a rule fails the first `count` requests that match its method and path
pattern (or all of them, `count=None`), never a random fraction or a timed window, so a test knows
exactly which requests fail whatever the machine's load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te"}
_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
)


@dataclasses.dataclass
class Rule:
    """Fail (or slow) the first `count` requests whose method and path match."""

    action: str  # "503" | "403" | "400" (a request the store refuses) | "drop" | "slow" | "down"
    pattern: str = ".*"  # regex searched in the request path (bucket/key?query)
    method: str | None = None  # e.g. "PUT"; None matches any
    count: int | None = 1  # None: every matching request
    delay: float = 0.5  # seconds, for "slow"
    header: str | None = None  # only requests that carry this header (any case), e.g. a checksum
    hits: int = 0

    def matches(self, method: str, path: str, headers: dict[str, str] | None = None) -> bool:
        if self.count is not None and self.hits >= self.count:
            return False
        if self.header is not None and self.header.lower() not in {k.lower() for k in (headers or {})}:
            return False
        return (self.method is None or self.method == method) and re.search(self.pattern, path) is not None


class FaultyProxy:
    """`with FaultyProxy(upstream) as proxy:` ... `proxy.url` is the endpoint to give clients."""

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, str]] = []  # (method, path, outcome)
        self.lock = threading.Lock()
        self.down = threading.Event()  # set by a "down" rule: the server is gone for good
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, rule: Rule) -> Rule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def outcomes(self, action: str) -> list[tuple[str, str]]:
        with self.lock:
            return [(m, p) for m, p, o in self.log if o == action]

    def decide(self, method: str, path: str, headers: dict[str, str] | None = None) -> Rule | None:
        with self.lock:
            if self.down.is_set():
                self.log.append((method, path, "down"))
                return Rule("down")
            for rule in self.rules:
                if rule.matches(method, path, headers):
                    rule.hits += 1
                    self.log.append((method, path, rule.action))
                    return rule
            self.log.append((method, path, "forwarded"))
            return None

    def go_down(self) -> None:
        """Stop like a killed server: no more connections accepted, every open one dropped."""
        if self.down.is_set():
            return
        self.down.set()
        self.server.shutdown()  # called from a request thread, never the serving one
        self.server.server_close()

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(proxy: FaultyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self) -> None:
            body = self._body()
            rule = proxy.decide(self.command, self.path, dict(self.headers.items()))
            if rule is not None and rule.action == "down":
                proxy.go_down()
            if rule is not None and rule.action in ("drop", "down"):
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if rule is not None and rule.action in ("503", "403", "400"):
                code, message = {
                    "503": ("ServiceUnavailable", "Service is unavailable (injected)"),
                    "403": ("AccessDenied", "Access Denied (injected)"),
                    "400": ("InvalidArgument", f"{rule.header or 'request'} is not supported (injected)"),
                }[rule.action]
                data = _ERROR_BODY.format(code=code, message=message).encode()
                self.send_response(int(rule.action))
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                return
            if rule is not None and rule.action == "slow":
                time.sleep(rule.delay)
            self._forward(body)

        def _forward(self, body: bytes) -> None:
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.send_response(response.status, response.reason)
            length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
            for key, value in response.getheaders():
                if key.lower() not in _HOP_HEADERS and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            upstream.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler
