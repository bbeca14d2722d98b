import pytest

from devices import services as device_services
from fleet.models import Role
from fleet.services import Actor
from tests.factories import make_device, make_operator, make_token


@pytest.fixture
def world():
    """A group, an enrolled device in it, an enrollment token and a second operator account."""
    group = device_services.group_create(actor=Actor.system("tests"), name="plant-a")
    result, _ = make_device("cam-0001", token=make_token(group=group))
    token = device_services.enrollment_token_create(actor=Actor.system("tests"), name="spare").token
    make_operator(role=Role.OPERATOR, username="someone")
    return {"token_id": token.pk, "device_token": result.device_token}
