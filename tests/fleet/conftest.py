import pytest

from devices import services as device_services
from fleet.models import Role
from fleet.services import Actor
from policies import services as policy_services
from tests.factories import make_device, make_operator, make_token


@pytest.fixture
def world():
    """A group, an enrolled device in it, an enrollment token, a second operator account, a fleet policy."""
    group = device_services.group_create(actor=Actor.system("tests"), name="plant-a")
    result, _ = make_device("cam-0001", token=make_token(group=group))
    token = device_services.enrollment_token_create(actor=Actor.system("tests"), name="spare").token
    make_operator(role=Role.OPERATOR, username="someone")
    policy = policy_services.policy_create(actor=Actor.system("tests"), scope="fleet", document={})
    return {"token_id": token.pk, "device_token": result.device_token, "policy_id": policy.pk}
