"""The webhook's TLS without cert-manager: one CA and serving certificate per installation, kept in a
Secret, and the CA written into the MutatingWebhookConfiguration's caBundle.

Every replica runs `ensure_secret` at start: the first creates the Secret, the others (409
AlreadyExists) read it, so all serve the same certificate and one caBundle trusts them all.
"""

from __future__ import annotations

import base64
import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes.client import AdmissionregistrationV1Api, ApiException, CoreV1Api, V1ObjectMeta, V1Secret

log = logging.getLogger(__name__)
VALID_DAYS = 3650


@dataclass(frozen=True)
class ServingCert:
    ca: bytes
    cert: bytes
    key: bytes

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """tls.crt and tls.key under `directory` (an emptyDir: the root filesystem is read-only)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "tls.crt").write_bytes(self.cert)
        key = d / "tls.key"
        key.touch(mode=0o600)
        key.write_bytes(self.key)
        return d / "tls.crt", key


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def generate(dns_names: list[str]) -> ServingCert:
    """A fresh CA and a serving certificate for `dns_names` signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=VALID_DAYS)
    ca_key, key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpuslice-webhook-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return ServingCert(ca.public_bytes(pem), cert.public_bytes(pem), _pem_key(key))


def service_dns_names(service: str, namespace: str) -> list[str]:
    return [f"{service}.{namespace}.svc", f"{service}.{namespace}", service, f"{service}.{namespace}.svc.cluster.local"]


def ensure_secret(core: CoreV1Api, namespace: str, name: str, dns_names: list[str]) -> ServingCert:
    """The installation's certificate: read from the Secret, or made and stored there by the first replica."""
    for _ in range(3):
        try:
            data = core.read_namespaced_secret(name, namespace).data or {}
            if {"ca.crt", "tls.crt", "tls.key"} <= set(data):
                return ServingCert(*(base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key")))
            raise ValueError(f"secret {namespace}/{name} lacks ca.crt/tls.crt/tls.key: delete it to let it be made")
        except ApiException as exc:
            if exc.status != 404:
                raise
        made = generate(dns_names)
        body = V1Secret(metadata=V1ObjectMeta(name=name, namespace=namespace,
                                              labels={"app.kubernetes.io/part-of": "gpuslice"}),
                        type="kubernetes.io/tls",
                        data={k: base64.b64encode(v).decode() for k, v in
                              (("ca.crt", made.ca), ("tls.crt", made.cert), ("tls.key", made.key))})
        try:
            core.create_namespaced_secret(namespace, body)
            log.info("made the webhook certificate (secret %s/%s, %s)", namespace, name, ", ".join(dns_names))
            return made
        except ApiException as exc:
            if exc.status != 409:  # another replica made it first: read theirs
                raise
    raise RuntimeError(f"secret {namespace}/{name}: could not create or read it")


def patch_ca_bundle(api: AdmissionregistrationV1Api, configuration: str, ca: bytes) -> int:
    """Write `ca` into every webhook of the MutatingWebhookConfiguration; returns how many changed."""
    bundle = base64.b64encode(ca).decode()
    config = api.read_mutating_webhook_configuration(configuration)
    ops = [{"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
           for i, hook in enumerate(config.webhooks or [])
           if (hook.client_config.ca_bundle or "") != bundle]
    if ops:
        api.patch_mutating_webhook_configuration(configuration, ops)
        log.info("wrote the CA into %d webhook(s) of %s", len(ops), configuration)
    return len(ops)
