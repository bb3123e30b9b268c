"""The one place stack config enters the program, validated into a PlatformSpec.

Every key of :class:`controller.model.PlatformSpec` is one config key of the
``runner-platform`` namespace, spelled the same (``runner-platform:teams``), so an error
path like ``teams[2].pools[0]`` points straight at the stack file.
"""

from __future__ import annotations

from typing import Any

import pulumi

from controller.model import PlatformSpec, SpecError, load_spec

CONFIG_NAMESPACE = "runner-platform"
SPEC_KEYS: tuple[str, ...] = tuple(PlatformSpec.model_fields)


def read_spec_document(config: pulumi.Config | None = None) -> dict[str, Any]:
    """The raw stack config as one document (keys left out stay out, defaults apply)."""
    config = config or pulumi.Config(CONFIG_NAMESPACE)
    document: dict[str, Any] = {}
    for key in SPEC_KEYS:
        value = config.get_object(key)
        if value is not None:
            document[key] = value
    return document


def load_stack_spec(config: pulumi.Config | None = None) -> PlatformSpec:
    """Validate the stack config, or stop the program before any resource is declared."""
    try:
        spec = load_spec(read_spec_document(config))
    except SpecError as error:
        # RunError prints the message alone: the user needs the paths, not a traceback.
        raise pulumi.RunError(f"stack config: {error}") from None
    aws_region = pulumi.Config("aws").get("region")
    if aws_region is not None and aws_region != spec.cluster.region:
        raise pulumi.RunError(
            f"stack config: cluster.region is '{spec.cluster.region}' but aws:region is "
            f"'{aws_region}'; set both to the same region"
        )
    return spec


def load_vault_token(config: pulumi.Config | None = None) -> pulumi.Output[str]:
    """The token the Vault provider applies configuration with (a stack secret)."""
    config = config or pulumi.Config(CONFIG_NAMESPACE)
    return config.require_secret("vault_token")
