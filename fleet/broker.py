"""Credentials and configuration of the MQTT broker, written into one state folder.

`manage.py broker_setup` calls this for `make run`, the test fixture and the docker init step, so all
three run Mosquitto with the same files and rules (docker/mosquitto/). The folder holds:

    device-ca.pem        the device CA (from the database): devices' certificates chain to it
    device-crl.pem       its revocation list (rewritten by `export_crl` / the CRL task)
    server.crt/.key      the broker's TLS certificate, issued by the device CA (devices verify it)
    platform-ca.pem/.key a separate CA for the platform's own MQTT clients, so that no device
                         certificate is ever accepted on the platform listener
    platform-ingest.*    client certificate of ingest workers (subscribe to device topics)
    platform-publisher.* client certificate of the publisher (ota/assign, policy)
    mosquitto.conf       rendered from docker/mosquitto/mosquitto.conf.template
"""

import datetime as dt
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings

from devices import authority
from devices.ca import cert_pem, create_ca, issue_certificate

PLATFORM_ROLES = ("platform-ingest", "platform-publisher")
RENDER_SCRIPT = settings.BASE_DIR / "docker" / "mosquitto" / "render_config.py"
# Renew a file-based certificate when less than this is left.
RENEW_BEFORE = dt.timedelta(days=30)


def _write(path: Path, content: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _still_valid(cert_path: Path) -> bool:
    if not cert_path.exists():
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE


def _broker_user() -> str | None:
    """Mosquitto started as root switches to its own user: files it reads must be readable by it."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return None
    return "mosquitto"


def _platform_ca(state_dir: Path):
    key_path, cert_path = state_dir / "platform-ca.key", state_dir / "platform-ca.pem"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key, cert = create_ca("Fleet Platform Clients CA")
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert_pem(cert).encode(), 0o644)
    return key, cert


class BrokerCaMismatch(RuntimeError):
    """The broker folder trusts another device CA than the database's active one."""


def write_crl(state_dir: Path) -> Path:
    """Rewrite the broker's revocation list from the database.

    Refuses when the folder's device-ca.pem is not the active CA: Mosquitto checks the CRL against the CA
    it was configured with, and a CRL from another CA would make it refuse every device. That happens
    after a CA change without a new `broker_setup` (re-run it) or when two installations share a folder.
    """
    ca_file = state_dir / "device-ca.pem"
    active_pem = authority.active_ca().certificate_pem
    if ca_file.exists() and ca_file.read_text().strip() != active_pem.strip():
        raise BrokerCaMismatch(f"{ca_file} is not the active device CA; run `manage.py broker_setup` again")
    path = state_dir / "device-crl.pem"
    _write(path, authority.current_crl_pem().encode(), 0o644)
    return path


def broker_setup(
    *,
    state_dir: Path,
    server_names: list[str],
    device_port: int,
    platform_port: int,
    bind_address: str,
    platform_bind_address: str = "127.0.0.1",
    log_dest: str = "stderr",
) -> Path:
    """Write (or renew) every credential the broker and the platform clients need; render the config.

    Idempotent: existing certificates are kept until they are within RENEW_BEFORE of expiry, so a
    restart does not invalidate the platform clients' certificates.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o755)
    (state_dir / "data").mkdir(exist_ok=True)
    device_ca = authority.active_ca()
    _write(state_dir / "device-ca.pem", device_ca.certificate_pem.encode(), 0o644)
    write_crl(state_dir)

    if not _still_valid(state_dir / "server.crt"):
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = authority.issue_server_certificate(
            public_key=server_key.public_key(), common_name=server_names[0], server_names=server_names
        )
        _write(state_dir / "server.key", _key_pem(server_key), 0o600)
        _write(state_dir / "server.crt", cert_pem(server_cert).encode(), 0o644)

    platform_key, platform_cert = _platform_ca(state_dir)
    for role in PLATFORM_ROLES:
        if _still_valid(state_dir / f"{role}.crt"):
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_certificate(
            ca_key=platform_key, ca_cert=platform_cert, public_key=key.public_key(), common_name=role, days=365
        )
        _write(state_dir / f"{role}.key", _key_pem(key), 0o600)
        _write(state_dir / f"{role}.crt", cert_pem(cert).encode(), 0o644)

    user = _broker_user()
    if user:
        shutil.chown(state_dir / "server.key", user=user)
        shutil.chown(state_dir / "data", user=user)
    subprocess.run(
        [
            sys.executable,
            str(RENDER_SCRIPT),
            "--state-dir",
            str(state_dir),
            "--device-port",
            str(device_port),
            "--platform-port",
            str(platform_port),
            "--bind",
            bind_address,
            "--platform-bind",
            platform_bind_address,
            "--log-dest",
            log_dest,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return state_dir / "mosquitto.conf"


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
    if not found:
        raise RuntimeError("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")
    return found
