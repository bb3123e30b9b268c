"""The local environment's two tables of EC2 instance facts agree: the node shapes the
KWOK pool nodes imitate (``kube_objects.INSTANCE_PROFILES``) and the price table the
twin's Karpenter and the cost report read (``localenv/prices.yaml``)."""

from __future__ import annotations

import pytest

from localenv import stack_objects
from localenv.kube_objects import INSTANCE_PROFILES, PROFILE_INSTANCE_TYPES


@pytest.mark.parametrize("name", sorted(INSTANCE_PROFILES))
def test_a_node_shape_is_the_price_tables_instance_type(name: str) -> None:
    profile = INSTANCE_PROFILES[name]
    priced = stack_objects.load_prices().get(name)  # a shape with no price is refused too
    shape = (profile.cpu, profile.memory_gib, profile.gpus, profile.nvme_gib)
    assert shape == (priced.vcpu, priced.memory_gib, priced.gpus, priced.nvme_gib), name


def test_every_profiles_default_node_shape_is_known() -> None:
    assert set(PROFILE_INSTANCE_TYPES.values()) <= set(INSTANCE_PROFILES)
