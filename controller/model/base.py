"""Scalar checks, type aliases, shared constants and the frozen base of every model."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
)

from controller.quantity import parse_duration, parse_quantity

GITHUB_CLOUD_HOST = "github.com"
GITHUB_CLOUD_API = "https://api.github.com"
GITHUB_CLOUD_ISSUER = "https://token.actions.githubusercontent.com"
MAX_RUNNERS_PER_NODE = 10
MAX_SESSION_SECONDS = 3600
MAX_VAULT_TTL_SECONDS = 3600

# Scheduling conventions shared by the node pools (components) and the runner pods
# (the controller's provisioner): both halves must agree on them, so they live here.
POOL_LABEL = "pool"
POOL_TAINT_KEY = "runner-platform.io/pool"
GPU_TAINT_KEY = "nvidia.com/gpu"
CILIUM_STARTUP_TAINT = "node.cilium.io/agent-not-ready"
# The ServiceAccount of runner pods in each team namespace (the components declare it,
# the provisioner names it in every pod) and the PriorityClass that lets runner pods
# preempt the warm-capacity placeholders.
RUNNER_SERVICE_ACCOUNT = "runner"
RUNNER_PRIORITY_CLASS = "runner-platform-runner"
# Node labels and taints in this domain (and its subdomains) are the platform's own: the
# system nodes' label draws the controller, which holds the App keys and webhook secrets,
# and the pool kind and owner labels tell the policy pack which pools are isolated.
PLATFORM_DOMAIN = "runner-platform.io"


def in_platform_domain(key: str) -> bool:
    """Whether a label or taint key is in the platform's reserved domain."""
    prefix, slash, _ = key.partition("/")
    if not slash:
        return False
    prefix = prefix.lower()
    return prefix == PLATFORM_DOMAIN or prefix.endswith(f".{PLATFORM_DOMAIN}")


# --- scalar checks -------------------------------------------------------------------


def _dns_label(value: str, max_length: int = 40) -> str:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value) or len(value) > max_length:
        raise ValueError(
            f"'{value}' is not a DNS-1123 label: use lowercase letters, digits and '-', "
            f"start and end with a letter or digit, at most {max_length} characters"
        )
    return value


def _github_login(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})", value):
        raise ValueError(f"'{value}' is not a GitHub organisation login")
    return value


def _team_slug(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,99}", value):
        raise ValueError(f"'{value}' is not a GitHub team slug (lowercase, digits, '-', '_', '.')")
    return value


def _runner_label(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", value):
        raise ValueError(f"'{value}' is not a valid runner label")
    return value


def _hostname(value: str) -> str:
    label = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    if not re.fullmatch(rf"{label}(\.{label})+", value):
        raise ValueError(f"'{value}' is not a host name (no scheme, no path: 'ghe.example.com')")
    return value


def _quantity(value: str) -> str:
    parse_quantity(value)
    return value


def _duration(value: str) -> str:
    parse_duration(value)
    return value


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value)
    except ValueError:
        raise ValueError(f"'{value}' is not a CIDR block ('10.0.0.0/16')") from None
    return value


def _policy_arn(value: str) -> str:
    if not re.fullmatch(r"arn:aws[a-z-]*:iam::(aws|\d{12}):policy/[\w+=,.@/-]+", value):
        raise ValueError(f"'{value}' is not an IAM policy ARN")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
GitHubLogin = Annotated[str, AfterValidator(_github_login)]
TeamSlug = Annotated[str, AfterValidator(_team_slug)]
RunnerLabel = Annotated[str, AfterValidator(_runner_label)]
HostName = Annotated[str, AfterValidator(_hostname)]
Quantity = Annotated[str, AfterValidator(_quantity)]
Duration = Annotated[str, AfterValidator(_duration)]
Cidr = Annotated[str, AfterValidator(_cidr)]
PolicyArn = Annotated[str, AfterValidator(_policy_arn)]


class Frozen(BaseModel):
    """Base for every spec value: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
