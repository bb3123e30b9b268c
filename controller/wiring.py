"""Build the controller's parts from Settings: spec, secrets, Redis, GitHub clients."""

from __future__ import annotations

import sys
from pathlib import Path

import redis.asyncio as aioredis

from controller.github_client import AppCredentials, GitHubClient, TokenBucket
from controller.metrics import Metrics
from controller.model import PlatformSpec, RuntimeFacts, SpecError, load_spec_json
from controller.settings import Settings


def load_spec_or_exit(path: Path) -> PlatformSpec:
    """The spec, or exit 2 naming each bad field's path (the controller refuses to start)."""
    try:
        return load_spec_json(path.read_bytes())
    except FileNotFoundError:
        sys.exit(f"controller: no platform spec at {path} (set RUNNER_PLATFORM_SPEC)")
    except SpecError as error:
        sys.exit(f"controller: refusing to start, {error}")


def load_facts_or_exit(settings: Settings) -> RuntimeFacts:
    """The runtime facts (role ARNs, Vault mounts) the runner pods need, or exit 2."""
    path = settings.runtime_path
    if path is None or not path.exists():
        sys.exit(f"controller: no runtime facts at {path} (set RUNNER_PLATFORM_RUNTIME)")
    try:
        return RuntimeFacts.model_validate_json(path.read_bytes())
    except ValueError as error:
        sys.exit(f"controller: refusing to start, runtime facts at {path}: {error}")


def redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    if settings.runtime_path is None or not settings.runtime_path.exists():
        sys.exit("controller: no Redis: set RUNNER_PLATFORM_REDIS_URL or RUNNER_PLATFORM_RUNTIME")
    facts = RuntimeFacts.model_validate_json(settings.runtime_path.read_bytes())
    token = settings.secret("runner-controller-redis", "token").decode()
    scheme = "rediss" if facts.redis_tls else "redis"
    return f"{scheme}://:{token}@{facts.redis_endpoint}:{facts.redis_port}/0"


def connect_redis(settings: Settings) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        redis_url(settings), socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
    )


def webhook_secrets(spec: PlatformSpec, settings: Settings) -> dict[str, bytes]:
    return {
        i.name: settings.secret(i.webhook_secret.name, i.webhook_secret.key)
        for i in spec.github_instances
    }


def github_clients(
    spec: PlatformSpec, settings: Settings, metrics: Metrics
) -> dict[str, GitHubClient]:
    clients = {}
    try:
        api_urls = settings.api_urls()
    except ValueError as error:
        sys.exit(f"controller: {error}")
    unknown = set(api_urls) - {i.name for i in spec.github_instances}
    if unknown:
        sys.exit(
            f"controller: RUNNER_PLATFORM_GITHUB_API_URLS names unknown instances {sorted(unknown)}"
        )
    for instance in spec.github_instances:
        apps = [
            AppCredentials(
                app.app_id,
                settings.secret(app.private_key.name, app.private_key.key),
                dict(app.installations),
                bucket=TokenBucket(capacity=float(settings.github_points_per_minute)),
            )
            for app in instance.apps
        ]
        clients[instance.name] = GitHubClient(
            instance, apps, metrics=metrics, api_url=api_urls.get(instance.name)
        )
    return clients
