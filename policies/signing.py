"""The platform's policy signing key: created on first use, encrypted at rest, decrypted once per process.

Decrypting the PKCS#8 key runs a deliberately slow KDF, so the loaded key is cached per process, keyed by
the row so a rotated key is picked up.
"""

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.db import IntegrityError, connection, transaction

from devices.ca import decrypt_private_key, encrypt_private_key
from fleet_agent.policy.signature import key_id
from policies.models import PolicySigningKey


@dataclass(frozen=True)
class LoadedPolicyKey:
    row_id: int
    key_id: str
    private_key: Ed25519PrivateKey
    public_key_pem: str


_cache: dict[int, LoadedPolicyKey] = {}


def active_policy_key() -> LoadedPolicyKey:
    row = PolicySigningKey.objects.filter(active=True).first() or _create_key()
    loaded = _cache.get(row.pk)
    if loaded is None:
        private_key = decrypt_private_key(row.encrypted_private_key_pem.encode("ascii"), settings.KEY_ENCRYPTION_SECRET)
        loaded = LoadedPolicyKey(
            row_id=row.pk, key_id=row.key_id, private_key=private_key, public_key_pem=row.public_key_pem
        )
        _cache.clear()
        _cache[row.pk] = loaded
    return loaded


def policy_public_key_pem() -> str:
    """The public key devices verify policies with; given to them at enrollment."""
    # One column in plain SQL, not a model instance: enrollment reads this on every request
    # (docs/performance.md) and the row also holds the encrypted private key, which it does not need.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT public_key_pem FROM {PolicySigningKey._meta.db_table} WHERE active"  # noqa: S608 - table name from the model
        )
        row = cursor.fetchone()
    return row[0] if row is not None else _create_key().public_key_pem


def _create_key() -> PolicySigningKey:
    private_key = Ed25519PrivateKey.generate()
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        with transaction.atomic():
            return PolicySigningKey.objects.create(
                key_id=key_id(private_key.public_key()),
                public_key_pem=public_pem.decode("ascii"),
                encrypted_private_key_pem=encrypt_private_key(private_key, settings.KEY_ENCRYPTION_SECRET).decode(
                    "ascii"
                ),
            )
    except IntegrityError:
        # Another process created it first (the one_active_policy_key constraint): use theirs.
        return PolicySigningKey.objects.get(active=True)
