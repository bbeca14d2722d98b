"""Signing keys of the update repositories: generation, encryption at rest, loading.

Keys are ed25519 (securesystemslib ``CryptoSigner``). Private keys are stored PKCS#8-encrypted with
FLEET_KEY_ENCRYPTION_SECRET. Decrypting runs a deliberately slow KDF, so a loaded signer is cached per
process by key id (a rotated key has a new id, so the cache never serves a retired key by mistake).
"""

from cryptography.hazmat.primitives import serialization
from django.conf import settings
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from ota.models import SigningKey

_signers: dict[str, CryptoSigner] = {}


def generate_signer() -> CryptoSigner:
    return CryptoSigner.generate_ed25519()


def encrypt_private_key(signer: CryptoSigner, password: str | None = None) -> str:
    """PEM PKCS#8 of the signer's private key, encrypted with ``password`` (default: the key secret)."""
    secret = password if password is not None else settings.KEY_ENCRYPTION_SECRET
    encryption = (
        serialization.BestAvailableEncryption(secret.encode("utf-8")) if secret else serialization.NoEncryption()
    )
    return signer._private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode("ascii")


def signer_from_pem(pem: bytes, password: str | None = None) -> CryptoSigner:
    """Load a signer from a PEM private key (an exported offline root key, or a stored online key)."""
    private_key = serialization.load_pem_private_key(pem, password=password.encode("utf-8") if password else None)
    public_key = SSlibKey.from_crypto(private_key.public_key())
    return CryptoSigner(private_key, public_key=public_key)


def public_key_of(row: SigningKey) -> Key:
    return Key.from_dict(row.keyid, dict(row.public_key))


def signer_of(row: SigningKey) -> CryptoSigner:
    """The signer of a stored online key (decrypted once per process)."""
    if not row.encrypted_private_pem:
        raise LookupError(f"key {row.keyid} is kept offline; supply it from its exported file")
    signer = _signers.get(row.keyid)
    if signer is None:
        signer = signer_from_pem(row.encrypted_private_pem.encode("ascii"), settings.KEY_ENCRYPTION_SECRET)
        _signers[row.keyid] = signer
    return signer


def store_key(*, repository: str, role: str, signer: CryptoSigner, keep_private: bool = True) -> SigningKey:
    public = signer.public_key
    return SigningKey.objects.create(
        repository=repository,
        role=role,
        keyid=public.keyid,
        public_key=public.to_dict(),
        encrypted_private_pem=encrypt_private_key(signer) if keep_private else "",
    )
