"""A Pulumi dynamic provider that applies the Vault JWT configuration through hvac.

Three kinds of object, each one resource: a JWT auth mount (``jwt-mount``), a role on it
(``jwt-role``) and an ACL policy (``policy``). Diffs are precise: what Vault can change in
place is updated (discovery URL, bound issuer, bound claims, TTLs, policies, policy
text); what names the object (mount path, role name, policy name) replaces it. The same
code runs against a real OpenBao dev server in the tests.

Props use Vault's field names in camelCase (``roleType``, ``tokenTtl``), which is also
what the policy pack reads. ``address`` and ``token`` say where to apply; the token is a
secret and never leaves the provider as a plain output.
"""

from __future__ import annotations

import re
from typing import Any

import pulumi
from pulumi.dynamic import (
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

IDENTITY = {"jwt-mount": ("path",), "jwt-role": ("mount", "name"), "policy": ("name",)}
CONNECTION = ("address", "token")


def _client(props: dict[str, Any]) -> Any:
    import hvac  # imported here: the provider is serialised into the Pulumi state

    return hvac.Client(url=props["address"], token=props["token"])


def _object_id(props: dict[str, Any]) -> str:
    return f"{props['kind']}:" + "/".join(str(props[k]) for k in IDENTITY[props["kind"]])


def apply(props: dict[str, Any]) -> None:
    """Create or update one object to match ``props`` (idempotent)."""
    client = _client(props)
    kind = props["kind"]
    if kind == "jwt-mount":
        mounted = client.sys.list_auth_methods()
        if f"{props['path']}/" not in (mounted.get("data") or mounted):
            client.sys.enable_auth_method(
                "jwt", path=props["path"], description="GitHub Actions OIDC (runner-platform)"
            )
        client.auth.jwt.configure(
            oidc_discovery_url=props["oidcDiscoveryUrl"],
            bound_issuer=props["boundIssuer"],
            path=props["path"],
        )
    elif kind == "jwt-role":
        client.auth.jwt.create_role(
            props["name"],
            user_claim=props["userClaim"],
            allowed_redirect_uris=[],
            role_type=props["roleType"],
            bound_audiences=props["boundAudiences"],
            bound_claims=props["boundClaims"],
            bound_claims_type=props["boundClaimsType"],
            token_policies=props["tokenPolicies"],
            token_ttl=props["tokenTtl"],
            token_max_ttl=props["tokenMaxTtl"],
            claim_mappings=props.get("claimMappings"),
            path=props["mount"],
        )
    elif kind == "policy":
        client.sys.create_or_update_policy(props["name"], _resolve_accessors(client, props))
    else:
        raise ValueError(f"unknown Vault object kind {kind!r}")


_ACCESSOR = re.compile(r"@@accessor:([A-Za-z0-9_.-]+)@@")


def _resolve_accessors(client: Any, props: dict[str, Any]) -> str:
    """Policy templates name auth mounts by accessor, known only once the mount exists."""
    mounts = client.sys.list_auth_methods()
    mounts = mounts.get("data") or mounts

    def accessor(match: re.Match[str]) -> str:
        mount = mounts.get(f"{match.group(1)}/")
        if mount is None:
            raise ValueError(f"policy {props['name']}: auth mount {match.group(1)} is missing")
        return str(mount["accessor"])

    return _ACCESSOR.sub(accessor, str(props["policy"]))


def remove(props: dict[str, Any]) -> None:
    import hvac.exceptions

    client = _client(props)
    kind = props["kind"]
    try:
        if kind == "jwt-mount":
            client.sys.disable_auth_method(props["path"])
        elif kind == "jwt-role":
            client.auth.jwt.delete_role(props["name"], path=props["mount"])
        elif kind == "policy":
            client.sys.delete_policy(props["name"])
    except hvac.exceptions.InvalidPath:
        pass  # already gone


def exists(props: dict[str, Any]) -> bool:
    import hvac.exceptions

    client = _client(props)
    kind = props["kind"]
    try:
        if kind == "jwt-mount":
            mounted = client.sys.list_auth_methods()
            return f"{props['path']}/" in (mounted.get("data") or mounted)
        if kind == "jwt-role":
            client.auth.jwt.read_role(props["name"], path=props["mount"])
            return True
        return bool(client.sys.read_policy(props["name"]))
    except hvac.exceptions.InvalidPath:
        return False


class VaultObjectProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        apply(props)
        return CreateResult(id_=_object_id(props), outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        ignored = {"__provider", *CONNECTION}
        changed = sorted(
            k for k in set(olds) | set(news) if k not in ignored and olds.get(k) != news.get(k)
        )
        identity = IDENTITY.get(news.get("kind", ""), ())
        replaces = [k for k in changed if k in identity or k == "kind"]
        if news.get("address") != olds.get("address"):
            replaces.append("address")  # another server: create there, delete here
            changed.append("address")
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        apply(news)
        return UpdateResult(outs=news)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        remove(props)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_ if exists(props) else "", outs=props)


class VaultObject(Resource):
    """One Vault object; ``props`` as described in the module docstring."""

    def __init__(
        self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        secret = pulumi.ResourceOptions(additional_secret_outputs=["token"])
        super().__init__(
            VaultObjectProvider(), name, props, pulumi.ResourceOptions.merge(opts, secret)
        )
