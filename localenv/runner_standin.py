"""The runner stand-in: plays the GitHub runner binary inside runner pods KWOK "runs".

KWOK runs no containers, so nothing would ever use a runner pod's JIT config. The
stand-in does what ``./run.sh`` would: once a runner pod is Running, it reads the pod's
JIT Secret and brings that runner online in the GitHub emulator of the pod's instance
(``POST /_emulator/runners/start``), where it takes a matching queued job. When the
emulator reports that runner's job completed, it annotates the pod
``localenv.runner-platform.io/finish=<exit code>`` (0 for ``success``, else 1) and KWOK's
``localenv/kwok/pod-finish.yaml`` stage ends the pod Succeeded or Failed.

Runner pods follow the contract in :mod:`localenv.runner_pod`.

It talks HTTP only, so it runs in-process (:class:`RunnerStandIn` ``start()``/``stop()``)
or alone: ``python -m localenv.runner_standin --kubeconfig PATH --github NAME=URL ...``.
Threads: one watch over runner pods in all namespaces (resumed from its resourceVersion,
relisted on 410 Gone), one long poll of ``GET /_emulator/runners/events`` per instance,
and a pool for the per-pod calls, so a thousand pods turning Running at once are brought
online in parallel. A failed call (Secret missing, JIT config already used, emulator
down) is logged and retried a few times; nothing stops the agent but :meth:`stop`.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from localenv.github.runner_events import RunnerEvent, RunnerEventFeed
from localenv.kube import FINISH_ANNOTATION
from localenv.process import LocalEnvError
from localenv.runner_pod import (
    JIT_ENV,
    RUNNER_CONTAINER,
    RUNNER_SELECTOR,
    RunnerKey,
    RunnerPod,
    exit_code,
)

log = logging.getLogger(__name__)

WATCH_SECONDS = 60  # the API server ends each watch after this; it resumes from its RV
MAX_RETRY_DELAY = 2.0  # seconds between two attempts at most

# What a call to the API server (an answer, or none at all) or the emulator can raise.
_CALL_ERRORS = (ApiException, urllib3.exceptions.HTTPError, httpx.HTTPError)


class StandInError(RuntimeError):
    """A runner pod could not be served this time (it may be retried)."""


class RunnerStandIn:
    """The agent; ``github`` maps each GitHub instance name to its emulator's base URL."""

    def __init__(
        self,
        kubeconfig: Path | str,
        github: dict[str, str],
        *,
        workers: int = 32,
        attempts: int = 5,
        retry_delay: float = 0.2,
        poll_wait: float = 10.0,
    ) -> None:
        self.github = {name: url.rstrip("/") for name, url in github.items()}
        self.attempts, self.retry_delay = attempts, retry_delay
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        # Every worker may hold a connection at once; urllib3 would drop the surplus.
        configuration.connection_pool_maxsize = workers + 2
        self._api = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api)
        self._http = httpx.Client(
            timeout=10.0,
            limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="standin")
        self._lock = threading.Lock()
        self._pods: dict[str, RunnerPod] = {}  # by uid
        self._by_runner: dict[RunnerKey, str] = {}  # runner -> pod uid
        self._completed: dict[RunnerKey, int] = {}  # runner -> exit code, from events
        self._online: set[RunnerKey] = set()  # runners the emulator reported online
        self.stats: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._watch_response: Any = None
        # Daemon: a stand-in left running never holds up the interpreter's exit.
        self._watch = threading.Thread(target=self._watch_pods, name="standin-watch", daemon=True)
        self._feeds = [
            RunnerEventFeed(name, url, self._event_handler(name), poll_wait)
            for name, url in self.github.items()
        ]

    # -- lifecycle --

    def start(self, wait_synced: float | None = 30.0) -> RunnerStandIn:
        """Start the threads; unless ``wait_synced`` is None, wait for the first pod list."""
        self._watch.start()
        for feed in self._feeds:
            feed.start()
        if wait_synced is not None and not self._synced.wait(wait_synced):
            self.stop()
            raise LocalEnvError(f"runner stand-in could not list pods within {wait_synced:.0f}s")
        return self

    def stop(self) -> None:
        self._stopping.set()
        _interrupt(self._watch_response)
        for feed in self._feeds:
            feed.stop()
        if self._watch.is_alive():
            self._watch.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()
        self._api.close()

    # -- the pod watch --

    def _watch_pods(self) -> None:
        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    version = self._relist()
                version = self._follow(version)
            except ApiException as error:
                if error.status == 410:  # our resourceVersion was compacted away
                    version = None
                    continue
                self._pause("pod watch failed (%s %s); retrying", error.status, error.reason)
            except Exception as error:
                self._pause("pod watch broke (%s); retrying", error)

    def _pause(self, message: str, *args: Any) -> None:
        if not self._stopping.is_set():  # an interrupted watch is how stop() ends it
            log.warning(message, *args)
            self._stopping.wait(1.0)

    def _relist(self) -> str:
        listed = _json(
            self._core.list_pod_for_all_namespaces(
                label_selector=RUNNER_SELECTOR, _preload_content=False
            )
        )
        seen = set()
        for item in listed["items"]:
            seen.add(item["metadata"]["uid"])
            self._observe(item)
        with self._lock:
            gone = [uid for uid in self._pods if uid not in seen]
        for uid in gone:
            self._forget(uid)
        if not self._synced.is_set():
            log.info("runner stand-in watching runner pods (%d now)", len(listed["items"]))
            self._synced.set()
        return str(listed["metadata"]["resourceVersion"])

    def _follow(self, version: str) -> str:
        """Stream watch events from ``version``; return the last version seen."""
        # Raw, not a V1PodList: with _preload_content=False it is the urllib3 response.
        response: Any = self._core.list_pod_for_all_namespaces(
            label_selector=RUNNER_SELECTOR,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(10, WATCH_SECONDS + 30),
        )
        self._watch_response = response
        try:
            if self._stopping.is_set():  # stop() ran before it could interrupt this one
                return version
            for line in iter_resp_lines(response):
                if self._stopping.is_set():
                    break
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = str(obj["metadata"]["resourceVersion"])
                if kind == "DELETED":
                    self._forget(obj["metadata"]["uid"])
                elif kind in ("ADDED", "MODIFIED"):
                    self._observe(obj)
        finally:
            self._watch_response = None
            # Closed, not returned to the pool: an interrupted stream has unread bytes.
            response.close()
            response.release_conn()
        return version

    def _observe(self, obj: dict[str, Any]) -> None:
        pod = RunnerPod.parse(obj)
        with self._lock:
            known = self._pods.get(pod.uid)
            if known is not None:
                pod.started, pod.finishing = known.started, known.finishing
                pod.runner_id = pod.runner_id or known.runner_id
            elif pod.instance not in self.github:
                # Another stand-in may serve that instance; this one leaves the pod alone.
                log.info(
                    "runner pod %s/%s: GitHub %r is not served here",
                    pod.namespace,
                    pod.name,
                    pod.instance,
                )
            self._pods[pod.uid] = pod
            if pod.key is not None:
                self._by_runner[pod.key] = pod.uid
            task = self._next_step(pod)
        self._submit(task)

    def _forget(self, uid: str) -> None:
        with self._lock:
            pod = self._pods.pop(uid, None)
            if pod is not None and pod.key is not None:
                self._by_runner.pop(pod.key, None)
                self._completed.pop(pod.key, None)
                self._online.discard(pod.key)

    def _next_step(self, pod: RunnerPod) -> tuple[Any, ...] | None:
        """What to do for ``pod`` now; called with the lock held."""
        if not pod.running or pod.finished or pod.instance not in self.github:
            return None
        if pod.key is not None and pod.key in self._completed and not pod.finishing:
            pod.finishing = True
            return (self._finish, pod, self._completed[pod.key])
        if not pod.started:
            pod.started = True
            if pod.key is not None and pod.key in self._online:
                return None  # a stand-in before us brought it online
            return (self._bring_online, pod)
        return None

    # -- per pod work (in the pool) --

    def _backoff(self, attempt: int) -> float:
        return float(min(MAX_RETRY_DELAY, self.retry_delay * 2 ** (attempt - 1)))

    def _submit(self, task: tuple[Any, ...] | None) -> None:
        if task is None:
            return
        try:
            self._pool.submit(self._guarded, *task)
        except RuntimeError:  # the pool shut down: stop() is under way
            if not self._stopping.is_set():
                raise

    def _guarded(self, work: Any, *args: Any) -> None:
        try:
            work(*args)
        except Exception:  # a bug here must not end the pool thread's later work
            log.exception("runner stand-in task failed")

    def _bring_online(self, pod: RunnerPod) -> None:
        where = pod.where
        for attempt in range(1, self.attempts + 1):
            if self._stopping.is_set():
                return
            with self._lock:
                if pod.key is not None and pod.key in self._online:
                    return
            try:
                runner = self._start_runner(pod)
            except (*_CALL_ERRORS, StandInError, ValueError) as error:
                log.warning(
                    "runner pod %s: attempt %d/%d to bring its runner online failed: %s",
                    where,
                    attempt,
                    self.attempts,
                    _describe(error),
                )
                with self._lock:
                    self.stats["retried"] += 1
                self._stopping.wait(self._backoff(attempt))
                continue
            self._ran(pod, runner)
            return
        log.error("runner pod %s: gave up bringing its runner online", where)
        with self._lock:
            self.stats["gave_up"] += 1

    def _start_runner(self, pod: RunnerPod) -> dict[str, Any]:
        assert pod.instance is not None  # _next_step serves only pods of known instances
        if pod.secret is None:
            raise StandInError(f"container {RUNNER_CONTAINER!r} has no {JIT_ENV} secretKeyRef")
        name, key = pod.secret
        secret = _json(
            self._core.read_namespaced_secret(name, pod.namespace, _preload_content=False)
        )
        encoded = (secret.get("data") or {}).get(key)
        if not encoded:
            raise StandInError(f"Secret {name} has no key {key!r}")
        response = self._http.post(
            f"{self.github[pod.instance]}/_emulator/runners/start",
            json={"encoded_jit_config": base64.b64decode(encoded).decode()},
        )
        if response.status_code != 200:
            message = response.json().get("message") if response.content else ""
            raise StandInError(f"emulator answered {response.status_code}: {message}")
        runner: dict[str, Any] = response.json()
        return runner

    def _ran(self, pod: RunnerPod, runner: dict[str, Any]) -> None:
        """The runner is online: remember it, and finish the pod if its job already ended."""
        log.info("runner pod %s/%s: runner %s online", pod.namespace, pod.name, runner["id"])
        with self._lock:
            self.stats["online"] += 1
            # Watch events replace the record; the id goes on the one stored now.
            current = self._pods.get(pod.uid, pod)
            current.runner_id = pod.runner_id = int(runner["id"])
            assert current.key is not None  # the instance was checked before the start
            self._by_runner[current.key] = pod.uid
            self._online.add(current.key)
            task = self._next_step(current)
        if task is not None:
            self._guarded(*task)

    def _finish(self, pod: RunnerPod, code: int) -> None:
        where = pod.where
        body = {"metadata": {"annotations": {FINISH_ANNOTATION: str(code)}}}
        for attempt in range(1, self.attempts + 1):
            if self._stopping.is_set():
                return
            try:
                _json(
                    self._core.patch_namespaced_pod(
                        pod.name, pod.namespace, body, _preload_content=False
                    )
                )
            except _CALL_ERRORS as error:
                if isinstance(error, ApiException) and error.status == 404:
                    log.info("runner pod %s is gone; nothing to finish", where)
                    return
                log.warning(
                    "runner pod %s: attempt %d/%d to finish it failed: %s",
                    where,
                    attempt,
                    self.attempts,
                    _describe(error),
                )
                self._stopping.wait(self._backoff(attempt))
                continue
            log.info("runner pod %s: job done, container exits %d", where, code)
            with self._lock:
                self.stats["finished"] += 1
            return
        log.error("runner pod %s: gave up finishing it", where)

    # -- the emulator's runner events --

    def _event_handler(self, instance: str) -> Callable[[RunnerEvent], None]:
        return lambda event: self._on_event(instance, event)

    def _on_event(self, instance: str, event: RunnerEvent) -> None:
        key = (instance, int(event["runner_id"]))
        with self._lock:
            if event["event"] == "online":
                self._online.add(key)
                return
            if event["event"] != "job_completed":
                return
            self._completed[key] = exit_code(event.get("conclusion"))
            pod = self._pods.get(self._by_runner.get(key, ""))
            task = self._next_step(pod) if pod is not None else None
        self._submit(task)


def _json(response: Any) -> Any:
    """Parse a raw (``_preload_content=False``) kubernetes response and free its connection.

    Raw JSON instead of the client's models: building a V1Pod costs milliseconds, which a
    thousand pods at once turn into seconds.
    """
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def _interrupt(response: Any) -> None:
    """End a watch blocked in a read, from another thread."""
    if response is None:
        return
    try:
        response.shutdown()
    except (OSError, RuntimeError, ValueError):
        pass  # already finished or released: nothing is blocked on it


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"Kubernetes API {error.status} {error.reason}"
    return str(error) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localenv.runner_standin",
        description="Play the GitHub runner in KWOK runner pods against the GitHub emulator.",
    )
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument(
        "--github",
        action="append",
        required=True,
        metavar="INSTANCE=URL",
        help="a GitHub instance name and its emulator's base URL (repeatable)",
    )
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    github: dict[str, str] = {}
    for item in args.github:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            parser.error(f"--github wants INSTANCE=URL, got {item!r}")
        github[name] = url
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    done = threading.Event()

    def finish(signum: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    standin = RunnerStandIn(args.kubeconfig, github, workers=args.workers).start(
        wait_synced=None  # the API server may come up after us: the watch keeps trying
    )
    done.wait()
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
