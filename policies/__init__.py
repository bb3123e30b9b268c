"""The runner-platform CrossGuard policy pack (run with ``--policy-pack policies``)."""
