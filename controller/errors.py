"""The controller's exceptions, translated to HTTP only at the edge (the router).

ControllerError
├── IngestError               a delivery the router refuses; carries its HTTP status
│   ├── SignatureError        401: missing or wrong X-Hub-Signature-256
│   ├── PayloadTooLarge       413: over the body limit
│   ├── BadPayload            400: not JSON, or a workflow_job missing fields
│   ├── StorageUnavailable    503: Redis did not take it; GitHub may redeliver
│   └── QueueFull             503: the scale set's queue is at its bound; redeliver later
└── GitHubError               the GitHub API failed us
    ├── GitHubUnavailable     network error or 5xx: verifier fails closed
    ├── RateLimited           primary or secondary limit; retry_after seconds
    └── GitHubAuthError       401/403 not caused by a limit
"""

from __future__ import annotations


class ControllerError(Exception):
    pass


class IngestError(ControllerError):
    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureError(IngestError):
    status = 401


class PayloadTooLarge(IngestError):
    status = 413


class BadPayload(IngestError):
    status = 400


class StorageUnavailable(IngestError):
    status = 503


class QueueFull(IngestError):
    status = 503


class GitHubError(ControllerError):
    pass


class GitHubUnavailable(GitHubError):
    pass


class RateLimited(GitHubError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GitHubAuthError(GitHubError):
    pass


def retry_delay(failures: int, first: float = 0.2, most: float = 5.0) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: doubling from
    ``first``, never above ``most`` (the exponent is capped: an outage of hours must not
    overflow the float and end the loop that waits it out)."""
    return float(min(most, first * 2.0 ** min(max(failures, 1), 32)))
