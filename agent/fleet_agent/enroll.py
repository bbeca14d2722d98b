"""Enrollment and certificate renewal over the platform's HTTP API (stdlib urllib: no extra dependency).

The device key is made here and never leaves the device; only CSRs are sent. Everything the platform
answers at enrollment is stored (``enrollment.json``, 0600 since it holds the device token), so fields
other parts add later (trusted update roots, URLs) reach the agent without a change here.
"""

import datetime as dt
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet_agent import __version__
from fleet_agent.fsutil import atomic_write, atomic_write_json, read_json
from fleet_agent.identity import build_csr_pem, generate_private_key, private_key_pem

HTTP_TIMEOUT_S = 30


class EnrollError(RuntimeError):
    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status


@dataclass(frozen=True)
class Paths:
    """The files of one device's state directory (docs/agent.md "On-disk layout")."""

    root: Path

    @property
    def key(self) -> Path:
        return self.root / "device.key"

    @property
    def cert(self) -> Path:
        return self.root / "device.crt"

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def enrollment(self) -> Path:
        return self.root / "enrollment.json"

    @property
    def settings(self) -> Path:
        return self.root / "agent.json"

    @property
    def queue(self) -> Path:
        return self.root / "queue.db"

    @property
    def runtime(self) -> Path:
        return self.root / "runtime.json"


def http_json(method: str, url: str, body: dict | None = None, *, device_token: str | None = None) -> dict:
    headers = {"Accept": "application/json", "User-Agent": f"fleet-agent/{__version__}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if device_token:
        headers["Authorization"] = f"Device {device_token}"
    if not url.startswith(("http://", "https://")):
        raise EnrollError("bad_url", f"not an http(s) URL: {url}")
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - scheme checked
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read()).get("error", {})
        except (ValueError, AttributeError):
            error = {}
        raise EnrollError(error.get("code", f"http_{exc.code}"), error.get("message", str(exc)), exc.code) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise EnrollError("unreachable", f"{url}: {exc}") from exc


def _store_credentials(paths: Path | Paths, response: dict) -> None:
    paths = paths if isinstance(paths, Paths) else Paths(paths)
    if response.get("ca_chain"):
        atomic_write(paths.ca, response["ca_chain"].encode())
    if response.get("certificate"):
        atomic_write(paths.cert, response["certificate"].encode())


def _save_enrollment(paths: Paths, enrollment: dict) -> None:
    atomic_write_json(paths.enrollment, enrollment, mode=0o600)


def load_enrollment(state_dir: Path) -> dict:
    enrollment = read_json(Paths(state_dir).enrollment)
    if enrollment is None:
        raise EnrollError("not_enrolled", f"{state_dir} holds no enrollment; run `fleet-agent enroll` first")
    return enrollment


def enroll(
    *,
    server: str,
    token: str,
    state_dir: Path,
    device_id: str | None = None,
    name: str = "",
    hardware_class: str = "",
    runtime: str = "",
    poll_interval_s: float = 10.0,
    wait_s: float | None = None,
) -> dict:
    """Enroll this device and return the stored enrollment. A pending device polls until approved
    (up to ``wait_s``; None waits forever); running it again on a pending state directory resumes polling."""
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    paths = Paths(state_dir)
    existing = read_json(paths.enrollment)
    if existing is None:
        key = generate_private_key()
        # The key is written before anything is sent: a CSR never exists for a key we could lose.
        atomic_write(paths.key, private_key_pem(key), mode=0o600)
        response = http_json(
            "POST",
            f"{server.rstrip('/')}/api/v1/enroll/",
            {
                "token": token,
                "csr": build_csr_pem(key, device_id),
                "device_id": device_id or "",
                "name": name,
                "hardware_class": hardware_class,
                "runtime": runtime,
                "agent_version": __version__,
            },
        )
        existing = response | {"server_url": server.rstrip("/"), "hardware_class": hardware_class, "runtime": runtime}
        _store_credentials(paths, response)
        _save_enrollment(paths, existing)
    if existing.get("status") == "active" and paths.cert.exists():
        return existing
    return wait_for_approval(state_dir, poll_interval_s=poll_interval_s, wait_s=wait_s)


def wait_for_approval(state_dir: Path, *, poll_interval_s: float = 10.0, wait_s: float | None = None) -> dict:
    paths = Paths(state_dir)
    enrollment = load_enrollment(state_dir)
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while True:
        response = http_json(
            "GET", f"{enrollment['server_url']}/api/v1/device/", device_token=enrollment["device_token"]
        )
        if response.get("status") == "active" and response.get("certificate"):
            _store_credentials(paths, response)
            enrollment |= response
            _save_enrollment(paths, enrollment)
            return enrollment
        if response.get("status") == "revoked":
            raise EnrollError("device_revoked", "the platform revoked this device")
        if deadline is not None and time.monotonic() >= deadline:
            raise EnrollError("pending", "the device is still waiting for an operator's approval")
        time.sleep(poll_interval_s)


def certificate(state_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Paths(state_dir).cert.read_bytes())


def needs_renewal(cert: x509.Certificate, now: dt.datetime | None = None) -> bool:
    """Renew when less than a third of the certificate's lifetime is left (30 of 90 days by default)."""
    now = now or dt.datetime.now(dt.UTC)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime / 3


def renew_certificate(state_dir: Path) -> x509.Certificate:
    """Ask for a fresh certificate for the device's key (a new CSR, device-token auth); replace the file
    atomically, so a crash leaves the old or the new certificate, both valid for this key."""
    paths = Paths(state_dir)
    enrollment = load_enrollment(state_dir)
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    response = http_json(
        "POST",
        f"{enrollment['server_url']}/api/v1/device/certificate/",
        {"csr": build_csr_pem(key, enrollment["device_id"])},
        device_token=enrollment["device_token"],
    )
    _store_credentials(paths, response)
    enrollment |= {k: v for k, v in response.items() if k != "certificate"}
    _save_enrollment(paths, enrollment)
    return certificate(state_dir)
