import pytest
from cryptography import x509

from devices import authority
from devices.models import CertificateAuthority
from fleet.broker import BrokerCaMismatch, broker_setup, write_crl

pytestmark = pytest.mark.django_db


def setup_folder(path):
    return broker_setup(
        state_dir=path, server_names=["localhost"], device_port=18883, platform_port=18884, bind_address="127.0.0.1"
    )


def test_broker_setup_writes_every_credential_and_a_config_that_uses_them(tmp_path):
    config = setup_folder(tmp_path).read_text()
    for name in ("device-ca.pem", "device-crl.pem", "server.crt", "server.key", "platform-ca.pem"):
        assert str(tmp_path / name) in config
    for role in ("platform-ingest", "platform-publisher"):
        assert (tmp_path / f"{role}.crt").exists()
        assert (tmp_path / f"{role}.key").stat().st_mode & 0o077 == 0
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0
    assert "use_username_as_clientid true" in config
    crl = x509.load_pem_x509_crl((tmp_path / "device-crl.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "device-ca.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key())


def test_rerunning_broker_setup_keeps_valid_platform_certificates(tmp_path):
    setup_folder(tmp_path)
    first = (tmp_path / "platform-ingest.crt").read_bytes()
    setup_folder(tmp_path)
    assert (tmp_path / "platform-ingest.crt").read_bytes() == first


def test_crl_of_another_ca_is_never_written_to_a_brokers_folder(tmp_path):
    setup_folder(tmp_path)
    before = (tmp_path / "device-crl.pem").read_bytes()
    CertificateAuthority.objects.all().delete()
    authority.clear_cache()
    authority.active_ca()  # a new CA, which the broker in tmp_path does not trust
    with pytest.raises(BrokerCaMismatch):
        write_crl(tmp_path)
    assert (tmp_path / "device-crl.pem").read_bytes() == before
