"""`gpuslice webhook`: the mutating admission webhook (pods opt in with gpuslice keys alone), over TLS.

Certificates come from files (--tls-cert/--tls-key, e.g. from cert-manager) or, as deploy/ runs
it, from --cert-secret: the installation's own CA and certificate in a Secret, with the CA written
into the MutatingWebhookConfiguration (--webhook-configuration)."""

from __future__ import annotations

import argparse
import errno
import logging

from extender.core.errors import UsageError
from extender.core.policy import PolicyError
from extender.engine.policy_store import PolicyStore
from extender.http.tls import make_tls_server, tls_context
from extender.http.webhook import create_webhook_app

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("webhook", help="the mutating admission webhook: sets schedulerName and the gpu-share "
                       "request for pods with gpuslice keys, refuses malformed requests")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--tls-cert", metavar="FILE", help="serving certificate (with --tls-key)")
    p.add_argument("--tls-key", metavar="FILE", help="its private key")
    p.add_argument("--cert-secret", metavar="NAMESPACE/NAME",
                   help="instead of files: keep the installation's CA and certificate in this Secret (made "
                        "by the first replica) and serve that")
    p.add_argument("--service", metavar="NAMESPACE/NAME", help="with --cert-secret: the Service the API server "
                   "calls (the certificate's DNS names)")
    p.add_argument("--cert-dns-name", action="append", default=[], metavar="NAME",
                   help="with --cert-secret: another DNS name for the certificate (repeatable), for an API server "
                        "that calls the webhook by URL")
    p.add_argument("--webhook-configuration", metavar="NAME",
                   help="with --cert-secret: write the CA into this MutatingWebhookConfiguration's caBundle")
    p.add_argument("--cert-dir", default="/run/gpuslice/tls", metavar="DIR",
                   help="where --cert-secret's files are written (a writable emptyDir)")
    p.add_argument("--kubeconfig", metavar="FILE", help="with --cert-secret: API credentials (default: in-cluster)")
    p.add_argument("--policy", metavar="FILE", help="policy YAML (prefix and request rules); hot-reloaded")
    p.add_argument("--policy-poll", type=float, default=2.0, metavar="SECONDS")
    p.add_argument("--scheduler-name", default="gpuslice", metavar="NAME",
                   help="schedulerName given to pods that left it to the default scheduler")
    p.set_defaults(func=webhook_cmd)


def _split(value: str, flag: str) -> tuple[str, str]:
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name:
        raise UsageError(f"{flag} {value}: expected NAMESPACE/NAME")
    return namespace, name


def _certificate_files(args: argparse.Namespace) -> tuple[str, str]:
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key) or args.cert_secret:
            raise UsageError("use --tls-cert with --tls-key, or --cert-secret alone")
        return args.tls_cert, args.tls_key
    if not args.cert_secret:
        raise UsageError("the API server calls webhooks over TLS only: give --tls-cert and --tls-key, or "
                         "--cert-secret NAMESPACE/NAME with --service NAMESPACE/NAME")
    if not args.service:
        raise UsageError("--cert-secret needs --service NAMESPACE/NAME (the certificate's DNS names)")
    from kubernetes.client import AdmissionregistrationV1Api

    from extender.kube.client import api_client, core_api
    from extender.kube.webhook_certs import ensure_secret, patch_ca_bundle, service_dns_names

    secret_ns, secret = _split(args.cert_secret, "--cert-secret")
    svc_ns, svc = _split(args.service, "--service")
    client = api_client(args.kubeconfig, pool=2)
    cert = ensure_secret(core_api(client), secret_ns, secret, [*service_dns_names(svc, svc_ns), *args.cert_dns_name])
    if args.webhook_configuration:
        patch_ca_bundle(AdmissionregistrationV1Api(client), args.webhook_configuration, cert.ca)
    crt, key = cert.write(args.cert_dir)
    return str(crt), str(key)


def webhook_cmd(args: argparse.Namespace) -> int:
    try:
        policies = PolicyStore.from_file(args.policy) if args.policy else PolicyStore()
    except (PolicyError, OSError) as exc:
        raise UsageError(f"--policy {args.policy}: {str(exc).splitlines()[0]}; see `gpuslice policy check`") from None
    cert, key = _certificate_files(args)
    if args.policy:
        policies.watch(args.policy_poll)
    app = create_webhook_app(policies, args.scheduler_name)
    try:
        server = make_tls_server(app, args.host, args.port, tls_context(cert, key))
    except FileNotFoundError:
        raise UsageError(f"cannot read {cert} or {key}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"cannot listen on {args.host}:{args.port}: address already in use; choose another "
                             "--port") from None
        raise
    print(f"gpuslice webhook listening on https://{args.host}:{server.server_address[1]}/mutate", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
