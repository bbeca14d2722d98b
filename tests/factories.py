"""Test data builders. Each returns real rows made through the services, not hand-built fixtures."""

import itertools

from rest_framework.authtoken.models import Token

from devices import services as device_services
from fleet.models import Role, User
from fleet.services import Actor
from fleet_agent.identity import build_csr_pem, generate_private_key

_counter = itertools.count(1)


def make_operator(*, role: str = Role.OPERATOR, username: str | None = None) -> tuple[User, str]:
    username = username or f"{role}-{next(_counter)}"
    user = User.objects.create_user(username=username, password="correct horse battery", role=role)
    token = Token.objects.create(user=user)
    return user, token.key


def make_token(*, max_uses: int = 10, auto_accept: bool = True, **kwargs) -> str:
    return device_services.enrollment_token_create(
        actor=Actor.system("tests"), name="test token", max_uses=max_uses, auto_accept=auto_accept, **kwargs
    ).secret


def make_device(device_id: str | None = None, *, token: str | None = None, **kwargs):
    """Enroll a device for real (key, CSR, certificate); returns (EnrollmentResult, private key)."""
    device_id = device_id or f"dev-test-{next(_counter)}"
    key = generate_private_key()
    result = device_services.device_enroll(token=token or make_token(), csr_pem=build_csr_pem(key, device_id), **kwargs)
    return result, key


def spend_cloud_budget(device, *, tokens: int, cost_micros: int) -> None:
    """What the LLM gateway does before forwarding a request: reserve in every window of the device's
    effective policy (a public-data chat request to the model "small")."""
    from django.utils import timezone

    from policies import selectors
    from policies import services as policy_services

    policy_services.budget_reserve(
        device=device,
        document=selectors.effective_policy(device).document,
        task="chat",
        data_class="public",
        model="small",
        tokens=tokens,
        cost_micros=cost_micros,
        at=timezone.now(),
    )
