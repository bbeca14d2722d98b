from rest_framework.permissions import BasePermission

from devices.authentication import device_of


class IsDevice(BasePermission):
    """Device endpoints: only a device credential, which then only ever acts on its own record."""

    message = "This endpoint needs a device credential (Authorization: Device <token>)."

    def has_permission(self, request, view) -> bool:
        return device_of(request) is not None
