"""Every operator endpoint with a request that exercises it, for the role matrix and the audit checks.

To cover a new endpoint, add it to READS, WRITES or ADMIN; tests/fleet/test_role_matrix.py fails until
every endpoint under COVERED_PREFIXES is listed here. Paths use the objects of the ``world`` fixture
(tests/fleet/conftest.py).
"""

# (method, path, body). Paths use the objects made by the `world` fixture.
READS = [
    ("get", "/api/v1/devices/", None),
    ("get", "/api/v1/devices/cam-0001/", None),
    ("get", "/api/v1/groups/", None),
    ("get", "/api/v1/groups/plant-a/", None),
    ("get", "/api/v1/enrollment-tokens/", None),
    ("get", "/api/v1/enrollment-tokens/{token_id}/", None),
    ("get", "/api/v1/audit-events/", None),
    ("get", "/api/v1/me/", None),
    ("get", "/api/v1/policies/", None),
    ("get", "/api/v1/policies/{policy_id}/", None),
    ("get", "/api/v1/devices/cam-0001/effective-policy/", None),
    ("get", "/api/v1/devices/cam-0001/llm-usage/", None),
    ("get", "/api/v1/llm-usage/", None),
]
WRITES = [
    ("post", "/api/v1/groups/", {"name": "new-group"}),
    ("put", "/api/v1/groups/plant-a/", {"name": "plant-a", "description": "north hall"}),
    ("patch", "/api/v1/groups/plant-a/", {"description": "north hall"}),
    ("delete", "/api/v1/groups/plant-a/", None),
    ("patch", "/api/v1/devices/cam-0001/", {"name": "door camera"}),
    ("post", "/api/v1/devices/bulk/", {"device_ids": ["cam-0001"], "add_tags": ["x"]}),
    ("post", "/api/v1/devices/cam-0001/approve/", None),
    ("post", "/api/v1/devices/cam-0001/revoke/", {"reason": "test"}),
    ("post", "/api/v1/enrollment-tokens/", {"name": "batch"}),
    ("post", "/api/v1/enrollment-tokens/{token_id}/revoke/", None),
    ("post", "/api/v1/policies/", {"scope": "group", "group": "plant-a", "document": {}}),
    ("put", "/api/v1/policies/{policy_id}/", {"document": {"tasks": {}}}),
    ("patch", "/api/v1/policies/{policy_id}/", {"document": {"tasks": {}}}),
    ("delete", "/api/v1/policies/{policy_id}/", None),
]
ADMIN = [
    ("get", "/api/v1/operators/", None),
    ("get", "/api/v1/operators/someone/", None),
    ("post", "/api/v1/operators/", {"username": "newbie", "role": "viewer"}),
    ("patch", "/api/v1/operators/someone/", {"role": "viewer"}),
    ("post", "/api/v1/operators/someone/deactivate/", None),
]
# Endpoints that are not operator endpoints, with the reason.
PUBLIC = {
    ("post", "/api/v1/enroll/"),  # the enrollment token in the body is the credential
    ("get", "/api/v1/ca/certificate.pem"),  # public by nature
    ("get", "/api/v1/ca/crl.pem"),  # the broker and anyone may fetch it
}
DEVICE_ONLY = [
    ("get", "/api/v1/device/", None),
    ("post", "/api/v1/device/certificate/", {"csr": "x"}),
    ("get", "/api/v1/device/policy/", None),
]
COVERED_PREFIXES = (
    "/api/v1/devices",
    "/api/v1/groups",
    "/api/v1/enrollment-tokens",
    "/api/v1/operators",
    "/api/v1/audit-events",
    "/api/v1/me",
    "/api/v1/enroll",
    "/api/v1/device",
    "/api/v1/ca",
    "/api/v1/policies",
    "/api/v1/llm-usage",
)
OPERATOR_ENDPOINTS = READS + WRITES + ADMIN


def ids(endpoints):
    return [f"{m.upper()} {p}" for m, p, _ in endpoints]


def call(client, method, path, body, world):
    return getattr(client, method)(path.format(**world), body, format="json")
