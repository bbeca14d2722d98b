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
