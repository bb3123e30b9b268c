"""The controller's settings: the GitHub API URL override and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.settings import Settings


def test_api_url_overrides_are_read_per_instance() -> None:
    settings = Settings.from_env(
        {
            "RUNNER_PLATFORM_GITHUB_API_URLS": "cloud=http://127.0.0.1:9/ , ghes=https://gh.proxy:8443/api/v3"
        }
    )
    assert settings.api_urls() == {
        "cloud": "http://127.0.0.1:9",
        "ghes": "https://gh.proxy:8443/api/v3",
    }
    assert Settings.from_env({}).api_urls() == {}


@pytest.mark.parametrize("value", ["cloud", "cloud=ftp://x", "=http://x", "cloud=api.github.com"])
def test_a_malformed_api_url_override_names_the_bad_entry(value: str) -> None:
    settings = Settings.from_env({"RUNNER_PLATFORM_GITHUB_API_URLS": value})
    with pytest.raises(ValueError, match="RUNNER_PLATFORM_GITHUB_API_URLS: '"):
        settings.api_urls()


def test_provisioner_settings_are_typed_and_a_bad_number_is_named() -> None:
    settings = Settings.from_env(
        {
            "RUNNER_PLATFORM_KUBECONFIG": "/tmp/kubeconfig",
            "RUNNER_PLATFORM_KUBE_QPS": "50",
            "RUNNER_PLATFORM_IDLE_GRACE": "0",
        }
    )
    assert settings.kubeconfig_path == Path("/tmp/kubeconfig")
    assert settings.kube_qps == 50
    assert settings.idle_grace_seconds == 0
    assert Settings.from_env({}).kubeconfig_path is None  # in-cluster by default
    with pytest.raises(ValueError, match="RUNNER_PLATFORM_WRITES='many'"):
        Settings.from_env({"RUNNER_PLATFORM_WRITES": "many"})


def test_reconciler_settings_are_read_and_checked() -> None:
    from controller.ingest.reconcile import reconcile_settings

    settings = Settings.from_env(
        {
            "RUNNER_PLATFORM_RECONCILE_SECONDS": "15",
            "RUNNER_PLATFORM_RECONCILE_MAX_CALLS": "50",
            "RUNNER_PLATFORM_RECONCILE_BUDGET_PERCENT": "5",
            "RUNNER_PLATFORM_RECONCILE_GRACE": "20",
        }
    )
    tuning = reconcile_settings(settings)
    assert (tuning.interval, tuning.max_calls, tuning.budget_percent, tuning.grace) == (
        15,
        50,
        5,
        20,
    )
    defaults = Settings.from_env({})
    assert (defaults.reconcile_seconds, defaults.reconcile_budget_percent) == (60, 10)
    with pytest.raises(ValueError, match="BUDGET_PERCENT must be 1 to 100"):
        reconcile_settings(Settings.from_env({"RUNNER_PLATFORM_RECONCILE_BUDGET_PERCENT": "150"}))
    with pytest.raises(ValueError, match="RUNNER_PLATFORM_RECONCILE_MAX_CALLS='lots'"):
        Settings.from_env({"RUNNER_PLATFORM_RECONCILE_MAX_CALLS": "lots"})


@pytest.mark.parametrize("bound", [0, -5])
def test_a_queue_bound_below_one_is_refused_with_its_variable(bound: int) -> None:
    import redis.asyncio as aioredis

    from controller.ingest.store import IngestStore

    with pytest.raises(ValueError, match=f"RUNNER_PLATFORM_QUEUE_BOUND={bound}"):
        IngestStore(
            aioredis.Redis.from_url("redis://127.0.0.1:9/0"),
            dedupe_ttl=60,
            audit_max=10,
            queue_bound=bound,
        )
