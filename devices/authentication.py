from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from devices.models import Device
from devices.services import device_authenticate_token


@dataclass(frozen=True)
class DevicePrincipal:
    """``request.user`` for a device credential: authenticated, but never an operator account, so every
    operator permission refuses it."""

    device: Device
    is_authenticated: bool = True
    is_active: bool = True

    @property
    def username(self) -> str:
        return f"device:{self.device.id}"


class DeviceTokenAuthentication(BaseAuthentication):
    """``Authorization: Device <token>``, the token issued at enrollment."""

    keyword = "Device"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Malformed device authorization header.", code="device_token_invalid")
        try:
            secret = parts[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("Malformed device token.", code="device_token_invalid") from exc
        device = device_authenticate_token(secret)
        if device is None:
            raise AuthenticationFailed("Unknown device token or revoked device.", code="device_token_invalid")
        return DevicePrincipal(device=device), device

    def authenticate_header(self, request) -> str:
        return self.keyword


def device_of(request) -> Device | None:
    user = getattr(request, "user", None)
    return user.device if isinstance(user, DevicePrincipal) else None


class DeviceTokenScheme(OpenApiAuthenticationExtension):
    """Documents ``Authorization: Device <token>`` in the OpenAPI schema."""

    target_class = "devices.authentication.DeviceTokenAuthentication"
    name = "deviceToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Device <token>`: the device token returned at enrollment.",
        }
