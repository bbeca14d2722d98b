"""The platform's device CA: created on first use, its key decrypted once per process.

Decrypting the PKCS#8 key runs a deliberately slow KDF, so the loaded key is cached per process. The
cache is keyed by the CA row and the row is looked up again at most every CA_RECHECK_SECONDS, so a
rotated CA is picked up within that time without a query on every enrollment.
"""

import datetime as dt
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.conf import settings
from django.db import IntegrityError, transaction

from devices import ca
from devices.models import CertificateAuthority, DeviceCertificate


@dataclass(frozen=True)
class LoadedCa:
    row_id: int
    key: object
    certificate: x509.Certificate
    certificate_pem: str


CA_RECHECK_SECONDS = 30.0
_cache: dict[int, LoadedCa] = {}
_checked_at = 0.0


def clear_cache() -> None:
    """Forget the loaded CA (tests roll the database back under the process; production never needs it)."""
    global _checked_at
    _cache.clear()
    _checked_at = 0.0


def active_ca() -> LoadedCa:
    global _checked_at
    if _cache and time.monotonic() - _checked_at < CA_RECHECK_SECONDS:
        return next(iter(_cache.values()))
    row = CertificateAuthority.objects.filter(active=True).first()
    if row is None:
        row = _create_ca()
    loaded = _cache.get(row.pk)
    if loaded is None:
        loaded = LoadedCa(
            row_id=row.pk,
            key=ca.decrypt_private_key(row.encrypted_key_pem.encode("ascii"), settings.KEY_ENCRYPTION_SECRET),
            certificate=x509.load_pem_x509_certificate(row.certificate_pem.encode("ascii")),
            certificate_pem=row.certificate_pem,
        )
        _cache.clear()
        _cache[row.pk] = loaded
    _checked_at = time.monotonic()
    return loaded


def _create_ca() -> CertificateAuthority:
    key, cert = ca.create_ca(settings.DEVICE_CA_COMMON_NAME)
    try:
        with transaction.atomic():
            return CertificateAuthority.objects.create(
                name=settings.DEVICE_CA_COMMON_NAME,
                certificate_pem=ca.cert_pem(cert),
                encrypted_key_pem=ca.encrypt_private_key(key, settings.KEY_ENCRYPTION_SECRET).decode("ascii"),
            )
    except IntegrityError:
        # Another process created it first (the one_active_ca constraint): use theirs.
        return CertificateAuthority.objects.get(active=True)


def issue_client_certificate(
    *, public_key, common_name: str, days: int | None = None, authority: LoadedCa | None = None
) -> x509.Certificate:
    authority = authority or active_ca()
    return ca.issue_certificate(
        ca_key=authority.key,
        ca_cert=authority.certificate,
        public_key=public_key,
        common_name=common_name,
        days=days or settings.DEVICE_CERT_DAYS,
    )


def issue_server_certificate(*, public_key, common_name: str, server_names: list[str], days: int = 365):
    authority = active_ca()
    return ca.issue_certificate(
        ca_key=authority.key,
        ca_cert=authority.certificate,
        public_key=public_key,
        common_name=common_name,
        days=days,
        server_names=server_names,
    )


def current_crl_pem() -> str:
    """The revocation list of every revoked, unexpired certificate, for the broker (and anyone else)."""
    authority = active_ca()
    now = dt.datetime.now(dt.UTC)
    revoked = [
        (int(serial, 16), revoked_at)
        for serial, revoked_at in DeviceCertificate.objects.filter(
            revoked_at__isnull=False, not_after__gt=now
        ).values_list("serial", "revoked_at")
    ]
    crl = ca.build_crl(ca_key=authority.key, ca_cert=authority.certificate, revoked=revoked, days=settings.CRL_DAYS)
    return crl.public_bytes(serialization.Encoding.PEM).decode("ascii")
