"""Entry point the Pulumi CLI runs for ``pulumi preview --policy-pack policies``.

The CLI starts this file from inside ``policies/``; the rules are imported as the
``policies`` package (which tests import too), so its parent joins the path first.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, PolicyPack

from policies.rules import ALL_POLICIES

PolicyPack(
    name="runner-platform",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=ALL_POLICIES,
)
