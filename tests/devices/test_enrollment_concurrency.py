"""Enrollment under concurrency: the last uses of a token and one device id are each taken once."""

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from devices.models import Device, DeviceCertificate, EnrollmentToken
from fleet_agent.identity import build_csr_pem, generate_private_key
from tests.factories import make_token

THREADS = 8


def enroll_all_at_once(bodies: list[dict]) -> list[int]:
    """POST every body to /api/v1/enroll/ from its own thread (own connection), released together."""
    barrier = threading.Barrier(len(bodies))
    statuses: list[int] = []

    def enroll(body):
        try:
            client = APIClient()
            barrier.wait()
            statuses.append(client.post("/api/v1/enroll/", body, format="json").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=enroll, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return sorted(statuses)


@pytest.mark.django_db(transaction=True)
def test_more_devices_than_uses_enroll_exactly_max_uses():
    token = make_token(max_uses=3)
    bodies = [{"token": token, "csr": build_csr_pem(generate_private_key(), f"cam-{i:03d}")} for i in range(THREADS)]
    statuses = enroll_all_at_once(bodies)
    assert statuses == [201] * 3 + [403] * (THREADS - 3)
    assert Device.objects.count() == 3
    assert DeviceCertificate.objects.count() == 3
    assert EnrollmentToken.objects.get().uses == 3


@pytest.mark.django_db(transaction=True)
def test_same_id_enrolled_concurrently_exists_once_and_uses_one_token_use():
    token = make_token(max_uses=THREADS)
    bodies = [{"token": token, "csr": build_csr_pem(generate_private_key(), "cam-001")} for _ in range(THREADS)]
    statuses = enroll_all_at_once(bodies)
    assert statuses == [201] + [409] * (THREADS - 1)
    assert Device.objects.count() == 1
    assert EnrollmentToken.objects.get().uses == 1
