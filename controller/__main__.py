"""``python -m controller`` (or ``runner-controller``): serve, listen, provision, audit,
access-matrix."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from datetime import datetime
from typing import Any

from controller import logs
from controller.errors import retry_delay
from controller.settings import MissingSecret, Settings
from controller.version import VERSION


def _serve(settings: Settings) -> int:
    import uvicorn

    from controller.ingest.app import WebhookApp
    from controller.metrics import Metrics
    from controller.teams.verifier import TeamVerifier
    from controller.wiring import (
        connect_redis,
        github_clients,
        load_spec_or_exit,
        webhook_secrets,
    )

    spec = load_spec_or_exit(settings.spec_path)
    redis = connect_redis(settings)
    metrics = Metrics()
    clients = github_clients(spec, settings, metrics)
    verifier = TeamVerifier(
        spec,
        redis,
        clients,
        positive_ttl=settings.member_ttl_seconds,
        negative_ttl=settings.negative_ttl_seconds,
        metrics=metrics,
    )
    app = WebhookApp(
        spec,
        webhook_secrets(spec, settings),
        redis,
        metrics=metrics,
        dedupe_ttl=settings.dedupe_ttl_seconds,
        audit_max=settings.audit_max_records,
        queue_bound=settings.queue_bound,
        invalidate_membership=verifier.invalidate,
    )
    if settings.reconcile_seconds > 0:  # the lost-webhook reconciler, one per instance
        from controller.ingest.reconcile import Reconciler, reconcile_settings

        try:
            tuning = reconcile_settings(settings)
        except ValueError as error:
            print(f"controller: {error}", file=sys.stderr)
            return 2
        app.background.extend(
            Reconciler(
                spec,
                instance,
                clients[instance.name],
                redis,
                app.store,
                app.audit,
                settings=tuning,
                metrics=metrics,
                router=app.router,
            ).run
            for instance in spec.github_instances
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
    )
    uvicorn.Server(config).run()
    return 0


async def _listen_forever(settings: Settings) -> int:
    from controller.audit import AuditLog
    from controller.metrics import Metrics
    from controller.teams.listener import Listener
    from controller.teams.verifier import TeamVerifier
    from controller.wiring import connect_redis, github_clients, load_spec_or_exit

    spec = load_spec_or_exit(settings.spec_path)
    redis = connect_redis(settings)
    metrics = Metrics()
    clients = github_clients(spec, settings, metrics)
    verifier = TeamVerifier(
        spec,
        redis,
        clients,
        positive_ttl=settings.member_ttl_seconds,
        negative_ttl=settings.negative_ttl_seconds,
        metrics=metrics,
    )
    audit = AuditLog(redis, settings.audit_max_records)
    listeners = [
        Listener(
            s,
            redis,
            verifier,
            audit,
            consumer=socket.gethostname(),
            client=clients[s.instance],
            cancel_denied=settings.cancel_denied_runs,
            metrics=metrics,
        )
        for s in spec.scale_sets()
    ]
    for listener in listeners:
        await listener.ensure_group()

    async def run(listener: Listener) -> None:
        failures = 0
        while True:
            try:
                await listener.process_once(block_ms=1000)
                failures = 0
            except Exception as error:
                # Redis away (a restart, a failover): back off up to 5 s; the client
                # reconnects on the next command. Nothing is acknowledged meanwhile.
                failures += 1
                delay = retry_delay(failures)
                logging.getLogger(__name__).warning(
                    "listener %s: %s; retry in %.1fs", listener.scale_set.name, error, delay
                )
                await asyncio.sleep(delay)

    # As PID 1 of its container the process has no default SIGTERM action: without a
    # handler the kubelet would wait out the grace period and kill it.
    import signal

    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    work = asyncio.gather(*(run(listener) for listener in listeners))
    waiters: list[asyncio.Future[Any]] = [work, asyncio.ensure_future(stopped.wait())]
    await asyncio.wait(waiters, return_when="FIRST_COMPLETED")
    failed = work.done() and not work.cancelled() and work.exception() is not None
    if failed:
        logging.getLogger(__name__).error("a listener ended: %r", work.exception())
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    await audit.flush_on_stop()  # records kept while Redis was away
    return 1 if failed else 0


def _dump_tasks() -> None:
    """SIGUSR1: every asyncio task's stack to stderr (a stuck loop, diagnosed live)."""
    for task in asyncio.all_tasks():
        lines = [f"task {task.get_name()}:"]
        awaited: Any = task.get_coro()
        while awaited is not None:  # the chain of coroutines it is awaiting, outermost first
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is not None:
                lines.append(
                    f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"
                )
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        print("\n".join(lines), file=sys.stderr, flush=True)


async def _provision_forever(settings: Settings) -> int:
    import signal

    from prometheus_client import start_http_server

    from controller.audit import AuditLog
    from controller.metrics import Metrics
    from controller.provision.demand import DemandStore
    from controller.provision.kube import KubeApi, KubeConfig
    from controller.provision.leader import Shards
    from controller.provision.provisioner import Provisioner, Tuning
    from controller.provision.reaper import Reaper
    from controller.wiring import (
        connect_redis,
        github_clients,
        load_facts_or_exit,
        load_spec_or_exit,
    )

    spec = load_spec_or_exit(settings.spec_path)
    facts = load_facts_or_exit(settings)
    redis = connect_redis(settings)
    metrics = Metrics()
    if settings.provision_metrics_port:
        start_http_server(settings.provision_metrics_port, registry=metrics.registry)
    kube = KubeApi(
        KubeConfig.load(settings.kubeconfig_path),
        qps=settings.kube_qps,
        burst=settings.kube_burst,
        concurrency=max(settings.write_concurrency * 2, 8),
        metrics=metrics,
    )
    # The pod name, plus the pid so two processes on one host (tests) are two candidates.
    identity = f"{socket.gethostname()}-{os.getpid()}"
    teams = {s.name: s.team for s in spec.scale_sets()}
    shards = Shards(
        kube,
        spec.controller.namespace,
        identity,
        teams,
        duration=settings.lease_seconds,
        renew_seconds=settings.lease_renew_seconds,
        on_change=lambda held: provisioner.mark(*held),
        in_flight=lambda name: provisioner.inflight[name] > 0,
    )
    audit = AuditLog(redis, settings.audit_max_records)
    provisioner = Provisioner(
        spec,
        facts,
        DemandStore(
            redis,
            [s.name for s in spec.scale_sets()],
            identity,
            teams,
        ),
        kube,
        github_clients(spec, settings, metrics),
        audit,
        metrics,
        Tuning(
            write_concurrency=settings.write_concurrency,
            resync_seconds=settings.resync_seconds,
            idle_grace_seconds=settings.idle_grace_seconds,
        ),
        may_act=shards.held,
    )
    reaper = Reaper(
        provisioner,
        pending_timeout=settings.pending_timeout_seconds,
        startup_grace=settings.startup_grace_seconds,
    )
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)  # what is it waiting on?
    publisher = None
    if settings.cloudwatch_namespace:  # per-team counts and runner minutes, from IRSA
        from controller.cloudwatch import CloudWatchPublisher

        try:
            publisher = CloudWatchPublisher(
                settings.cloudwatch_namespace,
                metrics,
                {s.name: (s.team, s.pool) for s in spec.scale_sets()},
                shards.held,
                interval=settings.cloudwatch_seconds,
                endpoint_url=settings.cloudwatch_endpoint,
            )
        except ValueError as error:
            print(f"controller: {error}", file=sys.stderr)
            await kube.aclose()
            return 2
    # Every replica runs every loop; each acts only on the scale sets whose Leases it holds.
    loops = [
        asyncio.ensure_future(coroutine)
        for coroutine in (
            provisioner.run(),
            reaper.run(settings.reap_seconds),
            shards.keep(),
            *([publisher.run()] if publisher is not None else []),
        )
    ]
    work = asyncio.gather(*loops)
    interrupted = asyncio.ensure_future(stopped.wait())
    # A loop that died (a bug, a watch that cannot recover) must not leave a replica that
    # renews its Leases and does nothing: it ends the process, and its peers take over.
    waits: list[asyncio.Future[Any]] = [interrupted, work]
    await asyncio.wait(waits, return_when="FIRST_COMPLETED")
    failed = work.done() and not work.cancelled() and work.exception() is not None
    if failed:
        logging.getLogger(__name__).error(
            "a provisioner loop ended: %s", type(work.exception()).__name__
        )
    # SIGTERM: stop creating, let creations under way finish (the Leases are still
    # renewed meanwhile), leave running jobs alone, then hand every Lease over.
    logging.getLogger(__name__).info("stopping: no new runners; running jobs are left alone")
    await provisioner.stop()
    for running in loops:  # each one: cancelling a gather that failed cancels nothing
        running.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    if publisher is not None:
        await publisher.flush()
    await audit.flush_on_stop()  # records kept while Redis was away
    await shards.release_all()
    await kube.aclose()
    return 1 if failed else 0


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    import redis

    from controller.audit import iter_records
    from controller.wiring import redis_url

    def when(text: str | None) -> float | None:
        return None if text is None else datetime.fromisoformat(text).timestamp()

    client = redis.Redis.from_url(args.redis_url or redis_url(settings))
    records = iter_records(
        client,
        team=args.team,
        user=args.user,
        repo=args.repo,
        decision=args.decision,
        since=when(args.since),
        until=when(args.until),
        limit=args.limit,
    )
    for record in records:
        if args.json:
            print(json.dumps(record))
        else:
            stamp = datetime.fromtimestamp(record["time"]).isoformat(timespec="seconds")
            print(
                f"{stamp}  {record['decision']:<10} {record.get('scale_set') or '-':<24} "
                f"{record.get('repo') or '-':<30} {record.get('requester') or '-':<16} "
                f"job={record.get('job_id')} {record.get('reason', '')}"
            )
    return 0


def _access_matrix(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from controller.identity.access import access_matrix, render_matrix
    from controller.model import SpecError, load_spec

    path = Path(args.config or f"Pulumi.{args.stack}.yaml")
    try:
        config = yaml.safe_load(path.read_text())["config"]
        spec = load_spec(
            {
                key.split(":", 1)[1]: value
                for key, value in config.items()
                if key.startswith("runner-platform:")
            }
        )
    except FileNotFoundError:
        print(f"controller: no stack config at {path}", file=sys.stderr)
        return 2
    except SpecError as error:
        print(f"controller: {error}", file=sys.stderr)
        return 2
    rows = access_matrix(spec)
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
    else:
        print(render_matrix(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runner-controller")
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="the webhook router (ASGI on RUNNER_PLATFORM_PORT)")
    commands.add_parser("listen", help="verify queued jobs of every scale set")
    commands.add_parser("provision", help="the Pod Provisioner: runner pods for verified jobs")
    audit = commands.add_parser("audit", help="read audit records, newest first")
    audit.add_argument("--team")
    audit.add_argument("--user")
    audit.add_argument("--repo")
    audit.add_argument("--decision")
    audit.add_argument("--since", help="ISO time, e.g. 2026-11-28T06:00")
    audit.add_argument("--until", help="ISO time")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--json", action="store_true", help="one JSON record per line")
    audit.add_argument("--redis-url", help="instead of the settings' Redis")
    matrix = commands.add_parser(
        "access-matrix", help="which repositories reach which IAM and Vault roles"
    )
    matrix.add_argument("--stack", default="dev", help="reads Pulumi.<stack>.yaml")
    matrix.add_argument("--config", help="a stack config file instead")
    matrix.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "access-matrix":
        return _access_matrix(args)
    try:
        settings = Settings.from_env()
    except ValueError as error:
        print(f"controller: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        if args.command == "serve":
            return _serve(settings)
        if args.command == "listen":
            return asyncio.run(_listen_forever(settings))
        if args.command == "provision":
            return asyncio.run(_provision_forever(settings))
        return _audit(args, settings)
    except MissingSecret as error:
        print(f"controller: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
