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
# The other apps' endpoints, exercised without their objects (ids that do not exist, empty bodies): the
# role check runs before the object lookup and the input validation, so a 404 or 400 still proves the
# caller was let through, and a 401/403 that it was not. Their own suites test what the calls do.
MISSING = 999999
OTHER_READS = [
    ("get", "/api/v1/ota/artifacts/", None),
    ("get", f"/api/v1/ota/artifacts/{MISSING}/", None),
    ("get", "/api/v1/ota/rollouts/", None),
    ("get", f"/api/v1/ota/rollouts/{MISSING}/", None),
    ("get", f"/api/v1/ota/rollouts/{MISSING}/devices/", None),
    ("get", "/api/v1/ota/trust/", None),
    ("get", "/api/v1/telemetry/counters/", None),
    ("get", "/api/v1/telemetry/dead-letters/", None),
    ("get", "/api/v1/telemetry/devices/cam-0001/heartbeats/", None),
    ("get", "/api/v1/devices/cam-0001/presence/", None),
    ("get", "/api/v1/telemetry/devices/cam-0001/records/", None),
    ("get", "/api/v1/telemetry/model-versions/", None),
]
OTHER_WRITES = [
    ("post", "/api/v1/ota/artifacts/", {}),
    ("post", "/api/v1/ota/rollouts/", {}),
    ("post", "/api/v1/ota/rollouts/dry-run/", {}),
    *[
        ("post", f"/api/v1/ota/rollouts/{MISSING}/{verb}/", {})
        for verb in ("start", "pause", "resume", "abort", "advance", "rollback")
    ],
]
OTHER_ADMIN = [
    ("post", f"/api/v1/ota/artifacts/{MISSING}/revoke/", {}),
    ("get", "/api/v1/ota/keys/", None),
    ("post", "/api/v1/ota/keys/rotate/", {}),
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
# Every endpoint in the schema must be listed above.
COVERED_PREFIXES = ("/api/v1/",)
OPERATOR_ENDPOINTS = READS + WRITES + ADMIN + OTHER_READS + OTHER_WRITES + OTHER_ADMIN


def ids(endpoints):
    return [f"{m.upper()} {p}" for m, p, _ in endpoints]


def call(client, method, path, body, world):
    return getattr(client, method)(path.format(**world), body, format="json")
