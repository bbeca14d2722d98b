import pytest
from django.test import Client

from fleet.models import Role
from tests.factories import make_operator


def _client_for(role: str) -> Client:
    user, _token = make_operator(role=role)
    client = Client()
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture
def operator_client(db) -> Client:
    return _client_for(Role.OPERATOR)


@pytest.fixture
def viewer_client(db) -> Client:
    return _client_for(Role.VIEWER)


@pytest.fixture(autouse=True)
def keep_the_brokers_crl(settings, tmp_path):
    """Console tests revoke devices of a CA they made themselves; with tasks run eagerly, the revocation's
    CRL refresh would overwrite the session broker's CRL with one from that CA, and every device of later
    broker tests would be refused. Point the task at a folder that does not exist: it then writes nothing."""
    settings.MQTT_TLS_DIR = tmp_path / "no-broker-here"
