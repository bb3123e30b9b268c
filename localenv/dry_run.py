"""Create Kubernetes objects on a real API server, for real or as a server-side dry run,
with ``fieldValidation=Strict`` so an unknown or misspelt field is an error, not a warning.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.dynamic import DynamicClient


class Rejected(Exception):
    """The API server refused an object; ``reason`` is its own message."""

    def __init__(self, manifest: dict[str, Any], status: int, reason: str) -> None:
        meta = manifest.get("metadata", {})
        where = f"{manifest.get('kind')} {meta.get('namespace', '')}/{meta.get('name')}"
        super().__init__(f"{where} rejected ({status}): {reason}")
        self.status, self.reason = status, reason


def submit(api: ApiClient, manifest: dict[str, Any], *, dry_run: bool = True) -> dict[str, Any]:
    """POST ``manifest`` to its collection; returns what the server would store."""
    resource = DynamicClient(api).resources.get(
        api_version=manifest["apiVersion"], kind=manifest["kind"]
    )
    namespace = manifest["metadata"].get("namespace") if resource.namespaced else None
    query = [("fieldValidation", "Strict")]
    if dry_run:
        query.append(("dryRun", "All"))
    method, url, headers, body, _ = api.param_serialize(
        method="POST",
        resource_path=resource.path(namespace=namespace),
        query_params=query,
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=manifest,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, body=body)
    response.read()
    payload = json.loads(response.data or b"{}")
    if response.status >= 300:
        raise Rejected(manifest, response.status, str(payload.get("message", payload))[:2000])
    return dict(payload)
