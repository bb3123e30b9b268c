"""A fault-injecting reverse proxy in front of the local API server (or any HTTPS server).

``FaultProxy(upstream, ca_file=…)`` listens on 127.0.0.1 over plain HTTP and forwards every
request to ``upstream`` over TLS: with the client's own ``Authorization`` header (a
kubeconfig with the controller's token keeps its RBAC), else the proxy's ``token``, and the
``client_cert`` pair if given (the admin certificate). Replies with a length are passed on
whole; replies without one (watches) are passed on chunk by chunk as they arrive.

:meth:`FaultProxy.fail` adds a :class:`Fault`: requests whose method and target (path and
query, ``re.search``) match are answered by the proxy itself with a Kubernetes ``Status``
of the fault's code (and ``Retry-After`` if it has one) instead of being forwarded, for
every one (``share=1``), a deterministic share (``0.5``: the 1st, 3rd, 5th… match), or at
most ``times``. With ``after=True`` the request is forwarded first and its reply replaced
(the write happened, the reply was lost). :meth:`FaultProxy.cut` breaks open streams (a
network cut under a watch). :class:`Faults` is shared with the GitHub emulator's fault
control (docs/github-emulator.md). No upgrades (exec, port-forward).
"""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import ssl
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
REASONS = {
    409: "Conflict",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class Fault:
    """Answer ``status`` (a tuple: each in turn) instead of the server, for matching
    requests: all of them (``share`` 1), a share spread evenly from the first match on,
    at most ``times`` in all. ``method`` None matches any; ``pattern`` is a regex."""

    status: int | tuple[int, ...]
    method: str | None = None
    pattern: str = ""
    times: int | None = None
    share: float = 1.0
    retry_after: int | None = None
    after: bool = False
    matched: int = 0
    injected: int = 0
    regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise ValueError("share is in (0, 1]")
        if any(code < 400 or code > 599 for code in self.statuses):
            raise ValueError("a fault answers 4xx or 5xx")
        self.regex = re.compile(self.pattern)

    @property
    def statuses(self) -> tuple[int, ...]:
        return self.status if isinstance(self.status, tuple) else (self.status,)

    @property
    def spent(self) -> bool:
        return self.times is not None and self.injected >= self.times

    def fire(self) -> int | None:
        """Count one matching request; the code to answer if this one is due (the caller
        holds the lock)."""
        if self.spent:
            return None
        self.matched += 1
        now, before = self.matched * self.share, (self.matched - 1) * self.share
        if math.ceil(now - 1e-9) <= math.ceil(before - 1e-9):
            return None
        status = self.statuses[self.injected % len(self.statuses)]
        self.injected += 1
        return status

    def describe(self) -> dict[str, Any]:
        return {
            "status": list(self.statuses),
            "method": self.method,
            "pattern": self.pattern,
            "times": self.times,
            "share": self.share,
            "retry_after": self.retry_after,
            "after": self.after,
            "matched": self.matched,
            "injected": self.injected,
        }


@dataclass(frozen=True)
class Injection:
    fault: Fault
    status: int


class Faults:
    """Fault rules, checked in order; the first that fires answers, later ones do not see
    the request. ``fullmatch``: a pattern must match the whole subject (route names)."""

    def __init__(self, *, fullmatch: bool = False) -> None:
        self.fullmatch = fullmatch
        self.rules: list[Fault] = []
        self.log: list[tuple[str, str, int]] = []  # (method, subject, status) injected
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.rules.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def check(self, method: str, subject: str) -> Injection | None:
        with self._lock:
            for rule in self.rules:
                if rule.method is not None and rule.method.upper() != method.upper():
                    continue
                matcher = rule.regex.fullmatch if self.fullmatch else rule.regex.search
                if matcher(subject) is None:
                    continue
                status = rule.fire()
                if status is not None:
                    self.log.append((method.upper(), subject, status))
                    return Injection(rule, status)
        return None

    def count(self, method: str | None = None, pattern: str = "", status: int | None = None) -> int:
        """How many answers were injected for requests like these."""
        regex = re.compile(pattern)
        with self._lock:
            return sum(
                1
                for m, subject, code in self.log
                if (method is None or m == method.upper())
                and regex.search(subject)
                and (status is None or code == status)
            )


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        ca_file: str | Path | None = None,
        token: str | None = None,
        client_cert: tuple[str | Path, str | Path] | None = None,
        port: int = 0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"upstream {upstream!r} is not https://host:port")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 443
        self.context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        if client_cert is not None:
            self.context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        self.token = token
        self.faults = Faults()
        self.records: list[tuple[str, str, int, bool]] = []  # method, target, status, injected
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._streams: dict[int, tuple[str, _Handler]] = {}
        self._server = _QuietServer(("127.0.0.1", port), _handler_class(self))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @classmethod
    def for_plane(cls, plane: Any, *, admin: bool = False) -> FaultProxy:
        """In front of a :class:`localenv.kube.ControlPlane`'s API server; ``admin``: the
        proxy itself authenticates with the admin certificate."""
        certs = plane.certs
        return cls(
            plane.server,
            ca_file=certs.ca_cert,
            client_cert=(certs.admin_cert, certs.admin_key) if admin else None,
        )

    # -- lifecycle --

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:  # open streams and kept-alive connections, both sides
            _shut(sock)

    # -- faults --

    def fail(
        self,
        status: int | tuple[int, ...],
        *,
        method: str | None = None,
        path: str = "",
        times: int | None = None,
        share: float = 1.0,
        retry_after: int | None = None,
        after: bool = False,
    ) -> Fault:
        """Answer ``status`` for requests of ``method`` whose target (path and query)
        matches ``path``; see :class:`Fault`."""
        return self.faults.add(Fault(status, method, path, times, share, retry_after, after))

    def clear(self) -> None:
        self.faults.clear()

    def cut(self, path: str = "") -> int:
        """Break the streams (watches) now open whose target matches ``path``, as a
        network cut would: the client sees its connection close mid-stream."""
        regex = re.compile(path)
        with self._lock:
            streams = [h for target, h in self._streams.values() if regex.search(target)]
        for handler in streams:
            handler.cut = True
            if handler.upstream is not None and handler.upstream.sock is not None:
                _shut(handler.upstream.sock)
        return len(streams)

    def count(self, method: str | None = None, path: str = "", status: int | None = None) -> int:
        """Requests answered (injected or forwarded) like this, from the records."""
        regex = re.compile(path)
        return sum(
            1
            for m, target, code, _ in list(self.records)
            if (method is None or m == method.upper())
            and regex.search(target)
            and (status is None or code == status)
        )

    # -- bookkeeping for the handlers --

    def _track(self, sock: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    def _stream(self, handler: _Handler, target: str | None) -> None:
        with self._lock:
            if target is None:
                self._streams.pop(id(handler), None)
            else:
                self._streams[id(handler)] = (target, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: FaultProxy
    upstream: http.client.HTTPSConnection | None = None
    cut = False

    def setup(self) -> None:
        super().setup()
        self.proxy._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.proxy._track(self.connection, False)
            self._drop_upstream()

    def _handle(self) -> None:
        body = self._body()
        injection = self.proxy.faults.check(self.command, self.path)
        if injection is not None and not injection.fault.after:
            self._answer(injection)
            return
        try:
            response = self._forward(body)
        except (OSError, http.client.HTTPException) as error:
            self._drop_upstream()
            self._status(502, f"fault proxy: upstream failed: {type(error).__name__}", None)
            return
        if injection is not None:  # forwarded; the reply is lost on its way back
            response.read()
            self._answer(injection)
            return
        self._relay(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def _body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _forward(self, body: bytes | None) -> http.client.HTTPResponse:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if self.proxy.token and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = f"Bearer {self.proxy.token}"
        if body is not None:
            headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):
            if self.upstream is None:
                self.upstream = http.client.HTTPSConnection(
                    self.proxy.upstream_host, self.proxy.upstream_port, context=self.proxy.context
                )
            reused = self.upstream.sock is not None
            try:
                self.upstream.request(self.command, self.path, body=body, headers=headers)
                return self.upstream.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop_upstream()  # a kept-alive connection the server had closed
                if attempt == 2 or not reused:
                    raise
        raise AssertionError("unreachable")

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.proxy.records.append((self.command, self.path, response.status, False))
        self.send_response_only(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        length = response.getheader("Content-Length")
        if self.command == "HEAD" or response.status in (204, 304):
            response.read()
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            return
        if not response.chunked and length is not None:
            data = response.read()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        self.proxy._stream(self, self.path)
        try:
            while not self.cut:
                data = response.read1(65536)
                if not data:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            if self.cut:
                raise ConnectionAbortedError("cut")
            self.wfile.write(b"0\r\n\r\n")
        except (OSError, http.client.HTTPException):
            self.close_connection = True  # mid-stream: the client sees the connection drop
            self._drop_upstream()
        finally:
            self.proxy._stream(self, None)
            self.cut = False

    def _answer(self, injection: Injection) -> None:
        message = f"injected by localenv.fault_proxy ({injection.status})"
        self._status(injection.status, message, injection.fault.retry_after)
        self.proxy.records.append((self.command, self.path, injection.status, True))

    def _status(self, code: int, message: str, retry_after: int | None) -> None:
        payload = json.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": REASONS.get(code, "InternalError"),
                "code": code,
            }
        ).encode()
        self.send_response_only(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read proxy.records


def _handler_class(proxy: FaultProxy) -> type[_Handler]:
    class Handler(_Handler):
        pass

    Handler.proxy = proxy
    return Handler


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            return  # a client or upstream that hung up is no proxy error
        super().handle_error(request, client_address)
