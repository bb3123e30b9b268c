"""A client of the emulator's runner events: one thread long-polling one instance.

``GET /_emulator/runners/events?after=<seq>&wait=<seconds>`` answers the events after
``seq`` as soon as there is one (docs/github-emulator.md), so one open request per
instance hears of every runner that came online or finished, however many there are.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

RunnerEvent = dict[str, Any]  # {seq, runner_id, name, org, event, job_id, conclusion}


class RunnerEventFeed:
    """Calls ``on_event`` with each event of the emulator at ``url``, oldest first.

    It starts from the first event ever (``after=0``), so a feed started late still hears
    of what happened before it. An emulator that is down is retried every second, logged
    once when it goes and once when it is back.
    """

    def __init__(
        self, name: str, url: str, on_event: Callable[[RunnerEvent], None], wait: float = 10.0
    ) -> None:
        self.name, self.url, self.on_event, self.wait = name, url.rstrip("/"), on_event, wait
        self.after = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name=f"events-{name}", daemon=True)

    def start(self) -> RunnerEventFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            sock = self._socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the long poll blocked in recv
            except OSError:
                pass
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        down = False
        while not self._stopping.is_set():
            try:
                events = self._poll()
            except (OSError, http.client.HTTPException, ValueError) as error:
                if self._stopping.is_set():
                    return
                if not down:
                    log.warning("GitHub %s: runner events unavailable: %s", self.name, error)
                    down = True
                self._stopping.wait(1.0)
                continue
            if down:
                log.info("GitHub %s: runner events available again", self.name)
                down = False
            for event in events:
                try:
                    self.after = max(self.after, int(event["seq"]))
                    self.on_event(event)
                except (KeyError, TypeError, ValueError):
                    log.exception("GitHub %s: a runner event that cannot be read", self.name)

    def _poll(self) -> list[RunnerEvent]:
        # http.client, not httpx: stop() can shut this socket down to end the wait at once.
        parts = urlsplit(self.url)
        secure = parts.scheme == "https"
        kind = http.client.HTTPSConnection if secure else http.client.HTTPConnection
        connection = kind(parts.netloc, timeout=self.wait + 10)
        try:
            connection.connect()
            with self._lock:
                self._socket = connection.sock
            if self._stopping.is_set():  # stop() ran before it could shut this socket
                return []
            connection.request(
                "GET", f"{parts.path}/_emulator/runners/events?after={self.after}&wait={self.wait}"
            )
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise ValueError(f"runner events answered {response.status}")
            events: list[RunnerEvent] = json.loads(body)
            return events
        finally:
            with self._lock:
                self._socket = None
            connection.close()
