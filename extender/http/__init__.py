"""The HTTP face: the kube-scheduler extender v1 API, health, metrics and debug endpoints."""
