"""Enrollment is the platform's hottest write (docs/performance.md): pin its SQL statements per request so
that an added query shows up here rather than as a slower benchmark."""

import pytest

from devices.models import Device
from fleet_agent.identity import build_csr_pem, generate_private_key
from tests.factories import make_token

pytestmark = pytest.mark.django_db

# Transaction (savepoint under the test's transaction, BEGIN/COMMIT in production) + claim the token use
# + insert device + insert certificate + insert audit event, then one read for both update roots and
# one for the policy public key.
QUERIES_PER_ENROLLMENT = 8
# A token with tags adds the read of its tag ids and one bulk insert of the device's tags.
QUERIES_PER_ENROLLMENT_WITH_TAGS = QUERIES_PER_ENROLLMENT + 2


def enroll(client, token: str, device_id: str):
    body = {"token": token, "csr": build_csr_pem(generate_private_key(), device_id), "hardware_class": "rpi4"}
    return client.post("/api/v1/enroll/", body, format="json")


def test_enrollment_runs_a_fixed_number_of_queries(anon_api, django_assert_max_num_queries):
    token = make_token(max_uses=2)
    # The first enrollment creates the device CA, both update repositories and the policy key.
    assert enroll(anon_api, token, "cam-q-0001").status_code == 201
    with django_assert_max_num_queries(QUERIES_PER_ENROLLMENT):
        response = enroll(anon_api, token, "cam-q-0002")
    assert response.status_code == 201, response.json()
    assert response.json()["certificate"] and response.json()["update_trust"]["image_root"]


def test_enrollment_with_a_tagged_token_adds_only_the_tag_copy(anon_api, django_assert_max_num_queries):
    token = make_token(max_uses=2, tags=["camera", "line-3"])
    assert enroll(anon_api, token, "cam-q-0003").status_code == 201
    with django_assert_max_num_queries(QUERIES_PER_ENROLLMENT_WITH_TAGS):
        response = enroll(anon_api, token, "cam-q-0004")
    assert response.status_code == 201, response.json()
    assert sorted(Device.objects.get(pk="cam-q-0004").tags.values_list("name", flat=True)) == ["camera", "line-3"]
