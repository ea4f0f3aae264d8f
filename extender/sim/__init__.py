"""The simulator face: replays workloads and public traces through the engine's own filter, prioritize
and bind, with kube-scheduler's host fit and node choice modelled around it."""
