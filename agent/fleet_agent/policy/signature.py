"""The signed policy envelope on ``devices/{id}/policy`` and its verification on the device.

Envelope (JSON): ``{"v": 1, "key_id": ..., "payload": {...}, "signature": base64(Ed25519(canonical(payload)))}``
with ``payload = {"v", "device_id", "version", "issued_at", "policy", "prices"}``. The canonical form is
JSON with sorted keys and no spaces, so both sides sign and verify the same bytes.

The device accepts an envelope only if the signature verifies with the platform's policy key (received at
enrollment), it names this device, and its version is higher than the last accepted one (a replayed old
policy is refused). Otherwise it keeps the last good policy.
"""

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleet_agent.policy.document import DOCUMENT_VERSION

ENVELOPE_VERSION = 1


class PolicyVerificationError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return binascii.hexlify(raw[:8]).decode("ascii")


def sign_policy(private_key: Ed25519PrivateKey, payload: dict) -> bytes:
    signature = private_key.sign(canonical_json(payload))
    envelope = {
        "v": ENVELOPE_VERSION,
        "key_id": key_id(private_key.public_key()),
        "payload": payload,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return canonical_json(envelope)


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode("ascii") if isinstance(pem, str) else pem)
    if not isinstance(key, Ed25519PublicKey):
        raise PolicyVerificationError("key_type", "The policy key must be an Ed25519 public key.")
    return key


def verify_signed_policy(raw: bytes, public_key: Ed25519PublicKey, *, device_id: str, min_version: int = 0) -> dict:
    """The verified payload of an envelope, or PolicyVerificationError saying why it is refused."""
    try:
        envelope = json.loads(raw)
        payload = envelope["payload"]
        signature = base64.b64decode(envelope["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise PolicyVerificationError("malformed", f"Not a policy envelope: {exc}") from exc
    if envelope.get("v") != ENVELOPE_VERSION or not isinstance(payload, dict):
        raise PolicyVerificationError("malformed", "Unknown envelope version.")
    try:
        public_key.verify(signature, canonical_json(payload))
    except InvalidSignature as exc:
        raise PolicyVerificationError("bad_signature", "The signature does not verify with the policy key.") from exc
    if payload.get("device_id") != device_id:
        raise PolicyVerificationError("wrong_device", "The policy is for another device.")
    version = payload.get("version")
    if not isinstance(version, int) or version <= min_version:
        raise PolicyVerificationError("stale_version", f"Version {version} is not newer than {min_version}.")
    policy = payload.get("policy")
    if not isinstance(policy, dict) or policy.get("v") != DOCUMENT_VERSION:
        raise PolicyVerificationError("malformed", "The payload has no policy of a known version.")
    return payload


@dataclass
class PolicyKeeper:
    """Holds the device's last good policy: a new envelope replaces it only if it verifies.

    With a ``path``, the accepted envelope is also written there (atomically), and ``restore()`` reads it
    back after a restart, verifying it again: the device enforces its last good policy even offline.
    """

    public_key: Ed25519PublicKey
    device_id: str
    path: Path | None = None
    payload: dict | None = None
    last_error: PolicyVerificationError | None = None

    def restore(self) -> bool:
        """Load the stored envelope, if there is one and it still verifies."""
        if self.path is None or not self.path.exists():
            return False
        try:
            self.payload = verify_signed_policy(self.path.read_bytes(), self.public_key, device_id=self.device_id)
        except PolicyVerificationError as exc:
            self.last_error = exc
            return False
        return True

    @property
    def version(self) -> int:
        return self.payload["version"] if self.payload else 0

    def offer(self, raw: bytes) -> bool:
        """Try a received envelope; True if it is now the active policy."""
        try:
            self.payload = verify_signed_policy(
                raw, self.public_key, device_id=self.device_id, min_version=self.version
            )
        except PolicyVerificationError as exc:
            self.last_error = exc
            return False
        self.last_error = None
        if self.path is not None:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            with open(tmp, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        return True
