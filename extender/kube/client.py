"""Kubernetes API clients from a kubeconfig file or the pod's service account."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client import ApiException
from kubernetes.config import ConfigException

from extender.core.errors import UsageError

BINDING_PATH = "/api/v1/namespaces/{namespace}/pods/{name}/binding"


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


class CoreApi(client.CoreV1Api):
    """CoreV1Api whose raw Binding post (a plain dict body, `_preload_content=False`: how the bind
    posts it) skips the generated method's per-call argument validation (pydantic validate_call,
    about half of the client's CPU per bind, measured) and goes straight to the same request path:
    same URL, headers, auth, timeout; a non-2xx answer raises the same ApiException."""

    def create_namespaced_pod_binding(self, name: str, namespace: str, body: Any, **kwargs: Any) -> Any:
        if kwargs.get("_preload_content", True) or set(kwargs) - {"_preload_content", "_request_timeout"} \
                or not isinstance(body, dict):
            return super().create_namespaced_pod_binding(name, namespace, body, **kwargs)
        c = self.api_client
        request = c.param_serialize("POST", BINDING_PATH, path_params={"namespace": namespace, "name": name},
                                    header_params={"Accept": "application/json", "Content-Type": "application/json"},
                                    body=body, auth_settings=["BearerToken"])
        resp = c.call_api(*request, _request_timeout=kwargs.get("_request_timeout"))
        if not 200 <= resp.status <= 299:
            resp.read()
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return resp.response


def core_api(api: client.ApiClient) -> client.CoreV1Api:
    return CoreApi(api)
