"""Enrollment and certificate renewal against the real platform API (live server, PostgreSQL)."""

import datetime as dt
import stat
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization

from devices import services as device_services
from devices.models import Device
from fleet.services import Actor
from fleet_agent.cli import main as cli_main
from fleet_agent.cli import status_report
from fleet_agent.enroll import EnrollError, certificate, enroll, needs_renewal, renew_certificate
from tests.agent.conftest import enroll_device
from tests.factories import make_token


def _cert_matches_key(state_dir) -> bool:
    key = serialization.load_pem_private_key((state_dir / "device.key").read_bytes(), password=None)
    return certificate(state_dir).public_key() == key.public_key()


def test_enroll_stores_key_0600_certificate_ca_and_the_whole_response(live_server, tmp_path):
    state = tmp_path / "cam-enroll"
    enrollment = enroll_device(live_server.url, state, "cam-enroll")
    assert enrollment["status"] == "active" and enrollment["device_id"] == "cam-enroll"
    assert stat.S_IMODE((state / "device.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "enrollment.json").stat().st_mode) == 0o600  # holds the device token
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert enrollment["device_token"] and enrollment["mqtt_url"].startswith("mqtts://")
    assert enrollment["server_url"] == live_server.url
    assert certificate(state).subject.rfc4514_string() == "CN=cam-enroll"
    assert _cert_matches_key(state)
    assert "BEGIN CERTIFICATE" in (state / "ca.pem").read_text()
    assert Device.objects.get(pk="cam-enroll").hardware_class == "test-hw"


def test_pending_device_polls_until_an_operator_approves_it(live_server, tmp_path):
    state = tmp_path / "cam-pending"
    token = make_token(auto_accept=False)
    result = {}

    def run():
        result["enrollment"] = enroll(
            server=live_server.url,
            token=token,
            state_dir=state,
            device_id="cam-pending",
            poll_interval_s=0.2,
            wait_s=30,
        )

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 20
    while not Device.objects.filter(pk="cam-pending").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert not (state / "device.crt").exists()  # no certificate before approval
    device_services.device_approve(actor=Actor.system("tests"), device=Device.objects.get(pk="cam-pending"))
    thread.join(30)
    assert result["enrollment"]["status"] == "active"
    assert _cert_matches_key(state)


def test_pending_device_gives_up_after_wait_and_resumes_later(live_server, tmp_path):
    state = tmp_path / "cam-later"
    token = make_token(auto_accept=False)
    with pytest.raises(EnrollError) as exc:
        enroll(
            server=live_server.url, token=token, state_dir=state, device_id="cam-later", poll_interval_s=0.1, wait_s=0.3
        )
    assert exc.value.code == "pending"
    device_services.device_approve(actor=Actor.system("tests"), device=Device.objects.get(pk="cam-later"))
    # Running enroll again resumes with the same key and token (the token is not used a second time).
    assert cli_main(["enroll", "--server", live_server.url, "--token", "spent", "--dir", str(state)]) == 0
    assert _cert_matches_key(state)


def test_refused_enrollment_reports_the_platforms_error_code(live_server, tmp_path):
    with pytest.raises(EnrollError) as exc:
        enroll(server=live_server.url, token="not-a-token", state_dir=tmp_path / "x", device_id="cam-refused")
    assert exc.value.status in (400, 401, 403)
    assert not Device.objects.filter(pk="cam-refused").exists()


def test_certificate_is_renewed_for_the_same_key(live_server, tmp_path):
    state = tmp_path / "cam-renew"
    enroll_device(live_server.url, state, "cam-renew")
    before = certificate(state)
    after = renew_certificate(state)
    assert after.serial_number != before.serial_number
    assert _cert_matches_key(state)
    assert after.not_valid_after_utc >= before.not_valid_after_utc


def test_renewal_is_due_in_the_last_third_of_the_lifetime(live_server, tmp_path):
    state = tmp_path / "cam-due"
    enroll_device(live_server.url, state, "cam-due")
    cert = certificate(state)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert not needs_renewal(cert, cert.not_valid_before_utc + lifetime / 2)
    assert needs_renewal(cert, cert.not_valid_after_utc - lifetime / 4)
    assert needs_renewal(cert, cert.not_valid_after_utc + dt.timedelta(days=1))


def test_status_command_shows_identity_model_and_queue(live_server, tmp_path, capsys):
    state = tmp_path / "cam-status"
    enroll_device(live_server.url, state, "cam-status")
    report = status_report(state)
    assert report["device_id"] == "cam-status" and report["enrollment"] == "active"
    assert report["agent_running"] is False
    assert cli_main(["status", "--dir", str(state)]) == 0
    assert "cam-status" in capsys.readouterr().out
