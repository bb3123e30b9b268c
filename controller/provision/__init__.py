"""Pod Provisioner: demand per scale set, JIT runners, the runner pod, lifecycle and reaper."""
