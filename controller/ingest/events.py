"""The parts of a ``workflow_job`` delivery the platform uses, validated.

Payloads are GitHub's, not ours: unknown fields are ignored, the fields we rely on are
required and typed, and a refusal names the first bad field in a short reason.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from controller.errors import BadPayload

MAX_LABELS = 100  # GitHub accepts at most 100 runs-on labels

Label = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Login(_Payload):
    login: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class Repository(_Payload):
    full_name: Annotated[str, StringConstraints(pattern=r"^[^/\s]+/[^/\s]+$", max_length=200)]
    owner: Login | None = None


class WorkflowJob(_Payload):
    id: int
    run_id: int
    run_attempt: int = 1
    name: str = ""
    status: str = ""
    conclusion: str | None = None
    labels: list[Label] = Field(max_length=MAX_LABELS)
    runner_id: int | None = None
    runner_name: str | None = None
    runner_group_id: int | None = None
    runner_group_name: str | None = None
    created_at: Annotated[str, StringConstraints(max_length=40)] | None = None
    """When the job was queued (GitHub's clock): the start of queue-time metrics."""


class WorkflowJobEvent(_Payload):
    action: Literal["queued", "waiting", "in_progress", "completed"]
    workflow_job: WorkflowJob
    repository: Repository
    organization: Login | None = None
    sender: Login

    @property
    def org(self) -> str:
        """The owning organisation (repository hooks carry no ``organization``)."""
        if self.organization is not None:
            return self.organization.login
        return self.repository.full_name.split("/", 1)[0]


def parse_workflow_job(body: bytes) -> WorkflowJobEvent:
    try:
        return WorkflowJobEvent.model_validate_json(body)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        if first["type"] == "json_invalid":
            raise BadPayload("body is not valid JSON") from None
        if first["type"] == "missing":
            raise BadPayload(f"{where}: missing") from None
        raise BadPayload(f"{where}: {first['msg']}"[:200]) from None


def action_of(body: bytes) -> str | None:
    """The ``action`` of a JSON body, without validating the rest (for ignored events)."""
    import json

    try:
        value = json.loads(body)
    except ValueError:
        raise BadPayload("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadPayload("body is not a JSON object")
    action = value.get("action")
    return action if isinstance(action, str) else None
