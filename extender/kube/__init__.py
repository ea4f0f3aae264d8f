"""The Kubernetes face: watch-backed cluster state and the crash-safe binder."""
