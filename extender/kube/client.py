"""Kubernetes API clients from a kubeconfig file or the pod's service account."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config
from kubernetes.config import ConfigException

from extender.core.errors import UsageError


def api_client(kubeconfig: str | None = None, pool: int = 32) -> client.ApiClient:
    """An ApiClient for `kubeconfig`, or in-cluster credentials when it is None. Credentials that
    cannot be loaded raise UsageError naming the problem and the fix."""
    cfg = client.Configuration()
    try:
        if kubeconfig:
            if not Path(kubeconfig).is_file():
                raise UsageError(f"--kubeconfig {kubeconfig}: no such file; name a kubeconfig that exists "
                                 "(e.g. ~/.kube/config), or use --in-cluster inside a pod")
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)
    except (ConfigException, TypeError, ValueError, AttributeError, KeyError) as exc:  # malformed files raise any
        if kubeconfig:
            raise UsageError(f"--kubeconfig {kubeconfig}: not a usable kubeconfig ({exc}); "
                             "check the file with `kubectl --kubeconfig FILE get nodes`") from None
        raise UsageError(f"--in-cluster: no in-cluster credentials ({exc}); this works only inside a pod "
                         "with a service account: outside a cluster use --kubeconfig FILE") from None
    cfg.connection_pool_maxsize = pool  # binds run in parallel on the server's threads
    return client.ApiClient(cfg)


def core_api(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)
