"""Kubernetes API clients from a kubeconfig file or the pod's service account."""

from __future__ import annotations

from kubernetes import client, config


def api_client(kubeconfig: str | None = None, pool: int = 32) -> client.ApiClient:
    """An ApiClient for `kubeconfig`, or in-cluster credentials when it is None."""
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = pool  # binds run in parallel on the server's threads
    return client.ApiClient(cfg)


def core_api(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)
