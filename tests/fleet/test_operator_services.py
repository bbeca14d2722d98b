"""Operator account services: bootstrap, and the last-admin guard under concurrency."""

import threading

import pytest
from django.db import connection

from fleet.errors import ApiError
from fleet.models import AuditEvent, Role, User
from fleet.services import Actor, operator_create, operator_deactivate, operator_ensure, operator_set_role


@pytest.mark.django_db
def test_operator_ensure_creates_once_and_keeps_the_password():
    first = operator_ensure(username="admin")
    assert first.password and first.api_token
    again = operator_ensure(username="admin")
    assert again.password is None
    assert again.api_token == first.api_token
    assert User.objects.get(username="admin").check_password(first.password)
    assert AuditEvent.objects.filter(action="operator.create").count() == 1


@pytest.mark.django_db
def test_unknown_role_is_refused():
    with pytest.raises(ApiError) as refused:
        operator_create(actor=Actor.system("tests"), username="x", role="root")
    assert refused.value.error_code == "role_invalid"


@pytest.mark.django_db
def test_setting_the_same_role_writes_no_audit_event():
    creds = operator_create(actor=Actor.system("tests"), username="v", role=Role.VIEWER)
    operator_set_role(actor=Actor.system("tests"), user=creds.user, role=Role.VIEWER)
    assert not AuditEvent.objects.filter(action="operator.set_role").exists()


@pytest.mark.django_db(transaction=True)
def test_two_admins_deactivating_each_other_at_once_leave_one_admin():
    system = Actor.system("tests")
    a = operator_create(actor=system, username="admin-a", role=Role.ADMIN).user
    b = operator_create(actor=system, username="admin-b", role=Role.ADMIN).user
    barrier = threading.Barrier(2)
    outcomes = []

    def deactivate(actor_user, target):
        try:
            barrier.wait()
            operator_deactivate(actor=Actor.of_user(actor_user), user=target)
            outcomes.append("done")
        except ApiError as exc:
            outcomes.append(exc.error_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=deactivate, args=(a, b)), threading.Thread(target=deactivate, args=(b, a))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["done", "last_admin"]
    assert User.objects.filter(role=Role.ADMIN, is_active=True).count() == 1
