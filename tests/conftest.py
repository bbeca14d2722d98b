import pytest
from rest_framework.test import APIClient

from fleet.models import Role
from tests.factories import make_operator


@pytest.fixture(scope="session")
def django_db_modify_db_settings(postgres_server):
    """Tests run on the real PostgreSQL started for this session (tests/services.py)."""


@pytest.fixture(autouse=True, scope="session")
def fast_password_hashing():
    """Production hashes passwords with PBKDF2 at ~1M iterations (hundreds of ms each): right for a login,
    pure waste for the thousands of throwaway accounts the tests create."""
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def fresh_device_ca():
    """Each test's database starts without a CA (rolled back): forget the one a previous test loaded."""
    from devices import authority

    authority.clear_cache()
    yield
    authority.clear_cache()


@pytest.fixture
def test_database_url(django_db_setup, postgres_server) -> str:
    """The URL of the test database, for processes the test starts (workers, servers)."""
    from django.conf import settings

    return postgres_server.url(settings.DATABASES["default"]["NAME"])


def _client_for(role: str) -> APIClient:
    user, token = make_operator(role=role)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    client.user = user
    return client


@pytest.fixture
def admin_api(db) -> APIClient:
    return _client_for(Role.ADMIN)


@pytest.fixture
def operator_api(db) -> APIClient:
    return _client_for(Role.OPERATOR)


@pytest.fixture
def viewer_api(db) -> APIClient:
    return _client_for(Role.VIEWER)


@pytest.fixture
def anon_api() -> APIClient:
    return APIClient()


def device_client_for(device_token: str) -> APIClient:
    """An API client that authenticates as a device (the credential it received at enrollment)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {device_token}")
    return client
