"""The runtime half: the controller deployed into the cluster. Never imports Pulumi."""
