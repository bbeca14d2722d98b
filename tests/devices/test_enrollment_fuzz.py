"""Property: junk in any enrollment field gets a 4xx with the error body, never a 5xx, never a device.

Every generated request has junk in (or lacks) at least one of the fields enrollment cannot do without
(token, csr), so none of them may succeed; the other fields are junk or valid at random so that the
checks behind the first one are reached too.
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.models import Device, DeviceCertificate, EnrollmentToken
from fleet_agent.identity import build_csr_pem, generate_private_key
from tests.factories import make_token

pytestmark = pytest.mark.django_db

FIELDS = ["token", "csr", "device_id", "name", "hardware_class", "runtime", "agent_version"]
REQUIRED = ["token", "csr"]
MISSING = object()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),
    # Any code point, lone surrogates and NUL included.
    st.text(alphabet=st.characters(codec=None, min_codepoint=0), max_size=40),
    st.builds(lambda ch, n: ch * n, st.sampled_from(["a", "é", "\x00", "-", "\ud800", "🙂"]), st.integers(60, 70_000)),
    st.sampled_from(["", " ", "-----BEGIN CERTIFICATE REQUEST-----", "fet_", "null", "cam-0001"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
junk_or_missing = st.one_of(st.just(MISSING), junk)


@st.composite
def enrollment_bodies(draw):
    broken_required = draw(st.lists(st.sampled_from(REQUIRED), min_size=1, unique=True))
    other = draw(st.lists(st.sampled_from([f for f in FIELDS if f not in broken_required]), unique=True))
    return {field: draw(junk_or_missing) for field in broken_required + other}


@pytest.fixture(scope="module")
def valid_csr() -> str:
    return build_csr_pem(generate_private_key(), "cam-0001")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk_fields=enrollment_bodies())
def test_junk_in_any_enrollment_field_is_a_4xx_and_creates_nothing(anon_api, valid_csr, junk_fields):
    token = make_token(max_uses=5)
    body = {
        "token": token,
        "csr": valid_csr,
        "device_id": "cam-0001",
        "name": "camera",
        "hardware_class": "rpi4",
        "runtime": "onnx",
        "agent_version": "1.0.0",
    }
    for field, value in junk_fields.items():
        if value is MISSING:
            body.pop(field)
        else:
            body[field] = value
    response = anon_api.post("/api/v1/enroll/", json.dumps(body), content_type="application/json")
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:500])
    assert isinstance(response.json()["error"]["code"], str)
    assert Device.objects.count() == 0
    assert DeviceCertificate.objects.count() == 0
    assert not EnrollmentToken.objects.filter(uses__gt=0).exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(junk.map(json.dumps), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_a_body_that_is_not_an_object_is_a_4xx(anon_api, raw):
    response = anon_api.post("/api/v1/enroll/", raw, content_type="application/json")
    assert 400 <= response.status_code < 500
    assert "error" in response.json()
    assert Device.objects.count() == 0
